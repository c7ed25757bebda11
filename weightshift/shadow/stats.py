"""Confidence intervals for the shadow report's figures: pure functions of counts and sums.

Every figure of the report is computed by one of these, from numbers an aggregate query
returns (so the same code serves DuckDB and Athena), except the text measures, which are
means over a local sample and use a seeded bootstrap:

- a rate (exact-match rate, mirror losses): the **Wilson score** interval;
- a paired difference of two rates on the same requests (refusal and safety-block deltas):
  **Newcombe's hybrid score interval for paired data** (method 10 of Newcombe, Statistics in
  Medicine 1998), from the 2x2 table of both answers;
- a quantile (latency p50/p99, time to first token): the **distribution-free order-statistic
  interval** (the ranks from the binomial distribution of how many values fall below the
  true quantile; exact for any continuous distribution, conservative with ties);
- a ratio of two quantiles (p99 candidate / stable): the quotient of the two order-statistic
  intervals, each at half the error rate (Bonferroni), so it covers at least the stated level;
- a ratio of means over paired values (token and length ratios): the **delta method** from
  the sums of the values, their squares and their products;
- a mean over a sample (edit distance, ROUGE-L, semantic similarity): the **percentile
  bootstrap**, seeded, so the same records give the same interval.

Standard library and numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


def z_of(confidence: float) -> float:
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class Interval:
    """An estimate and its interval; a bound is None where the data cannot bound it."""

    value: float | None
    low: float | None
    high: float | None


EMPTY = Interval(None, None, None)


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> Interval:
    """The share ``successes / trials`` and its Wilson score interval."""
    if trials < 0 or not 0 <= successes <= max(trials, 0):
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return EMPTY
    z = z_of(confidence)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(p, low, high)


@dataclass(frozen=True)
class PairedCounts:
    """Both colours' yes/no on the same requests: ``both``, ``stable_only``,
    ``candidate_only``, ``neither``."""

    both: int
    stable_only: int
    candidate_only: int
    neither: int

    @property
    def pairs(self) -> int:
        return self.both + self.stable_only + self.candidate_only + self.neither

    @property
    def stable(self) -> int:
        return self.both + self.stable_only

    @property
    def candidate(self) -> int:
        return self.both + self.candidate_only


def paired_difference(counts: PairedCounts, confidence: float = CONFIDENCE) -> Interval:
    """Candidate rate minus stable rate on the same requests, Newcombe's paired interval."""
    n = counts.pairs
    if n == 0:
        return EMPTY
    p_s, l_s, u_s = _bounds(wilson(counts.stable, n, confidence))
    p_c, l_c, u_c = _bounds(wilson(counts.candidate, n, confidence))
    delta = p_c - p_s
    a, b, c, d = counts.both, counts.stable_only, counts.candidate_only, counts.neither
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    # Newcombe's correlation estimate: a positive association is reduced by n/2 (to 0 at
    # least), a negative one kept, as his method 10 specifies.
    association = float(a * d - b * c)
    if association > n / 2:
        association -= n / 2
    elif association >= 0:
        association = 0.0
    phi = association / math.sqrt(margins) if margins > 0 else 0.0
    down_c, up_s = p_c - l_c, u_s - p_s
    up_c, down_s = u_c - p_c, p_s - l_s
    low = delta - math.sqrt(max(0.0, down_c**2 - 2 * phi * down_c * up_s + up_s**2))
    high = delta + math.sqrt(max(0.0, up_c**2 - 2 * phi * up_c * down_s + down_s**2))
    return Interval(delta, max(-1.0, low), min(1.0, high))


def _bounds(interval: Interval) -> tuple[float, float, float]:
    # A Wilson interval of at least one trial has all three numbers.
    if interval.value is None or interval.low is None or interval.high is None:
        raise ValueError("an interval without bounds")
    return interval.value, interval.low, interval.high


