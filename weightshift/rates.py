"""Rate alarms: a share of requests that went wrong, judged only on enough evidence.

A rate of 1 error in 2 requests is 50 %, and would roll back a healthy candidate at 1 % of a
quiet service on a single stray failure. So a rate counts only when the window holds at least
``min_requests`` requests and ``min_events`` events (errors, blocked answers); below that the
window says nothing (0, never a breach). The same decision is a pure function, for tests and
gates, and CloudWatch metric math, for the alarm; a test evaluates one against the other.
"""

from __future__ import annotations


def rate(events: float, requests: float, min_requests: int, min_events: int) -> float:
    """Percent of ``requests`` that were ``events``, or 0 on too little evidence."""
    if requests < min_requests or events < min_events or requests <= 0:
        return 0.0
    return 100.0 * events / requests


def expression(events: str, requests: str, min_requests: int, min_events: int) -> str:
    """:func:`rate` as metric math over the query ids ``events`` and ``requests``."""
    e, r = f"FILL({events}, 0)", f"FILL({requests}, 0)"
    return f"IF(({r} >= {min_requests}) AND ({e} >= {min_events}), 100 * {e} / {r}, 0)"
