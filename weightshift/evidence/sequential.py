"""Anytime-valid comparisons of the candidate with the stable colour over the same window.

**Rates** (errors, refusals, safety blocks, first tokens slower than a threshold). Each
request goes to the candidate with the stage's share ``rho0`` of the traffic, independently
(the ALB's weighted forward). If the candidate's per-request rate of an event equals the
stable colour's, each event lands on the candidate with probability ``rho0``, whatever the
rate; if the candidate's rate is ``r`` times the stable's, with probability
``rho = r rho0 / (1 - rho0 + r rho0)``. So the colours of the events, in the order they
happen, are Bernoulli(``rho``) draws, and the rate ratio ``r`` is a function of ``rho``:
the counting-process reduction of Lindon, Sanden and Shirikian, "Rapid Regression Detection
in Software Deployments through Sequential Testing" (KDD 2022), for two arms.

The e-value for a null ``rho*`` is the Beta-mixture likelihood ratio (their Dirichlet
mixture with two categories, prior ``Beta(k rho0, k (1 - rho0))``, concentration ``k``)::

    E(rho*) = B(a + x, b + n - x) / B(a, b) / (rho*^x (1 - rho*)^(n - x))

a nonnegative martingale of mean 1 under ``rho*``; by Ville's inequality
``P(sup_n E >= 1/alpha) <= alpha``. The confidence sequence is every ``rho*`` whose e-value
stays below ``1/alpha``: it covers the true ratio at every look at once, with probability at
least ``1 - alpha``, however often it is looked at and whenever the looking stops.

**Means** of bounded scores (feedback quality in [0, 1]): each colour's mean by the
two-sided normal-mixture confidence sequence for sub-Gaussian sums (Howard, Ramdas,
McAuliffe and Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences",
Ann. Statist. 2021, eq. (14); a [0, 1] variable is 1/2-sub-Gaussian), at ``alpha / 2`` each,
and their difference by the union bound.

**Decisions** against a margin: a criterion *fails* when its whole interval is worse than
the margin (then the probability of failing a candidate that is within the margin is at
most ``alpha``), *passes* when its whole interval is better, and is *inconclusive*
otherwise. Inconclusive says how much more evidence, at the present estimate, would decide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_CONCENTRATION = 100.0
"""The mixture's prior concentration ``k`` (savvi's default for Lindon et al.'s test)."""

DEFAULT_TIGHTEST_AT = 100
"""Where the normal-mixture boundary of a mean is tightest, in samples."""

_MAX_EVENTS = 10**9