def _log_binomial_pmf(k: int, n: int, p: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def quantile_ranks(
    n: int, q: float, confidence: float = CONFIDENCE
) -> tuple[int | None, int, int | None]:
    """1-based ranks (low, point, high) of the order statistics that bound the ``q``
    quantile of ``n`` values: P(X(low) <= quantile <= X(high)) >= confidence.

    The point is the inverse-CDF quantile X(ceil(q n)). A bound is None when no rank within
    1..n reaches the level (too few values, e.g. a p99 upper bound from under 300 values)."""
    if n < 1:
        raise ValueError("quantile_ranks needs at least one value")
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    point = max(1, math.ceil(q * n - 1e-9))
    tail = (1 - confidence) / 2
    # B, the number of values below the true quantile, is Binomial(n, q); X(low) <= quantile
    # fails when B < low, X(high) >= quantile fails when B >= high.
    cdf = _BinomialCdf(n, q)
    low: int | None = None
    for rank in range(point, 0, -1):
        if cdf(rank - 1) <= tail:
            low = rank
            break
    high: int | None = None
    for rank in range(point, n + 1):
        if 1 - cdf(rank - 1) <= tail:
            high = rank
            break
    return low, point, high


class _BinomialCdf:
    """P(B <= k) for B ~ Binomial(n, p), summing the pmf over the window of ±12 standard
    deviations (and 10 more values) around the mean; outside it the mass is negligible."""

    def __init__(self, n: int, p: float) -> None:
        sd = math.sqrt(n * p * (1 - p))
        self.start = max(0, math.floor(n * p - 12 * sd - 10))
        stop = min(n, math.ceil(n * p + 12 * sd + 10))
        log_pmf = np.array([_log_binomial_pmf(k, n, p) for k in range(self.start, stop + 1)])
        self.cumulative = np.cumsum(np.exp(log_pmf))

    def __call__(self, k: int) -> float:
        if k < self.start:
            return 0.0
        index = k - self.start
        if index >= len(self.cumulative):
            return 1.0
        return float(min(1.0, self.cumulative[index]))


def ratio_of_intervals(numerator: Interval, denominator: Interval) -> Interval:
    """numerator / denominator for positive quantities, bounds from the two intervals."""
    if numerator.value is None or denominator.value is None or denominator.value <= 0:
        return EMPTY
    value = numerator.value / denominator.value
    low = (
        numerator.low / denominator.high
        if numerator.low is not None and denominator.high is not None and denominator.high > 0
        else None
    )
    high = (
        numerator.high / denominator.low
        if numerator.high is not None and denominator.low is not None and denominator.low > 0
        else None
    )
    return Interval(value, low, high)


@dataclass(frozen=True)
class PairedSums:
    """n pairs (x stable, y candidate): their sums, sums of squares and sum of products."""

    n: int
    x: float
    y: float
    xx: float
    yy: float
    xy: float


def ratio_of_means(sums: PairedSums, confidence: float = CONFIDENCE) -> Interval:
    """mean(y) / mean(x) over paired values, with its delta-method interval."""
    n = sums.n
    if n == 0 or sums.x <= 0:
        return EMPTY
    ratio = sums.y / sums.x
    if n < 2:
        return Interval(ratio, None, None)
    mean_x = sums.x / n
    var_x = max(0.0, (sums.xx - sums.x * sums.x / n) / (n - 1))
    var_y = max(0.0, (sums.yy - sums.y * sums.y / n) / (n - 1))
    cov = (sums.xy - sums.x * sums.y / n) / (n - 1)
    variance = max(0.0, var_y - 2 * ratio * cov + ratio * ratio * var_x) / (n * mean_x * mean_x)
    half = z_of(confidence) * math.sqrt(variance)
    return Interval(ratio, ratio - half, ratio + half)


def bootstrap_mean(
    values: list[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Interval:
    """The mean of ``values`` and its percentile-bootstrap interval (seeded)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return EMPTY
    mean = float(data.mean())
    if data.size == 1:
        return Interval(mean, None, None)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    # In blocks, so a large sample never holds resamples x n indices at once.
    block = max(1, 2_000_000 // data.size)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        picks = rng.integers(0, data.size, size=(stop - start, data.size))
        means[start:stop] = data[picks].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(mean, float(low), float(high))
