"""`weightshift rollout advance`: the stage gate decides and the rollout acts, on the fake
Automation API backend, moto (the listener, SSM, the incident bucket, the on-call topic)
and GetMetricData answers in the gateways' format for exactly the stage's window."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from tests.alb_world import BUCKET, REGION, World, forward, incidents, published
from tests.test_rollout import NOW
from tests.test_rollout_gate import (
    FIVE_HOURS_AGO,
    ONE_HOUR_AGO,
    Recording,
    at_stage,
    backend,
    cli,
    decisions,
    doubled_errors,
    healthy,
    metrics_client,
    rollout,
)
from weightshift.rollout.advance import Action, advance

__all__ = ["backend"]  # the fixture, shared with tests/test_rollout_gate.py


def test_pass_promotes_and_the_next_run_waits_on_the_new_stages_fresh_window(
    backend: Recording, world: World
) -> None:
    at_stage(backend, 2, FIVE_HOURS_AGO)
    client, stubber = metrics_client(
        (FIVE_HOURS_AGO, NOW, healthy(300, per_minute=24_000)),
        # The second run: stage 3 started at NOW (the promote's update); one second of it.
        (NOW - timedelta(seconds=1), NOW, healthy(0)),
    )
    first = advance(rollout(backend, client))
    assert first.action is Action.PROMOTED
    assert first.exit_code == 0
    assert first.line.startswith("stack prod: stage 2 gate passed (360,000 candidate requests")
    assert "promoted to stage 3" in first.line
    assert backend.ups == ["weightshift rollout promote to stage 3"]
    second = advance(rollout(backend, client))
    assert second.action is Action.WAITING
    assert second.exit_code == 0
    assert second.line.startswith("stack prod: stage 3 gate inconclusive, waiting: ")
    assert "the stage bakes for 24 h 00 min more" in second.line
    assert backend.ups == ["weightshift rollout promote to stage 3"]
    stubber.assert_no_pending_responses()
    assert decisions(world) == {}


def test_fail_aborts_by_the_rollback_path_records_the_decision_then_stops(
    backend: Recording, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the scheduled workflow: the decision names the run that made it."""
    for name, value in {
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "example/weightshift",
        "GITHUB_RUN_ID": "4242",
    }.items():
        monkeypatch.setenv(name, value)
    at_stage(backend, 3, FIVE_HOURS_AGO)  # 25 %, bakes 24 h: a failure needs no bake
    client, stubber = metrics_client(
        (FIVE_HOURS_AGO, NOW, doubled_errors(300, share=0.25, per_minute=1200))
    )
    result = advance(rollout(backend, client))
    assert result.action is Action.ABORTED
    assert result.exit_code == 1
    assert result.line.startswith("stack prod: stage 3 gate failed (errors: candidate 0.02")
    assert "rolled back to blue (incident " in result.line
    assert ", on-call paged" in result.line
    # The rollback function's path: stable 100 %, the record, the page, the incident record.
    assert forward(world) == {"weights": {world.stable: 999, world.candidate: 0}, "sticky": False}
    record = json.loads(
        world.ssm.get_parameter(Name=world.env["RECORD_PARAMETER"])["Parameter"]["Value"]
    )
    assert record["reason"].startswith("automatic abort by weightshift rollout advance")
    assert "stage 3 gate failed: errors:" in record["reason"]
    (page,) = published(world)
    assert page["incident"] == result.incident
    assert f"incidents/support-assistant/prod/{result.incident}.json" in incidents(world)
    ((key, document),) = decisions(world).items()
    assert result.decision_record == f"s3://{BUCKET}/{key}"
    assert (document["decision"], document["action"], document["command"]) == (
        "fail",
        "aborted",
        "advance",
    )
    assert [c["name"] for c in document["criteria"] if c["decision"] == "fail"] == ["errors"]
    assert document["run"] == "https://github.com/example/weightshift/actions/runs/4242"
    stubber.assert_no_pending_responses()
    # Run again: the record stops it; nothing more is rolled back, paged or recorded.
    again = advance(rollout(backend, client))
    assert again.action is Action.NOTHING
    assert again.exit_code == 0
    assert f"rolled back (incident {result.incident})" in again.line
    assert len(published(world)) == 1
    assert len(decisions(world)) == 1


def test_inconclusive_waits_and_says_how_long(backend: Recording, world: World) -> None:
    at_stage(backend, 1, ONE_HOUR_AGO)
    client, _ = metrics_client((ONE_HOUR_AGO, NOW, healthy(60, share=0.01, per_minute=600)))
    result = advance(rollout(backend, client))
    assert result.action is Action.WAITING
    assert result.exit_code == 0
    assert "the candidate needs about " in result.line
    assert "at its present 1.0% share, 6 requests/min" in result.line
    assert result.reading is not None
    wait = result.reading.wait()
    assert wait.requests is not None
    assert wait.duration == timedelta(seconds=wait.requests * 10)  # 0.1 request a second
    assert backend.ups == []
    assert decisions(world) == {}


