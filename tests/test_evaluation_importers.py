"""The importers: promptfoo's JSON output, lm-evaluation-harness results files and a bundle's
own tests/evaluation.json, from real-shaped fixtures (tests/fixtures/evaluation/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT
from weightshift.evaluation import importers
from weightshift.evaluation.importers import SourceError, Subject
from weightshift.evaluation.report import BundleRef, parse

FIXTURES = Path(__file__).parent / "fixtures" / "evaluation"
CANDIDATE = BundleRef(
    id="support-assistant/v1.5.0-d80719af096e",
    digest="d80719af096e7c33003cdd31e6f8427f0e188f771fc347f066fcc6d8b7f32031",
)
BASELINE = BundleRef(
    id="support-assistant/v1.4.2-424ef6470390",
    digest="424ef6470390de12d1b1de43d225d4610282c1f0f8be006a6c077bbbb3e343dc",
)
SUBJECT = Subject(CANDIDATE, BASELINE)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_promptfoo_maps_select_best_moderation_adversarial_and_latency() -> None:
    report = importers.from_promptfoo(
        fixture("promptfoo_output.json"), SUBJECT, candidate_provider="candidate"
    )
    assert report.source == "promptfoo"
    assert report.bundle == CANDIDATE
    assert report.baseline == BASELINE
    # select-best picked the candidate on tests 0, 1 and 3, the baseline on test 2.
    assert report.pairwise is not None
    assert (report.pairwise.wins, report.pairwise.losses, report.pairwise.ties) == (3, 1, 0)
    # The moderation assertion failed on the candidate's answer to test 3.
    assert report.toxicity is not None
    assert (report.toxicity.flagged, report.toxicity.total) == (1, 4)
    # Tests 4 and 5 carry metric: adversarial; the candidate leaked the canary on test 5.
    assert report.adversarial is not None
    assert (report.adversarial.passed, report.adversarial.total) == (1, 2)
    assert [(c.id, c.kind) for c in report.adversarial.failures] == [("test 5", "must-not-leak")]
    assert report.latency is not None
    assert report.latency.candidate_seconds == (0.812, 0.95, 1.104, 0.77, 0.64, 0.701)
    # The baseline's errored result is left out, and said so.
    assert len(report.latency.baseline_seconds) == 6
    assert any("1 errored results of provider 'baseline'" in n for n in report.notes)
    assert any("icontains assertions" in n for n in report.notes)
    assert report.dataset == "support-eval smoke 2026-10"
    assert report.created.isoformat() == "2026-10-19T08:30:11+00:00"


def test_promptfoo_with_two_providers_needs_the_candidate_named() -> None:
    with pytest.raises(SourceError, match="--candidate-provider"):
        importers.from_promptfoo(fixture("promptfoo_output.json"), SUBJECT)
    with pytest.raises(SourceError, match="'nope' is not a provider"):
        importers.from_promptfoo(
            fixture("promptfoo_output.json"), SUBJECT, candidate_provider="nope"
        )


def test_promptfoo_reversed_providers_reverse_the_wins() -> None:
    report = importers.from_promptfoo(
        fixture("promptfoo_output.json"), SUBJECT, candidate_provider="baseline"
    )
    assert report.pairwise is not None
    assert (report.pairwise.wins, report.pairwise.losses) == (1, 3)


def test_lm_eval_counts_toxicity_and_the_adversarial_task_and_notes_the_rest() -> None:
    report = importers.from_lm_eval(
        fixture("lm_eval_results.json"), SUBJECT, adversarial_task="refusal_suite"
    )
    assert report.toxicity is not None
    assert (report.toxicity.flagged, report.toxicity.total) == (6, 1000)
    assert report.toxicity.moderator == "lm-eval:realtoxicityprompts:toxicity_perspective_api,none"
    assert report.adversarial is not None
    assert (report.adversarial.passed, report.adversarial.total) == (398, 400)
    assert report.pairwise is None
    assert report.latency is None
    assert any(
        n.startswith("lm-eval mmlu acc,none = 0.6834 ± 0.0037 (n = 14042)") for n in report.notes
    )
    assert report.created.year == 2025


def test_lm_eval_mean_that_is_not_a_count_gives_no_counts() -> None:
    data = json.loads(fixture("lm_eval_results.json"))
    data["results"]["realtoxicityprompts"]["toxicity_perspective_api,none"] = 0.0123456
    report = importers.from_lm_eval(json.dumps(data).encode(), SUBJECT)
    assert report.toxicity is None
    assert any("is not a share of 0/1 scores" in n for n in report.notes)


def test_bundle_tests_with_counts_feed_every_gate_but_latency() -> None:
    report = importers.from_bundle_tests(fixture("evaluation_with_counts.json"), SUBJECT)
    assert report.toxicity is not None
    assert report.toxicity.flagged == 8
    assert report.pairwise is not None
    assert report.pairwise.pairs == 2000
    assert report.adversarial is not None
    assert report.adversarial.total == 412
    assert report.latency is None
    assert any("latency p99 6200 ms" in n for n in report.notes)


def test_bundle_tests_without_counts_say_no_evidence() -> None:
    data = (PROJECT / "bundles/support-assistant/v1.5.0/tests/evaluation.json").read_bytes()
    report = importers.from_bundle_tests(data, SUBJECT)
    assert report.toxicity is None
    assert report.pairwise is None
    assert any("toxicity 0.004 given without counts" in n for n in report.notes)


def test_bundle_tests_counts_must_agree_with_the_point_estimates() -> None:
    data = json.loads(fixture("evaluation_with_counts.json"))
    data["toxicity_flagged"] = 80
    with pytest.raises(SourceError, match=r"toxicity_flagged / toxicity_total is 0\.04"):
        importers.from_bundle_tests(json.dumps(data).encode(), SUBJECT)


def test_bundle_tests_baseline_must_be_the_one_given() -> None:
    other = Subject(CANDIDATE, None)
    with pytest.raises(SourceError, match=r"pass --baseline support-assistant/v1\.4\.2"):
        importers.from_bundle_tests(fixture("evaluation_with_counts.json"), other)


@pytest.mark.parametrize(
    ("importer", "data", "message"),
    [
        (importers.from_promptfoo, b"{", "is not JSON"),
        (importers.from_promptfoo, b'{"results": {"a": 1, "a": 2}}', "appears twice"),
        (importers.from_promptfoo, b'{"results": []}', "no results.results list"),
        (importers.from_lm_eval, b"[1, 2]", "no results per task"),
        (importers.from_bundle_tests, b'{"toxicity": 2}', "is not a bundle's evaluation file"),
        (importers.from_promptfoo, b"[" * 100_000 + b"]" * 100_000, "is not JSON"),
    ],
)
def test_malformed_input_is_one_clear_error(importer: object, data: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        importer(data, SUBJECT)  # type: ignore[operator]


def run_cli(*args: str, cwd: Path = PROJECT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightshift.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_eval_import_reads_digests_from_the_local_bundles_and_writes_the_report(
    tmp_path: Path,
) -> None:
    out = tmp_path / "report.json"
    done = run_cli(
        "eval", "import", "--from", "promptfoo", str(FIXTURES / "promptfoo_output.json"),
        "--bundle", CANDIDATE.id, "--baseline", BASELINE.id,
        "--candidate-provider", "candidate", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = parse(out.read_bytes(), str(out))
    assert report.bundle == CANDIDATE
    assert report.baseline == BASELINE
    assert f"report {report.sha256}" in done.stderr


def test_eval_import_refuses_a_digest_that_is_not_the_bundles(tmp_path: Path) -> None:
    done = run_cli(
        "eval", "import", "--from", "bundle-tests", str(FIXTURES / "evaluation_with_counts.json"),
        "--bundle", CANDIDATE.id, "--digest", "d80719af096e" + "0" * 52,
        "--baseline", BASELINE.id, "--out", str(tmp_path / "r.json"),
    )  # fmt: skip
    # The digest begins with the id's hash, so it is a well-formed claim: the import accepts
    # it; publishing is where it meets the manifest (test_evaluation_store).
    assert done.returncode == 0, done.stderr
    done = run_cli(
        "eval", "import", "--from", "bundle-tests", str(FIXTURES / "evaluation_with_counts.json"),
        "--bundle", CANDIDATE.id, "--digest", "ab" * 32, "--baseline", BASELINE.id,
    )  # fmt: skip
    assert done.returncode == 2
    assert "is not the digest of support-assistant/v1.5.0-d80719af096e" in " ".join(
        done.stderr.split()
    )
