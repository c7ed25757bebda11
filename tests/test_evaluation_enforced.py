"""The program itself refuses traffic to a candidate without a passing evaluation report:
a stack policy runs only after every resource is registered, by when the listener would have
moved, so the refusal is the program's (``__main__.py``), before anything registers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from weightshift.cli import main

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def catalog_without_reports(tmp_path: Path) -> Path:
    root = tmp_path / "bundles"
    shutil.copytree(PROJECT / "bundles", root, ignore=shutil.ignore_patterns("reports"))
    return root


def test_stage_0_needs_no_report(
    catalog_without_reports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", "--catalog", str(catalog_without_reports), "--out", "/dev/null"]) == 0


def test_traffic_without_a_report_is_refused_before_anything_registers(
    catalog_without_reports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["synth", "--catalog", str(catalog_without_reports), "--set", "rollout.stage=1"]
    assert main([*argv, "--out", "/dev/null"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the candidate's evaluation blocks its traffic" in err
    assert "support-assistant/v1.5.0-d80719af096e would serve 1 % of requests" in err
    assert "evaluation is missing" in err


def test_a_failing_report_blocks_too_and_plan_shows_the_stage_blocked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The example report's toxicity is 8 of 2,000: a ceiling of 0.001 fails it.
    strict = ["--set", "rollout.thresholds.maxToxicity=0.001"]
    assert main(["plan", *strict]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "stage 1: BLOCKED: the candidate's evaluation blocks its traffic" in out
    assert "evaluation is blocked" in out
    assert "stage 0: baseline" in out
