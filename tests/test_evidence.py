"""The gates' statistics against known answers (scipy), and their guarantees by simulation:
the anytime-valid tests hold their error rate however often they are looked at."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from weightshift.cli import main
from weightshift.evidence.sample_size import (
    Regression,
    fixed_horizon,
    minimum_duration,
    sequential,
)
from weightshift.evidence.sequential import (
    DEFAULT_CONCENTRATION,
    Decision,
    compare_means,
    compare_rates,
    log_e_value,
    ratio_of,
    share_interval,
)
from weightshift.evidence.simulation import first_failures, simulate_stages

ALPHA = 0.05


@pytest.mark.parametrize(
    ("x", "n", "rho0"), [(0, 0, 0.5), (3, 10, 0.2), (40, 400, 0.01), (7, 7, 0.3)]
)
def test_the_e_value_is_the_beta_binomial_mixture_over_the_binomial(
    x: int, n: int, rho0: float
) -> None:
    a, b = DEFAULT_CONCENTRATION * rho0, DEFAULT_CONCENTRATION * (1 - rho0)
    expected = stats.betabinom.logpmf(x, n, a, b) - stats.binom.logpmf(x, n, rho0)
    assert log_e_value(x, n, rho0) == pytest.approx(expected, abs=1e-9)


def test_the_confidence_sequence_is_the_set_the_e_value_does_not_reject() -> None:
    x, n, rho0 = 30, 200, 0.1
    lower, upper = share_interval(x, n, rho0, ALPHA)
    assert lower < x / n < upper
    for rho, inside in [
        (lower + 1e-6, True),
        (upper - 1e-6, True),
        (lower - 1e-4, False),
        (upper + 1e-4, False),
    ]:
        rejected = log_e_value(x, n, rho0, null=rho) >= math.log(1 / ALPHA)
        assert rejected is not inside


def test_a_fail_is_exactly_a_rejection_of_equal_rates_in_the_regression_direction() -> None:
    """What the repeated-looks simulation below checks, with the e-value alone."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(1, 400))
        x = int(rng.integers(0, n + 1))
        verdict = compare_rates(x, n - x, share=0.2, margin=0.0, alpha=ALPHA)
        rejects = log_e_value(x, n, 0.2) >= math.log(1 / ALPHA) and x / n > 0.2
        assert (verdict.decision is Decision.FAIL) is rejects


def test_twice_the_errors_fails_equal_errors_never_fails_few_requests_are_inconclusive() -> None:
    share = 0.05  # stage 2 of the canary
    doubled = compare_rates(100, 950, share=share, margin=0.1, alpha=ALPHA)
    assert doubled.decision is Decision.FAIL
    assert doubled.estimate == pytest.approx(ratio_of(100 / 1050, share))
    assert doubled.interval[0] > 1.1
    equal = compare_rates(500, 9500, share=share, margin=0.5, alpha=ALPHA)
    assert equal.decision is Decision.PASS
    assert equal.interval[0] < 1 < equal.interval[1] < 1.5
    few = compare_rates(2, 38, share=share, margin=0.5, alpha=ALPHA, candidate_requests=200)
    assert few.decision is Decision.INCONCLUSIVE
    assert few.needed is not None
    assert few.needed > 0
    # The projection is honest: that many more candidate requests at the same rates decide.
    scale = (200 + few.needed) / 200
    later = compare_rates(round(2 * scale), round(38 * scale), share=share, margin=0.5, alpha=ALPHA)
    assert later.decision is Decision.PASS
    sooner = scale * 0.9
    earlier = compare_rates(
        round(2 * sooner), round(38 * sooner), share=share, margin=0.5, alpha=ALPHA
    )
    assert earlier.decision is Decision.INCONCLUSIVE


def test_no_events_yet_is_inconclusive_with_nothing_to_project() -> None:
    verdict = compare_rates(0, 0, share=0.01, margin=0.2, alpha=ALPHA, candidate_requests=500)
    assert verdict.decision is Decision.INCONCLUSIVE
    assert verdict.needed is None
    assert verdict.interval == (0.0, math.inf)


def test_looking_every_minute_with_no_difference_fails_at_most_alpha_of_stages() -> None:
    """Stage 1 (1 %) for 4 hours at 20 requests/s, 1 % errors on both colours, the gate
    looked at every minute: 240 looks per stage, 400 stages."""
    looks = simulate_stages(0.01, 0.01, runs=400, minutes=240, rps=20, share=0.01, seed=11)
    fails = sum(first is not None for first in first_failures(looks, 0.01, ALPHA))
    # At most alpha, with room for the simulation's own noise (3 standard errors).
    assert fails / 400 <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 400)


def test_a_doubled_error_rate_fails_the_stage() -> None:
    """Stage 1 (1 %) at 20 requests/s: 2 % errors on the candidate against 1 %."""
    looks = simulate_stages(0.02, 0.01, runs=200, minutes=240, rps=20, share=0.01, seed=12)
    firsts = first_failures(looks, 0.01, ALPHA)
    caught = [looks.candidate_requests[i, m] for i, m in enumerate(firsts) if m is not None]
    assert len(caught) >= 0.8 * 200
    # Reported in docs/gates.md (scripts/gate_simulation.py prints the same figures).
    assert np.median(caught) < 240 * 60 * 20 * 0.01