class Decision(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Verdict:
    """One criterion's decision, with what it stands on."""

    decision: Decision
    estimate: float | None
    """The candidate against the stable colour: a rate ratio, or a difference of means."""
    interval: tuple[float, float]
    """The confidence sequence's bounds on the same scale, valid at every look."""
    needed: int | None = None
    """Inconclusive: how many more samples (candidate requests for a rate, candidate scores
    for a mean) would decide at the present estimate; None when no amount would (the
    estimate sits on the margin) or nothing can be projected yet."""


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _log_likelihood(x: float, n: float, rho: float) -> float:
    if rho <= 0.0:
        return 0.0 if x == 0 else -math.inf
    if rho >= 1.0:
        return 0.0 if x == n else -math.inf
    return x * math.log(rho) + (n - x) * math.log1p(-rho)


def _log_mixture(x: float, n: float, rho0: float, concentration: float) -> float:
    a, b = concentration * rho0, concentration * (1.0 - rho0)
    return _log_beta(a + x, b + n - x) - _log_beta(a, b)


def log_e_value(
    x: float,
    n: float,
    rho0: float,
    *,
    null: float | None = None,
    concentration: float = DEFAULT_CONCENTRATION,
) -> float:
    """log E: the evidence against the null ``null`` (default ``rho0``, equal rates) after
    ``x`` of ``n`` events landed on the candidate."""
    _check_share(rho0)
    return _log_mixture(x, n, rho0, concentration) - _log_likelihood(
        x, n, rho0 if null is None else null
    )


def share_interval(
    x: float, n: float, rho0: float, alpha: float, concentration: float = DEFAULT_CONCENTRATION
) -> tuple[float, float]:
    """Every share ``rho*`` the evidence does not reject at level ``alpha`` (an interval:
    the likelihood is log-concave)."""
    _check_share(rho0)
    threshold = math.log(alpha) + _log_mixture(x, n, rho0, concentration)

    def inside(rho: float) -> bool:
        return _log_likelihood(x, n, rho) > threshold

    peak = x / n if n else rho0
    lower = 0.0 if inside(0.0) else _boundary(inside, 0.0, peak)
    upper = 1.0 if inside(1.0) else _boundary(inside, 1.0, peak)
    return lower, upper


def _boundary(inside: Callable[[float], bool], outside: float, within: float) -> float:
    """Bisect between a point outside the set and one inside it (60 halvings: 1e-18)."""
    for _ in range(60):
        middle = (outside + within) / 2
        if inside(middle):
            within = middle
        else:
            outside = middle
    return within


def ratio_of(rho: float, rho0: float) -> float:
    """The candidate's per-request rate over the stable colour's, for event share ``rho``."""
    if rho >= 1.0:
        return math.inf
    return (rho / (1.0 - rho)) * ((1.0 - rho0) / rho0)


def share_of(ratio: float, rho0: float) -> float:
    """The event share at which the rate ratio is ``ratio``."""
    return ratio * rho0 / (1.0 - rho0 + ratio * rho0)


def compare_rates(
    candidate_events: int,
    stable_events: int,
    *,
    share: float,
    margin: float,
    alpha: float,
    candidate_requests: int | None = None,
    concentration: float = DEFAULT_CONCENTRATION,
) -> Verdict:
    """The candidate's rate of an event against the stable colour's: pass when it is below
    ``1 + margin`` times the stable's, fail when above, at level ``alpha`` at every look.

    ``share`` is the candidate's share of the requests (the stage's weight); with
    ``candidate_requests``, an inconclusive verdict says how many more candidate requests
    would decide at the present rates."""
    _check_level(alpha)
    if margin < 0:
        raise ValueError(f"margin must be at least 0, got {margin}")
    x, n = candidate_events, candidate_events + stable_events
    lower, upper = share_interval(x, n, share, alpha, concentration)
    bound = share_of(1.0 + margin, share)
    estimate = ratio_of(x / n, share) if n else None
    interval = (ratio_of(lower, share), ratio_of(upper, share))
    if lower > bound:
        return Verdict(Decision.FAIL, estimate, interval)
    if upper < bound:
        return Verdict(Decision.PASS, estimate, interval)
    more = _more_events(x, n, share, bound, alpha=alpha, concentration=concentration)
    needed = None
    if more is not None and n and candidate_requests is not None:
        needed = math.ceil(more * candidate_requests / n)
    return Verdict(Decision.INCONCLUSIVE, estimate, interval, needed)


def _more_events(
    x: int, n: int, rho0: float, bound: float, *, alpha: float, concentration: float
) -> int | None:
    """How many more events, landing as they have so far, until the interval leaves
    ``bound`` behind; None when no number would (no events yet, or the estimate is the
    bound)."""
    if n == 0 or math.isclose(x / n, bound, rel_tol=1e-9):
        return None
    rate = x / n

    def decided(total: int) -> bool:
        lower, upper = share_interval(rate * total, total, rho0, alpha, concentration)
        return lower > bound or upper < bound

    found = _first(n, decided)
    return None if found is None else found - n


def _first(start: int, decided: Callable[[int], bool]) -> int | None:
    """The smallest total above ``start`` (undecided) at which ``decided`` holds: doubling,
    then bisection; None past a billion."""
    low, high = start, max(2 * start, start + 1)
    while not decided(high):
        if high > _MAX_EVENTS:
            return None
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if decided(middle):
            high = middle
        else:
            low = middle
    return high


def mean_radius(
    count: int, alpha: float, *, sigma: float = 0.5, tightest_at: int = DEFAULT_TIGHTEST_AT
) -> float:
    """Half the width of a two-sided confidence sequence for the mean of ``count``
    sigma-sub-Gaussian samples at level ``alpha`` (Howard et al. 2021, eq. (14), with
    ``alpha / 2`` on each side): valid at every ``count`` at once."""
    _check_level(alpha)
    if count <= 0:
        return math.inf
    variance = count * sigma**2
    rho = tightest_at * sigma**2
    boundary = math.sqrt((variance + rho) * math.log((variance + rho) / (rho * (alpha / 2) ** 2)))
    return boundary / count


def compare_means(
    candidate_sum: float,
    candidate_count: int,
    stable_sum: float,
    stable_count: int,
    *,
    margin: float,
    alpha: float,
    tightest_at: int = DEFAULT_TIGHTEST_AT,
) -> Verdict:
    """The candidate's mean score in [0, 1] against the stable colour's: fail when it is
    lower by more than ``margin``, pass when it is not, at level ``alpha`` at every look."""
    _check_level(alpha)
    if not candidate_count or not stable_count:
        return Verdict(Decision.INCONCLUSIVE, None, (-1.0, 1.0))
    difference = candidate_sum / candidate_count - stable_sum / stable_count
    spread = mean_radius(candidate_count, alpha / 2, tightest_at=tightest_at) + mean_radius(
        stable_count, alpha / 2, tightest_at=tightest_at
    )
    interval = (max(-1.0, difference - spread), min(1.0, difference + spread))
    if interval[1] < -margin:
        return Verdict(Decision.FAIL, difference, interval)
    if interval[0] > -margin:
        return Verdict(Decision.PASS, difference, interval)
    gap = abs(difference + margin)
    share = candidate_count / (candidate_count + stable_count)

    def decided(candidates: int) -> bool:
        stables = max(1, round(candidates * (1 - share) / share))
        return (
            mean_radius(candidates, alpha / 2, tightest_at=tightest_at)
            + mean_radius(stables, alpha / 2, tightest_at=tightest_at)
            < gap
        )

    found = _first(candidate_count, decided) if gap > 0 else None
    needed = None if found is None else found - candidate_count
    return Verdict(Decision.INCONCLUSIVE, difference, interval, needed)


def _check_share(rho0: float) -> None:
    if not 0.0 < rho0 < 1.0:
        raise ValueError(f"the candidate's share must be between 0 and 1 (exclusive), got {rho0}")


def _check_level(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha}")
