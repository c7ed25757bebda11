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


def percent_expression(percent: str, count: str, min_requests: int, min_events: int) -> str:
    """:func:`rate` as metric math over a share already in percent (a percentile rank,
    ``PR(t:)``: the percentage of samples above ``t``) of ``count`` samples. The events are
    ``percent * count / 100``, whole numbers; half an event of slack absorbs rounding."""
    p, n = f"FILL({percent}, 0)", f"FILL({count}, 0)"
    return f"IF(({n} >= {min_requests}) AND ({p} * {n} / 100 >= {min_events - 0.5}), {p}, 0)"


def mean(total_mean: float, count: float, min_count: int, neutral: float) -> float:
    """A mean over at least ``min_count`` samples, else ``neutral`` (judged as fine)."""
    return total_mean if count >= min_count else neutral


def mean_expression(average: str, count: str, min_count: int, neutral: float) -> str:
    """:func:`mean` as metric math over the query ids ``average`` and ``count``."""
    return f"IF(FILL({count}, 0) >= {min_count}, FILL({average}, {neutral:g}), {neutral:g})"
