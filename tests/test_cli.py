"""The `weightshift` command as a person runs it: output, exit codes, errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from weightshift.cli import main

PROJECT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path = PROJECT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightshift.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["synth", "--set", "rollout.stage=99"],
            "weightshift:rollout.stage = 99: not a stage of strategy canary; allowed 0 to 5",
        ),
        (
            ["synth", "--set", "rollout.strategy=linear"],
            'weightshift:rollout.strategy = "linear": '
            "Input should be 'canary', 'blue-green' or 'shadow'",
        ),
        (
            ["synth", "--set", "green.version=support-assistant/v1.5-a1b2c3d4e5f6"],
            "is not a bundle id: expected name/vMAJOR.MINOR.PATCH-hash",
        ),
        (
            ["synth", "--stack", "staging"],
            "Unknown stack 'staging': there is no Pulumi.staging.yaml",
        ),
        (["plan", "--set", "rollout"], "--set 'rollout' is not key=value"),
    ],
)
def test_bad_input_exits_2_with_one_paragraph_and_no_traceback(
    args: list[str], expected: str
) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert message.startswith(f"weightshift {args[0]}: error:")
    assert expected in message
    assert "\n\n" not in result.stderr.strip()


def test_outside_a_project_the_error_says_where_to_run(tmp_path: Path) -> None:
    result = run("plan", cwd=tmp_path)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "No Pulumi project found" in message
    assert "or pass --project DIR" in message


def test_synth_prints_every_resource_with_type_name_parent_inputs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["synth", "--project", str(PROJECT), "--set", "rollout.stage=2"]) == 0
    graph = json.loads(capsys.readouterr().out)
    assert graph["stack"] == "prod"
    resources = graph["resources"]
    assert len(resources) > 40
    for resource in resources:
        assert {"type", "name", "parent", "inputs"} <= resource.keys()
    urns = {r["urn"] for r in resources}
    assert all(
        r["parent"] in urns or r["parent"].endswith("pulumi:pulumi:Stack::weightshift-prod")
        for r in resources
    )
    assert graph["outputs"]["rollout"]["weights"] == {"blue": 950, "green": 50, "mirror": 0}


def test_synth_writes_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "graph.json"
    assert main(["synth", "--project", str(PROJECT), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["outputs"]["rollout"]["stage"] == 0


def test_plan_shows_every_stage_and_that_only_the_listener_changes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plan", "--project", str(PROJECT), "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert len(stages) == 6
    assert stages[0]["current"]
    for stage in stages[1:]:
        assert "traffic-https" in {change["name"] for change in stage["changes"]}
        others = {change["name"] for change in stage["changes"]} - {"traffic-https", "green"}
        assert others == ({"rollback"} if stage["stage"] == 1 else set())
    assert stages[1]["percent"] == {"blue": 99.0, "green": 1.0, "mirror": 0.0}
    assert main(["plan", "--project", str(PROJECT)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "~ CompositeAlarm rollback: actionsEnabled false → true" in text


def test_plan_json_lists_weights_and_changes(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["plan", "--project", str(PROJECT), "--json", "--set", "rollout.strategy=blue-green"])
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert [s["percent"]["green"] for s in plan["stages"]] == [0, 100]
    changes = {
        (c["type"], c["name"]): (c["action"], c["keys"]) for c in plan["stages"][1]["changes"]
    }
    assert changes == {
        ("aws:lb/listener:Listener", "traffic-https"): ("update", ["defaultActions"]),
        ("aws:cloudwatch/compositeAlarm:CompositeAlarm", "rollback"): (
            "update",
            ["actionsEnabled"],
        ),
        # The standby's stage marker: pulumi-kubernetes checks it is ready before the switch.
        ("kubernetes:apps/v1:Deployment", "green"): ("update", ["metadata"]),
    }
    # 6 replicas, one at a time: node 600 s, image 300 s, bundle 1 s, load 1800 s, ready 60 s.
    assert plan["rolloutBudgets"]["green"]["seconds"] == 6 * 2761


def test_plan_marks_stages_this_config_cannot_reach(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--project", str(PROJECT), "--json", "--set", "green.replicas=0"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["stages"][0]["blocked"] is None
    assert all("which has 0 replicas" in s["blocked"] for s in plan["stages"][1:])


def test_policy_check_passes_prod_and_fails_a_weakened_stack() -> None:
    assert run("policy", "check").returncode == 0
    weak = run("policy", "check", "--set", "traffic.deregistrationDelaySeconds=5")
    assert weak.returncode == 1
    assert "[mandatory] target-group-drains: TargetGroup traffic-blue" in weak.stdout
    assert "[mandatory] target-group-drains: TargetGroup traffic-mirror" in weak.stdout
    assert "3 mandatory and 0 advisory violation(s)" in weak.stdout


def test_plan_in_parallel_workers_equals_the_serial_plan() -> None:
    # A fresh single-threaded process forks one worker per core; WEIGHTSHIFT_SERIAL does not.
    parallel = run("plan", "--json")
    serial = subprocess.run(
        [sys.executable, "-m", "weightshift.cli", "plan", "--json"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "WEIGHTSHIFT_SERIAL": "1"},
    )
    assert parallel.returncode == serial.returncode == 0, parallel.stderr + serial.stderr
    assert json.loads(parallel.stdout) == json.loads(serial.stdout)
    assert len(json.loads(parallel.stdout)["stages"]) == 6


@pytest.mark.parametrize(
    "argv", [["rollout", "--help"], ["rollout", "abort", "--help"], ["rollout", "finish", "--help"]]
)
def test_every_rollout_help_prints(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A `%` in help text once crashed argparse's formatting of `rollout --help`."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    assert "usage: weightshift rollout" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- config\n- more\n", "Pulumi.broken.yaml: the document is a list, not a mapping"),
        ("just words\n", "Pulumi.broken.yaml: the document is a string, not a mapping"),
        ("config: [a, b]\n", "Pulumi.broken.yaml: `config:` is a list"),
        (
            "config:\n  weightshift:rollout:\n    stage: 1\n  weightshift:rollout:\n    stage: 2\n",
            "key 'weightshift:rollout' is given twice in one mapping (first on line 2)",
        ),
        (
            "config:\n  weightshift:rollout:\n    stage: 1\n    stage: 2\n",
            "key 'stage' is given twice in one mapping (first on line 3)",
        ),
    ],
)
def test_a_stack_file_of_the_wrong_shape_is_one_paragraph(
    tmp_path: Path, text: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("Pulumi.yaml", "__main__.py"):
        (tmp_path / name).write_text((PROJECT / name).read_text())
    (tmp_path / "Pulumi.broken.yaml").write_text(text)
    assert main(["synth", "--project", str(tmp_path), "--stack", "broken"]) == 2
    err = capsys.readouterr().err
    assert expected in " ".join(err.split())
    assert "Traceback" not in err


def test_policy_check_reports_each_violation_once_with_the_stages_it_is_in(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["policy", "check", "--project", str(PROJECT)]) == 0
    out = capsys.readouterr().out
    assert "0 mandatory and 0 advisory violation(s) over 10 stage(s) of 3 strategy(ies)" in out
    assert "not checked" not in out
    assert main(["policy", "check", "--project", str(PROJECT), "--set", "rollback.onCall=[]"]) == 1
    lines = capsys.readouterr().out.splitlines()
    (violation,) = [line for line in lines if line.startswith("[mandatory]")]
    assert "on-call-topic-subscribed" in violation
    assert violation.endswith(
        "(at canary 0, canary 1, canary 2, canary 3, canary 4, canary 5, blue-green 0, "
        "blue-green 1, shadow 0, shadow 1)"
    )


def test_plan_never_forks_beside_a_thread_python_does_not_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A synthesis leaves gRPC's C-core threads behind, invisible to ``threading``; a child
    forked beside them can hang on a lock one of them held. Raw OS threads count."""
    import _thread
    import multiprocessing
    import threading

    import weightshift.preview.plan as plan_module

    release = threading.Lock()
    release.acquire()
    started = threading.Event()
    raw: list[int] = []

    def hold() -> None:
        raw.append(threading.get_ident())
        started.set()
        release.acquire()

    _thread.start_new_thread(hold, ())
    started.wait(5)
    try:
        assert raw[0] not in {t.ident for t in threading.enumerate()}  # Python does not list it
        assert plan_module._os_threads() >= 2  # the kernel does

        def no_fork(method: str) -> Any:
            raise AssertionError(f"forked ({method}) beside another thread")

        monkeypatch.setattr(multiprocessing, "get_context", no_fork)
        plan = plan_module.build_plan(PROJECT, "prod")
        assert len(plan.rows) == 6
    finally:
        release.release()


