"""The example project's evaluation report (bundles/support-assistant/reports/v1.5.0/): what
keeps the offline prod stack's candidate (green, v1.5.0 against blue v1.4.2) passing
``gates check`` and the policy "a candidate gets traffic only with a passing report".

Its counts agree with the bundle's own tests/evaluation.json; its latency samples are
synthetic (seeded), which its notes say. ``python -m tests.test_evaluation_example`` writes
it again (the same bytes, so the same address)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from weightshift.bundles.catalog import LocalCatalog
from weightshift.bundles.schemas import Evaluation
from weightshift.bundles.versioning import BundleId
from weightshift.config.rollout import Thresholds
from weightshift.evaluation.report import (
    Adversarial,
    BundleRef,
    EvaluationReport,
    Latency,
    Pairwise,
    Toxicity,
    parse,
)
from weightshift.evaluation.store import LocalReports, local_folder
from weightshift.gates.check import Expected, Outcome, check

ROOT = Path(__file__).resolve().parent.parent / "bundles"
CANDIDATE = BundleId.parse("support-assistant/v1.5.0-d80719af096e")
BASELINE = BundleId.parse("support-assistant/v1.4.2-424ef6470390")
PROMPTS = 2000


def _latencies(rng: np.random.Generator, median: float, p99: float) -> tuple[float, ...]:
    """``PROMPTS`` lognormal seconds scaled so that their nearest-rank p99 is ``p99``."""
    drawn = rng.lognormal(np.log(median), 0.25, PROMPTS)
    scaled = drawn * p99 / np.sort(drawn)[int(np.ceil(0.99 * PROMPTS)) - 1]
    return tuple(float(x) for x in np.round(scaled, 3))


def example_report() -> EvaluationReport:
    catalog = LocalCatalog(ROOT)
    figures = Evaluation.model_validate_json(
        (ROOT / "support-assistant/v1.5.0/tests/evaluation.json").read_bytes()
    )
    rng = np.random.default_rng(20261015)
    baseline_seconds = _latencies(rng, 2.4, 5.9)
    candidate_seconds = _latencies(rng, 2.5, figures.latency_p99_ms / 1000)
    return EvaluationReport(
        bundle=BundleRef(id=str(CANDIDATE), digest=catalog.resolve(CANDIDATE).manifest.digest),
        baseline=BundleRef(id=str(BASELINE), digest=catalog.resolve(BASELINE).manifest.digest),
        created=datetime(2026, 10, 20, 9, 0, tzinfo=UTC),
        source="bundle-tests",
        dataset=figures.dataset or "support-eval-2026-10",
        pairwise=Pairwise(wins=1120, losses=680, ties=200),
        toxicity=Toxicity(flagged=8, total=PROMPTS, moderator="example"),
        adversarial=Adversarial(passed=figures.adversarial.passed, total=figures.adversarial.total),
        latency=Latency(candidate_seconds=candidate_seconds, baseline_seconds=baseline_seconds),
        notes=(
            "the example project's report, not a measurement: its counts are made to agree "
            "with bundles/support-assistant/v1.5.0/tests/evaluation.json (toxicity 0.004, "
            "win rate 0.61, adversarial 412/412, candidate p99 6.2 s)",
            "latency samples are synthetic (seeded lognormal draws), 2000 prompts per colour",
        ),
    )


def stored() -> list[Path]:
    return sorted(local_folder(ROOT, CANDIDATE).glob("*.json"))


def test_the_checked_in_example_is_the_generated_one() -> None:
    report = example_report()
    (path,) = stored()
    assert path.name == f"{report.sha256}.json"
    assert path.read_bytes() == report.to_json()


def test_its_counts_agree_with_the_bundles_own_figures() -> None:
    (path,) = stored()
    report = parse(path.read_bytes(), str(path))
    figures = json.loads((ROOT / "support-assistant/v1.5.0/tests/evaluation.json").read_text())
    assert report.toxicity is not None
    assert report.pairwise is not None
    assert report.adversarial is not None
    assert report.latency is not None
    assert report.toxicity.flagged / report.toxicity.total == figures["toxicity"]
    pairs = report.pairwise
    assert (pairs.wins + pairs.ties / 2) / pairs.pairs == figures["win_rate"]
    assert (report.adversarial.passed, report.adversarial.total) == (412, 412)
    p99 = sorted(report.latency.candidate_seconds)[int(0.99 * PROMPTS) - 1]
    assert p99 * 1000 == figures["latency_p99_ms"]
    assert report.baseline is not None
    assert report.baseline.id == figures["baseline"]


def test_it_passes_every_gate_for_the_offline_prod_candidate() -> None:
    (path,) = stored()
    report = parse(path.read_bytes(), str(path))
    catalog = LocalCatalog(ROOT)
    expected = Expected(
        CANDIDATE,
        catalog.resolve(CANDIDATE).manifest.digest,
        BASELINE,
        catalog.resolve(BASELINE).manifest.digest,
    )
    result = check(report, Thresholds(), expected)
    assert result.decision == "pass"
    assert [gate.outcome for gate in result.gates] == [Outcome.PASS] * 4
    assert LocalReports(ROOT).reports(CANDIDATE) == (report,)


if __name__ == "__main__":
    made = example_report()
    print(LocalReports(ROOT).publish(made).where)
