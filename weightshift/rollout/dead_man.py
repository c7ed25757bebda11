"""The dead man's switch: roll back a candidate that answers nothing, and only then.

The decision is a pure function of two counts over a window of ``window_minutes``:

- ``asked``: requests the load balancer sent the candidate (ALB ``RequestCount`` of its
  target group: counted only once a target was chosen, so it is 0 while the candidate has no
  weight and no traffic, whatever the stable colour serves);
- ``answered``: responses the candidate's targets gave (``HTTPCode_Target_2XX``..``5XX``;
  a 5xx is an answer, judged by the error-rate alarm).

Rollback when ``asked >= min_requests`` and ``answered == 0``: the candidate was sent at
least ``min_requests`` requests and not one came back (connections refused: 502; hung until
the idle timeout: 504). Otherwise continue; with fewer requests than ``min_requests`` the
window holds too little evidence to say (inconclusive, no rollback).

Why not "missing data is breaching" (the first design): at the update that first gives the
candidate weight, the window holds only minutes from before, with no candidate data, so the
alarm fired on promotion; and at 1 % of a quiet service minutes without a request are normal.
Why not "compare with what its weight should have brought it, from the stable colour's
requests": when the alarm is updated with the new weight, CloudWatch evaluates it over the
minutes before the listener moved, when the stable colour had traffic and the candidate none,
so it fires at the promotion too. Counting what the candidate was actually sent avoids both:
before promotion ``asked`` is 0.

What it does not see: requests the ALB rejects before choosing a target (a target group with
no registered targets answers 503 and counts nothing). The ``no-healthy-hosts`` alarm covers
that: ``HealthyHostCount`` is reported only while targets are registered, and its missing
data is treated as breaching.

The bound: at most ``min_requests`` requests fail unanswered in the window before the alarm
breaches, then the alarm's evaluation (every minute) and the rollback path follow
(``scripts/restore_time.py``). A candidate that is sent nothing harms no one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

ANSWER_CLASSES = ("2XX", "3XX", "4XX", "5XX")
"""The ALB's ``HTTPCode_Target_<class>_Count`` metrics: every response a target gave."""


class Verdict(enum.StrEnum):
    ROLLBACK = "rollback"
    CONTINUE = "continue"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    asked: int
    answered: int
    reason: str


def decide(asked: int, answered: int, min_requests: int) -> Decision:
    """The dead man's switch over one window's counts."""
    if min_requests < 1:
        raise ValueError("min_requests must be at least 1: with 0, silence would be evidence")
    if asked < 0 or answered < 0:
        raise ValueError("counts are never negative")
    if answered > 0:
        return Decision(
            Verdict.CONTINUE, asked, answered, f"the candidate answered {answered} request(s)"
        )
    if asked >= min_requests:
        return Decision(
            Verdict.ROLLBACK,
            asked,
            answered,
            f"{asked} request(s) reached the candidate and none was answered "
            f"(at least {min_requests} decide)",
        )
    return Decision(
        Verdict.INCONCLUSIVE,
        asked,
        answered,
        f"{asked} request(s) reached the candidate; fewer than {min_requests} cannot decide",
    )


def expression(min_requests: int, asked: str = "asked", answers: tuple[str, ...] = ()) -> str:
    """:func:`decide` as CloudWatch metric math: 1 where it says rollback, else 0.

    ``asked`` and ``answers`` are the ids of the metric queries (RequestCount and the target
    response counts, summed over the window). ``FILL(m, 0)``: a metric without datapoints
    (no traffic) counts as 0, never as missing data.
    """
    answered = " + ".join(f"FILL({query}, 0)" for query in answers or _answer_ids())
    # Parenthesised throughout: no reliance on the precedence of AND against comparisons.
    return f"IF((FILL({asked}, 0) >= {min_requests}) AND (({answered}) == 0), 1, 0)"


def _answer_ids() -> tuple[str, ...]:
    return tuple(f"answers{cls.lower()}" for cls in ANSWER_CLASSES)


ANSWER_QUERY_IDS = _answer_ids()
"""The metric query ids of the answer counts in the alarm (``answers2xx`` ...)."""
