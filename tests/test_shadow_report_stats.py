"""The shadow report's intervals: against scipy where scipy has them, and by simulation
(seeded) where it does not: each covers the true value at least about as often as stated."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from weightshift.shadow import stats

SIMULATIONS = 2000


@pytest.mark.parametrize(("k", "n"), [(0, 10), (7, 10), (10, 10), (11, 19), (512, 1000)])
def test_wilson_is_scipys(k: int, n: int) -> None:
    interval = stats.wilson(k, n)
    expected = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert interval.value == pytest.approx(k / n)
    assert interval.low == pytest.approx(expected.low, abs=1e-12)
    assert interval.high == pytest.approx(expected.high, abs=1e-12)


def test_wilson_of_nothing_is_empty() -> None:
    assert stats.wilson(0, 0) == stats.EMPTY
    with pytest.raises(ValueError, match="successes <= trials"):
        stats.wilson(3, 2)


def coverage(hits: list[bool]) -> float:
    return sum(hits) / len(hits)


@pytest.mark.parametrize(
    "cells",
    [
        (0.02, 0.01, 0.03, 0.94),  # rare refusals, mostly agreeing
        (0.10, 0.05, 0.05, 0.80),  # no difference
        (0.30, 0.02, 0.15, 0.53),  # a real increase, strongly paired
    ],
)
def test_paired_difference_covers_the_true_delta(cells: tuple[float, ...]) -> None:
    rng = np.random.default_rng(11)
    truth = (cells[0] + cells[2]) - (cells[0] + cells[1])
    hits = []
    for table in rng.multinomial(400, cells, size=SIMULATIONS):
        counts = stats.PairedCounts(*(int(x) for x in table))
        interval = stats.paired_difference(counts)
        assert interval.low is not None
        assert interval.high is not None
        hits.append(interval.low <= truth <= interval.high)
    assert coverage(hits) >= 0.93


def test_paired_difference_by_hand() -> None:
    # Newcombe (1998), method 10, worked with scipy's Wilson intervals: a = both refuse,
    # b = the candidate only, c = stable only, d = neither; the candidate's rate minus
    # stable's is (b - c) / n.
    a, b, c, d = 36, 12, 2, 0
    n = a + b + c + d
    first = scipy_stats.binomtest(a + b, n).proportion_ci(0.95, method="wilson")
    second = scipy_stats.binomtest(a + c, n).proportion_ci(0.95, method="wilson")
    p1, p2 = (a + b) / n, (a + c) / n
    phi = (a * d - b * c) / ((a + b) * (c + d) * (a + c) * (b + d)) ** 0.5  # negative: kept
    low = (p1 - p2) - (
        (p1 - first.low) ** 2
        - 2 * phi * (p1 - first.low) * (second.high - p2)
        + (second.high - p2) ** 2
    ) ** 0.5
    high = (p1 - p2) + (
        (p2 - second.low) ** 2
        - 2 * phi * (p2 - second.low) * (first.high - p1)
        + (first.high - p1) ** 2
    ) ** 0.5
    interval = stats.paired_difference(
        stats.PairedCounts(both=a, stable_only=c, candidate_only=b, neither=d)
    )
    assert interval.value == pytest.approx(0.2)
    assert interval.low == pytest.approx(low)
    assert interval.high == pytest.approx(high)
    # A small positive association (ad - bc <= n/2) counts as none.
    weak = stats.PairedCounts(both=1, stable_only=3, candidate_only=3, neither=10)
    independent = stats.paired_difference(weak)
    assert independent.value == 0.0
    w = stats.wilson(4, 17)
    assert w.low is not None
    assert w.high is not None
    assert w.value is not None
    assert independent.high == pytest.approx(
        ((w.high - w.value) ** 2 + (w.value - w.low) ** 2) ** 0.5
    )


@pytest.mark.parametrize(("n", "q"), [(7, 0.5), (40, 0.5), (500, 0.99), (5000, 0.99)])
def test_quantile_ranks_hold_the_stated_binomial_mass(n: int, q: float) -> None:
    low, point, high = stats.quantile_ranks(n, q)
    assert point == int(np.ceil(q * n))
    lower = low if low is not None else 0
    upper = high if high is not None else n + 1
    # P(X(low) <= quantile <= X(high)) = P(low <= B < high), B ~ Binomial(n, q).
    mass = scipy_stats.binom.cdf(upper - 1, n, q) - scipy_stats.binom.cdf(lower - 1, n, q)
    assert mass >= 0.95
    # Equal tails, each at most 2.5 %, and no rank further in keeps its tail within that.
    if low is not None:
        assert scipy_stats.binom.cdf(low - 1, n, q) <= 0.025 < scipy_stats.binom.cdf(low, n, q)
    if high is not None:
        assert scipy_stats.binom.sf(high - 1, n, q) <= 0.025 < scipy_stats.binom.sf(high - 2, n, q)


def test_a_p99_from_few_values_has_no_upper_bound() -> None:
    assert stats.quantile_ranks(100, 0.99)[2] is None
    assert stats.quantile_ranks(1000, 0.99)[2] is not None


def test_order_statistic_interval_covers_a_lognormal_quantile() -> None:
    rng = np.random.default_rng(5)
    n, q = 300, 0.5
    truth = float(np.exp(6.0))  # the median of lognormal(6, 0.7)
    low, _point, high = stats.quantile_ranks(n, q)
    assert low is not None
    assert high is not None
    hits = []
    for _ in range(SIMULATIONS):
        values = np.sort(rng.lognormal(6.0, 0.7, n))
        hits.append(values[low - 1] <= truth <= values[high - 1])
    assert coverage(hits) >= 0.94


def test_ratio_of_means_covers_the_true_ratio() -> None:
    rng = np.random.default_rng(7)
    n = 300
    truth = 1.2  # candidate tokens are 1.2 x stable's, with noise
    hits = []
    for _ in range(SIMULATIONS):
        x = rng.poisson(80, n).astype(float) + 1
        y = truth * x + rng.normal(0, 15, n)
        sums = stats.PairedSums(
            n=n, x=x.sum(), y=y.sum(), xx=(x * x).sum(), yy=(y * y).sum(), xy=(x * y).sum()
        )
        interval = stats.ratio_of_means(sums)
        assert interval.low is not None
        assert interval.high is not None
        hits.append(interval.low <= truth <= interval.high)
    assert coverage(hits) >= 0.93


def test_bootstrap_mean_covers_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    truth = 0.3  # mean of Beta(3, 7)
    hits = []
    for _ in range(300):
        values = rng.beta(3, 7, 200)
        interval = stats.bootstrap_mean(values, resamples=400, seed=1)
        assert interval.low is not None
        assert interval.high is not None
        hits.append(interval.low <= truth <= interval.high)
    assert coverage(hits) >= 0.91
    values = rng.beta(3, 7, 50)
    assert stats.bootstrap_mean(values, seed=4) == stats.bootstrap_mean(values, seed=4)
    assert stats.bootstrap_mean(values, seed=4) != stats.bootstrap_mean(values, seed=5)


def test_ratio_of_intervals_is_conservative_and_open_where_unbounded() -> None:
    ratio = stats.ratio_of_intervals(stats.Interval(12, 10, 15), stats.Interval(6, 5, 8))
    assert (ratio.value, ratio.low, ratio.high) == (2.0, 10 / 8, 15 / 5)
    open_above = stats.ratio_of_intervals(stats.Interval(12, 10, None), stats.Interval(6, 5, 8))
    assert open_above.high is None
    assert open_above.low == 10 / 8