def test_quality_means_cover_the_truth_at_every_look() -> None:
    """Scores in [0, 1], both colours at a mean of 0.8, the interval looked at after every
    25 scores up to 2,000: it excludes the true difference (0) in at most alpha of runs."""
    rng = np.random.default_rng(13)
    misses = 0
    for _ in range(300):
        candidate = rng.beta(4, 1, size=2000)
        stable = rng.beta(4, 1, size=2000)
        sums_c, sums_s = candidate.cumsum(), stable.cumsum()
        for count in range(25, 2001, 25):
            verdict = compare_means(
                float(sums_c[count - 1]),
                count,
                float(sums_s[count - 1]),
                count,
                margin=0.0,
                alpha=ALPHA,
            )
            if not verdict.interval[0] <= 0 <= verdict.interval[1]:
                misses += 1
                break
    assert misses / 300 <= ALPHA


def test_quality_fails_a_clear_drop_and_passes_within_the_margin() -> None:
    assert compare_means(600, 1000, 850, 1000, margin=0.05, alpha=ALPHA).decision is Decision.FAIL
    unsure = compare_means(845, 1000, 850, 1000, margin=0.1, alpha=ALPHA)
    assert unsure.decision is Decision.INCONCLUSIVE
    assert unsure.needed is not None
    # The projection: that many more scores on each side, at the same means, decide.
    count = 1000 + unsure.needed
    later = compare_means(0.845 * count, count, 0.85 * count, count, margin=0.1, alpha=ALPHA)
    assert later.decision is Decision.PASS
    sooner = 1000 + unsure.needed * 9 // 10
    assert (
        compare_means(
            0.845 * sooner, sooner, 0.85 * sooner, sooner, margin=0.1, alpha=ALPHA
        ).decision
        is Decision.INCONCLUSIVE
    )


def test_the_fixed_horizon_count_is_the_first_with_the_power_asked() -> None:
    """scipy's normal distribution for the one-sided two-proportion z-test's power."""
    question = Regression(0.01, 0.005, confidence=0.95, power=0.8)
    n = fixed_horizon(question)

    def power(count: int) -> float:
        p1, p2 = question.baseline, question.candidate
        mean = (p1 + p2) / 2
        pooled = math.sqrt(2 * mean * (1 - mean) / count)
        unpooled = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / count)
        z = stats.norm.ppf(0.95)
        return float(stats.norm.cdf(((p2 - p1) - z * pooled) / unpooled))

    assert power(n) >= 0.8 > power(n - 1)
    # And by simulation of the test itself: about 80 % of regressions seen at that count.
    rng = np.random.default_rng(5)
    a, b = rng.binomial(n, 0.01, size=4000), rng.binomial(n, 0.015, size=4000)
    pooled = (a + b) / (2 * n)
    z = (b - a) / n / np.sqrt(2 * pooled * (1 - pooled) / n)
    assert float(np.mean(z > stats.norm.ppf(0.95))) == pytest.approx(0.8, abs=0.03)


def test_looking_any_time_costs_more_requests_than_one_look() -> None:
    question = Regression(0.01, 0.005)
    fixed, anytime = fixed_horizon(question), sequential(question)
    assert fixed < anytime < 4 * fixed
    assert sequential(question) == anytime  # seeded: the same answer every time


def test_minimum_duration_is_the_smaller_arm_at_its_rate() -> None:
    assert minimum_duration(10_000, rps=20, share=0.05) == pytest.approx(10_000 / 1.0)
    assert minimum_duration(10_000, rps=20, share=0.5) == pytest.approx(1000)
    with pytest.raises(ValueError, match="share"):
        minimum_duration(10_000, rps=20, share=0)


def test_gates_sample_size_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["gates", "sample-size", "--metric", "latency", "--baseline", "0.01"]
    assert main([*argv, "--regression", "0.005", "--rps", "20", "--share", "0.05", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["requestsPerArm"] == fixed_horizon(Regression(0.01, 0.005))
    assert found["minimumDuration"] == pytest.approx(found["requestsPerArm"] / (20 * 0.05), abs=0.1)
    assert found["sequentialRequestsPerArm"] > found["requestsPerArm"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--baseline", "1.5", "--regression", "0.1"], "--baseline 1.5 is out of range"),
        (["--baseline", "0.01", "--regression", "0"], "--regression 0.0 is out of range"),
        (
            ["--baseline", "0.01", "--regression", "0.1", "--rps", "20"],
            "--rps and --share go together",
        ),
    ],
)
def test_gates_sample_size_refuses_bad_input_naming_the_option(
    extra: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gates", "sample-size", "--metric", "error-rate", *extra]) == 2
    error = capsys.readouterr().err
    assert named in error
    assert "Traceback" not in error