@pytest.mark.parametrize("command", ["show", "verify", "pull"])
def test_a_malformed_id_is_said_before_a_missing_bucket(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cheap check first: `bundle show notanid` with no bucket names the id."""
    monkeypatch.delenv("WEIGHTSHIFT_BUCKET", raising=False)
    args = ["bundle", command, "notanid", *(["/tmp/never-written"] if command == "pull" else [])]
    assert main(args) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "'notanid' is not a bundle id" in error
    assert "No bucket" not in error


def test_an_aws_refusal_is_one_paragraph_exit_2_naming_the_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from botocore.exceptions import ClientError

    from weightshift.cli import gates

    def refused(args: Any) -> int:
        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "not authorized to GetMetricData."}},
            "GetMetricData",
        )

    monkeypatch.setattr(gates, "cmd_gates_stage", refused)
    assert main(["gates", "stage", "--since", "2026-12-01T00:00:00Z"]) == 2
    err = capsys.readouterr().err
    assert "AWS refused GetMetricData: AccessDenied: not authorized to GetMetricData." in err
    assert "Traceback" not in err


def test_promote_passes_its_shadow_report_to_the_rollout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from weightshift.cli import rollout as rollout_cli

    seen: dict[str, Any] = {}

    class Recording:
        def promote(self, **options: Any) -> str:
            seen.update(options)
            return "promoted"

    monkeypatch.setattr(rollout_cli, "_rollout", lambda args: Recording())
    assert main(["rollout", "promote", "--shadow-report", "report.json"]) == 0
    assert seen["shadow_report"] == Path("report.json")
    assert capsys.readouterr().out.strip() == "promoted"