def test_a_stage_still_baking_waits_even_on_passing_evidence(backend: Recording) -> None:
    at_stage(backend, 2, ONE_HOUR_AGO)
    client, _ = metrics_client((ONE_HOUR_AGO, NOW, healthy(60, per_minute=1_000_000)))
    result = advance(rollout(backend, client))
    assert result.action is Action.WAITING
    assert result.line.endswith("waiting: the stage bakes for 3 h 00 min more")
    assert backend.ups == []


@pytest.mark.parametrize(
    ("stage", "rollout_change", "said"),
    [
        (0, {}, "stage 0 gives the candidate no traffic"),
        (5, {}, "stage 5 is the last stage of canary"),
        (1, {"strategy": "shadow"}, "a shadow rollout serves nobody from the candidate"),
        (0, {"strategy": "blue-green"}, "stage 0 gives the candidate no traffic"),
    ],
)
def test_nothing_to_do_where_no_live_evidence_decides(
    backend: Recording, stage: int, rollout_change: dict[str, Any], said: str
) -> None:
    at_stage(backend, stage, FIVE_HOURS_AGO, **rollout_change)
    client, _ = metrics_client()  # no read expected: the Stubber refuses any
    result = advance(rollout(backend, client))
    assert result.action is Action.NOTHING
    assert result.exit_code == 0
    assert said in result.line
    assert backend.ups == []


def test_an_alarm_in_alarm_is_refused_not_decided(backend: Recording) -> None:
    at_stage(backend, 2, FIVE_HOURS_AGO)
    name = backend.outputs()["rollback"]["alarms"][0]
    boto3.client("cloudwatch", region_name=REGION).set_alarm_state(
        AlarmName=name, StateValue="ALARM", StateReason="errors"
    )
    client, _ = metrics_client()
    result = advance(rollout(backend, client))
    assert result.action is Action.REFUSED
    assert result.exit_code == 2
    assert f"alarm(s) in ALARM: {name}" in result.line
    assert backend.ups == []


def test_a_deployed_stage_ahead_of_the_stack_file_says_to_commit_it(backend: Recording) -> None:
    """The scheduled run promoted, and the stack file it wrote was not committed: the next
    run's checkout is a stage behind what is deployed."""
    at_stage(backend, 3, FIVE_HOURS_AGO)
    backend.values["weightshift:rollout"]["stage"] = 2  # the checkout's file
    client, _ = metrics_client()
    result = advance(rollout(backend, client))
    assert result.action is Action.REFUSED
    assert "the deployed stage is 3, ahead of the stack file's 2: commit the" in result.line
    assert backend.ups == []


def test_the_command_exits_on_the_outcome_and_json_is_alone_on_stdout(
    backend: Recording,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`pulumi up` prints its progress; with --json it goes to standard error."""
    at_stage(backend, 2, FIVE_HOURS_AGO)
    original = backend.up

    def noisy_up(message: str) -> str:
        print("Updating (prod)\n  ~ aws:lb:Listener traffic-https update")
        return original(message)

    monkeypatch.setattr(backend, "up", noisy_up)
    client, _ = metrics_client((FIVE_HOURS_AGO, NOW, healthy(300, per_minute=24_000)))
    assert cli(monkeypatch, backend, client, "advance", "--json") == 0
    captured = capsys.readouterr()
    found = json.loads(captured.out)
    assert (found["action"], found["stage"], found["nextStage"]) == ("promoted", 2, 3)
    assert found["decision"] == "pass"
    assert found["gate"]["counts"]["candidate"]["requests"] == 360_000
    assert "Updating (prod)" in captured.err


def test_the_command_exits_1_on_abort_and_3_when_the_evidence_cannot_be_read(
    backend: Recording,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    at_stage(backend, 2, FIVE_HOURS_AGO)
    denied = boto3.client("cloudwatch", region_name=REGION)
    stubber = Stubber(denied)
    stubber.add_client_error("get_metric_data", "AccessDenied", "not allowed", 403)
    stubber.activate()
    assert cli(monkeypatch, backend, denied, "advance") == 3
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("stack prod: stage 2 gate not decided: cannot read the gateways'")
    client, _ = metrics_client((FIVE_HOURS_AGO, NOW, doubled_errors(300)))
    assert cli(monkeypatch, backend, client, "advance") == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("stack prod: stage 2 gate failed (errors:")
    assert backend.ups == []
