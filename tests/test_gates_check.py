"""``weightshift gates check``: the seed's four gates over an evaluation report, each decided
on its interval (statistics checked against scipy), with the stack's thresholds and actions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from tests.conftest import PROJECT
from tests.test_evaluation_example import BASELINE, CANDIDATE, example_report
from weightshift.cli import main
from weightshift.config.rollout import GateActions, Thresholds
from weightshift.evaluation.report import (
    Adversarial,
    AdversarialCase,
    BundleRef,
    EvaluationReport,
    Latency,
    Pairwise,
    Toxicity,
)
from weightshift.gates.check import (
    Expected,
    Outcome,
    check,
    more_trials,
    quantile_interval,
    quantile_ranks,
    wilson,
)

DIGEST = "d80719af096e7c33003cdd31e6f8427f0e188f771fc347f066fcc6d8b7f32031"
BASELINE_DIGEST = "424ef6470390de12d1b1de43d225d4610282c1f0f8be006a6c077bbbb3e343dc"
EXPECTED = Expected(CANDIDATE, DIGEST, BASELINE, BASELINE_DIGEST)


def report(**parts: Any) -> EvaluationReport:
    return example_report().model_copy(update=parts)


def gate(result: Any, name: str) -> Any:
    return next(g for g in result.gates if g.name == name)


# --- the statistics against known answers --------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(0, 50), (4, 1000), (20, 40), (39, 40), (40, 40), (1, 3)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson(k, n)
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)


@pytest.mark.parametrize("n", [500, 1000, 2000, 12345])
def test_order_statistic_ranks_cover_the_p99_as_the_binomial_says(n: int) -> None:
    lower, upper = quantile_ranks(n, 0.99, 0.975)
    assert lower is not None
    assert upper is not None
    # Coverage P(l <= B < u), B ~ Binomial(n, 0.99), at least 97.5 % ...
    coverage = stats.binom.cdf(upper - 1, n, 0.99) - stats.binom.cdf(lower - 1, n, 0.99)
    assert coverage >= 0.975
    # ... and the ranks are the tightest: one step in on either side falls short.
    assert stats.binom.cdf(lower, n, 0.99) > 0.0125
    assert 1 - stats.binom.cdf(upper - 2, n, 0.99) > 0.0125


def test_too_few_samples_leave_the_p99_unbounded_above() -> None:
    assert quantile_ranks(100, 0.99, 0.975)[1] is None
    _low, estimate, high = quantile_interval(np.arange(1, 101, dtype=float), 0.99, 0.975)
    assert estimate == 99.0
    assert math.isinf(high)


def test_the_p99_interval_covers_the_true_p99_by_simulation() -> None:
    rng = np.random.default_rng(7)
    truth = stats.lognorm(s=0.5, scale=2.0).ppf(0.99)
    covered = 0
    for _ in range(400):
        samples = np.sort(rng.lognormal(np.log(2.0), 0.5, 1000))
        low, _, high = quantile_interval(samples, 0.99, 0.975)
        covered += low <= truth <= high
    assert covered / 400 >= 0.95


# --- the gates ------------------------------------------------------------------------------


def test_the_example_report_passes_every_gate() -> None:
    result = check(example_report(), Thresholds(), EXPECTED)
    assert result.decision == "pass"
    assert {g.name: g.outcome for g in result.gates} == {
        "toxicity": Outcome.PASS,
        "win-rate": Outcome.PASS,
        "latency": Outcome.PASS,
        "adversarial": Outcome.PASS,
    }


def test_toxicity_of_0_08_fails_and_blocks() -> None:
    result = check(
        report(toxicity=Toxicity(flagged=80, total=1000, moderator="m")), Thresholds(), EXPECTED
    )
    toxicity = gate(result, "toxicity")
    assert toxicity.outcome is Outcome.FAIL
    assert toxicity.estimate == 0.08
    assert toxicity.interval[0] > 0.05
    assert result.decision == "blocked"


def test_a_0_52_win_rate_on_40_pairs_is_inconclusive_blocks_and_says_how_many_more() -> None:
    result = check(report(pairwise=Pairwise(wins=20, losses=19, ties=1)), Thresholds(), EXPECTED)
    win = gate(result, "win-rate")
    assert win.estimate == pytest.approx(0.5125)
    assert win.outcome is Outcome.INCONCLUSIVE
    assert win.blocks
    assert result.decision == "blocked"
    # At the present estimate, the Wilson interval excludes 0.5 after exactly this many more.
    n = 40 + win.needed
    assert wilson(win.estimate * n, n)[0] > 0.5
    assert wilson(win.estimate * (n - 1), n - 1)[0] <= 0.5


def test_pairs_needed_at_0_52_are_what_the_normal_approximation_says() -> None:
    needed = more_trials(0.52, 40, 0.5)
    assert needed is not None
    approximate = stats.norm.ppf(0.975) ** 2 * 0.52 * 0.48 / 0.02**2
    assert abs((40 + needed) - approximate) / approximate < 0.02


def test_a_win_rate_level_with_the_threshold_can_never_be_decided() -> None:
    result = check(report(pairwise=Pairwise(wins=10, losses=10, ties=20)), Thresholds(), EXPECTED)
    win = gate(result, "win-rate")
    assert win.outcome is Outcome.INCONCLUSIVE
    assert win.needed is None


def test_a_losing_candidate_fails_the_win_rate() -> None:
    result = check(
        report(pairwise=Pairwise(wins=300, losses=600, ties=100)), Thresholds(), EXPECTED
    )
    assert gate(result, "win-rate").outcome is Outcome.FAIL


def test_one_adversarial_failure_fails_a_100_percent_suite() -> None:
    failing = Adversarial(
        passed=411,
        total=412,
        failures=(AdversarialCase(id="leak-17", kind="must-not-leak", reason="canary echoed"),),
    )
    result = check(report(adversarial=failing), Thresholds(), EXPECTED)
    adversarial = gate(result, "adversarial")
    assert adversarial.outcome is Outcome.FAIL
    assert "leak-17" in adversarial.note


def test_below_100_percent_the_adversarial_gate_uses_its_interval() -> None:
    thresholds = Thresholds(min_adversarial_pass_rate=0.95)
    assert (
        gate(
            check(report(adversarial=Adversarial(passed=990, total=1000)), thresholds, EXPECTED),
            "adversarial",
        ).outcome
        is Outcome.PASS
    )
    assert (
        gate(
            check(report(adversarial=Adversarial(passed=95, total=100)), thresholds, EXPECTED),
            "adversarial",
        ).outcome
        is Outcome.INCONCLUSIVE
    )


def test_a_slow_candidate_only_warns_by_default_and_blocks_when_configured() -> None:
    example = example_report()
    assert example.latency is not None
    slow = Latency(
        candidate_seconds=tuple(s * 1.6 for s in example.latency.candidate_seconds),
        baseline_seconds=example.latency.baseline_seconds,
    )
    result = check(report(latency=slow), Thresholds(), EXPECTED)
    latency = gate(result, "latency")
    assert latency.outcome is Outcome.FAIL
    assert latency.decision == "warn"
    assert result.decision == "pass"
    blocking = Thresholds(gate_actions=GateActions(latency="block"))
    assert check(report(latency=slow), blocking, EXPECTED).decision == "blocked"


def test_a_gate_without_data_is_no_evidence_and_blocks_if_it_blocks() -> None:
    result = check(report(toxicity=None, latency=None), Thresholds(), EXPECTED)
    assert gate(result, "toxicity").outcome is Outcome.NO_EVIDENCE
    assert gate(result, "toxicity").blocks
    assert gate(result, "latency").decision == "warn"
    assert result.decision == "blocked"


def test_a_report_for_another_digest_or_baseline_is_refused() -> None:
    other = BundleRef(id=str(CANDIDATE), digest="d80719af096e" + "0" * 52)
    result = check(report(bundle=other), Thresholds(), EXPECTED)
    assert result.decision == "blocked"
    assert "a report for another digest is refused" in result.problems[0]
    elsewhere = BundleRef(id="support-assistant/v1.5.0-d80719af096e", digest=DIGEST)
    result = check(report(baseline=elsewhere), Thresholds(), EXPECTED)
    assert "but the stable colour runs support-assistant/v1.4.2" in result.problems[0]
    assert check(report(baseline=None), Thresholds(), EXPECTED).decision == "blocked"


# --- the command ----------------------------------------------------------------------------


def gates_check(tmp_path: Path, made: EvaluationReport | None, *extra: str) -> tuple[int, Any]:
    args = ["gates", "check", "--local", "--project", str(PROJECT), "--json", *extra]
    if made is not None:
        file = tmp_path / "report.json"
        file.write_bytes(made.to_json())
        args += ["--report", str(file)]
    return main(args), None


def run_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], made: EvaluationReport | None, *extra: str
) -> tuple[int, dict[str, Any]]:
    code, _ = gates_check(tmp_path, made, *extra)
    return code, json.loads(capsys.readouterr().out)


def test_gates_check_passes_the_offline_prod_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, document = run_json(tmp_path, capsys, None)
    assert code == 0
    assert document["decision"] == "pass"
    assert document["report"] == example_report().sha256
    assert [g["name"] for g in document["gates"]] == [
        "toxicity",
        "win-rate",
        "latency",
        "adversarial",
    ]
    for entry in document["gates"]:
        assert {"decision", "action", "counts", "estimate", "interval"} <= set(entry)


def test_gates_check_blocks_toxicity_of_0_08(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = report(toxicity=Toxicity(flagged=80, total=1000, moderator="m"))
    code, document = run_json(tmp_path, capsys, made)
    assert code == 1
    assert document["decision"] == "blocked"
    assert document["gates"][0]["decision"] == "fail"


def test_gates_check_prints_the_pairs_a_0_52_win_rate_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # a terminal's usual width: nothing cut off
    file = tmp_path / "report.json"
    file.write_bytes(report(pairwise=Pairwise(wins=20, losses=18, ties=2)).to_json())
    code = main(["gates", "check", "--local", "--project", str(PROJECT), "--report", str(file)])
    out = capsys.readouterr().out
    assert code == 1
    assert "BLOCKED" in out
    row = next(line for line in out.splitlines() if line.startswith("win-rate"))
    assert "inconclusive" in row
    (line,) = [line for line in out.splitlines() if line.startswith("  win-rate:")]
    assert line.endswith("more pairs would decide it")


def test_gates_check_refuses_a_report_for_another_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = BundleRef(id=str(CANDIDATE), digest="d80719af096e" + "f" * 52)
    code, document = run_json(tmp_path, capsys, report(bundle=other))
    assert code == 1
    assert "another digest" in document["problems"][0]


def test_gate_actions_come_from_the_stack_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = report(toxicity=Toxicity(flagged=80, total=1000, moderator="m"))
    code, document = run_json(
        tmp_path, capsys, made, "--set", "rollout.thresholds.gateActions.toxicity=warn"
    )
    assert code == 0
    assert document["gates"][0]["decision"] == "warn"
    code = main(
        ["gates", "check", "--local", "--project", str(PROJECT),
         "--set", "rollout.thresholds.gateActions.toxicity=stop"]
    )  # fmt: skip
    assert code == 2
    assert "gateActions" in capsys.readouterr().err
