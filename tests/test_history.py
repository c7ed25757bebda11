"""A stack's history: its updates (a fake Automation API backend) merged in time order with
the incident records and acks in the (moto) incident bucket."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.alb_world import ALARM, BUCKET, CANDIDATE, PARAMETER, World, alarm_event
from tests.test_rollout import FakeBackend, PassingMetrics
from weightshift.lambdas import rollback as rollback_function
from weightshift.rollout.commands import AwsView, Rollout, RolloutError, Update
from weightshift.rollout.history import COLUMNS, build_history, rows, stack_history, to_json

PREFIX = "incidents/support-assistant/prod"
DAY = datetime(2026, 11, 25, tzinfo=UTC)


class Clock:
    """The time of every party: the backend's updates, the commands, the function."""

    def __init__(self) -> None:
        self.now = DAY

    def __call__(self) -> datetime:
        return self.now

    def at(self, hour: int, minute: int = 0, second: int = 0) -> None:
        self.now = DAY.replace(hour=hour, minute=minute, second=second)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    found = Clock()
    monkeypatch.setattr(rollback_function, "_now", lambda: found.now.isoformat(timespec="seconds"))
    return found


@pytest.fixture
def backend(world: World, clock: Clock) -> FakeBackend:
    backend = FakeBackend(AwsView(), world)
    backend.clock = clock
    earlier = backend.config()
    before_rollouts = {k: v for k, v in earlier.items() if k != "weightshift:rollout"}
    backend.updates = [
        Update(
            "update", "succeeded", "first deploy", DAY - timedelta(days=9), None, before_rollouts
        ),
        Update(
            "update",
            "succeeded",
            "weightshift rollout finish: v1.4.2 is stable",
            DAY - timedelta(days=3, minutes=5),
            DAY - timedelta(days=3),
            earlier,
        ),
        Update("preview", "succeeded", "", DAY - timedelta(days=2), DAY - timedelta(days=2), {}),
        Update("update", "failed", "typo", DAY - timedelta(days=1), DAY - timedelta(days=1), {}),
    ]
    backend.updated_at = DAY - timedelta(days=3)
    return backend


@pytest.fixture
def rollout(backend: FakeBackend, clock: Clock) -> Rollout:
    return Rollout("prod", backend, AwsView(metrics=PassingMetrics()), now=clock)


def deploy_stage_1(world: World) -> None:
    """What `pulumi up` at stage 1 does to the (emulated) listener: green 1 %."""
    world.elbv2.modify_listener(
        ListenerArn=world.listener,
        DefaultActions=[
            {
                "Type": "forward",
                "ForwardConfig": {
                    "TargetGroups": [
                        {"TargetGroupArn": world.stable, "Weight": 990},
                        {"TargetGroupArn": world.candidate, "Weight": 10},
                    ]
                },
            }
        ],
    )


def test_updates_incidents_rollbacks_and_acks_in_time_order(
    rollout: Rollout, backend: FakeBackend, world: World, clock: Clock
) -> None:
    clock.at(8)
    rollout.promote()
    clock.at(9)
    rollout.promote()
    # The composite alarm fires at 09:12:03.118 (alarm_event); the function acts a second on.
    clock.at(9, 12, 4)
    assert rollback_function.handler(alarm_event(), None)["action"] == "rolled-back"
    clock.at(10)
    rollout.ack()
    clock.at(10, 5)
    backend.up("after the review of the errors")
    clock.at(11)
    rollout.promote()
    deploy_stage_1(world)
    clock.at(11, 30)
    manual = rollout.abort("customer reports of wrong answers")
    user = getpass.getuser()

    events = build_history(backend, AwsView(), "support-assistant", "prod", BUCKET)

    assert [(e.time, e.kind.value, e.by) for e in events] == [
        (DAY - timedelta(days=9), "stage", None),
        (DAY - timedelta(days=3), "stage", None),
        (DAY.replace(hour=8), "stage", None),
        (DAY.replace(hour=9), "stage", None),
        (DAY.replace(hour=9, minute=12, second=3, microsecond=118000), "incident", None),
        (DAY.replace(hour=9, minute=12, second=4), "rollback", "rollback function"),
        (DAY.replace(hour=10), "ack", user),
        (DAY.replace(hour=10, minute=5), "stage", None),
        (DAY.replace(hour=11), "stage", None),
        (DAY.replace(hour=11, minute=30), "incident", user),
        (DAY.replace(hour=11, minute=30), "rollback", user),
    ]
    details = [e.detail for e in events]
    # An update from before the rollout config has only its message.
    assert details[0] == "first deploy"
    assert (
        details[1]
        == "weightshift rollout finish: v1.4.2 is stable: canary stage 0, green serves 0 %"
    )
    assert details[2] == "weightshift rollout promote to stage 1: canary stage 1, green serves 1 %"
    assert details[3] == "weightshift rollout promote to stage 2: canary stage 2, green serves 5 %"
    first = events[4].facts["incident"]
    assert details[4].startswith(f"incident {first}: {ALARM} went to ALARM (")
    assert "green-errors transitioned to ALARM" in details[4]
    assert details[5] == f"{CANDIDATE} (green) rolled back at stage 2: all traffic to blue"
    assert details[6].startswith(f"incident {first} acknowledged ({CANDIDATE})")
    assert details[7] == "after the review of the errors: canary stage 0, green serves 0 %"
    assert details[9] == (
        f"incident {manual.incident}: manual abort by {user}: customer reports of wrong answers"
    )
    assert details[10] == f"{CANDIDATE} (green) rolled back at stage 1: all traffic to blue"
    assert events[6].facts["record"] == f"s3://{BUCKET}/{PREFIX}/{first}.ack.json"
    assert events[3].facts["weights"] == {"blue": 950, "green": 50, "mirror": 0}
    assert events[3].facts["candidateVersion"] == CANDIDATE

    document = json.loads(json.dumps(to_json(events)))
    assert [e["kind"] for e in document][:3] == ["stage", "stage", "stage"]
    assert document[6] == {
        "time": "2026-11-25T10:00:00+00:00",
        "kind": "ack",
        "detail": details[6],
        "by": user,
        "incident": first,
        "record": f"s3://{BUCKET}/{PREFIX}/{first}.ack.json",
        "candidate": CANDIDATE,
    }
    table = rows(events)
    assert all(len(row) == len(COLUMNS) for row in table)
    assert table[6] == ["2026-11-25 10:00:00", "ack", details[6], user]
    # The command reads the model and bucket off the stack itself.
    assert stack_history("prod", backend, AwsView()) == events


def test_the_ack_is_an_object_locked_conditional_create_beside_the_incident(
    rollout: Rollout, backend: FakeBackend, world: World, clock: Clock
) -> None:
    clock.at(9, 12, 4)
    incident = rollback_function.handler(alarm_event(), None)["incident"]
    clock.at(10)
    rollout.ack()
    key = f"{PREFIX}/{incident}.ack.json"
    head = world.s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head.get("ChecksumSHA256")
    ack = json.loads(world.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert ack == {
        "incident": incident,
        "candidate": CANDIDATE,
        "by": getpass.getuser(),
        "at": "2026-11-25T10:00:00+00:00",
        "stack": "prod",
        "configuredStage": 0,
    }
    # An ack run again (its first run failed after writing) finds it and goes on.
    assert AwsView().put_ack(BUCKET, key, {"incident": incident}) is False


def test_an_ack_that_cannot_be_recorded_keeps_the_rollback_record(
    rollout: Rollout, backend: FakeBackend, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollback_function.handler(alarm_event(), None)
    # The deployed function's settings name a bucket this identity cannot write to.
    monkeypatch.setitem(world.env, "INCIDENT_BUCKET", "gone")
    with pytest.raises(RolloutError, match=r"cannot record the acknowledgement at s3://gone/"):
        rollout.ack()
    assert world.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"]
    assert backend.values["weightshift:rollout"]["stage"] == 0


def test_other_stacks_and_unreadable_records(backend: FakeBackend, world: World) -> None:
    for key, body in (
        ("incidents/support-assistant/prod-eu/0123.json", b'{"incident": "0123"}'),
        (f"{PREFIX}/broken.json", b"{not json"),
        (f"{PREFIX}/notes.txt", b"a note beside the records"),
    ):
        world.s3.put_object(Bucket=BUCKET, Key=key, Body=body, ChecksumAlgorithm="SHA256")
    backend.updates = []
    (event,) = build_history(backend, AwsView(), "support-assistant", "prod", BUCKET)
    assert event.kind.value == "incident"
    assert event.detail.startswith(
        f"unreadable record s3://{BUCKET}/{PREFIX}/broken.json: not JSON"
    )


def test_a_bucket_that_cannot_be_read_says_what_is_needed(backend: FakeBackend) -> None:
    with pytest.raises(
        RolloutError,
        match=r"s3://nowhere/incidents/support-assistant/prod/.*"
        r"s3:ListBucket and s3:GetObject",
    ):
        build_history(backend, AwsView(), "support-assistant", "prod", "nowhere")


def test_the_history_command_prints_a_table_or_json(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from weightshift import cli
    from weightshift.cli import rollout as rollout_commands
    from weightshift.rollout import commands as rollout

    monkeypatch.setattr(rollout, "AutomationBackend", lambda project, stack: backend)
    monkeypatch.setattr(rollout_commands, "project_arg", lambda args: None)
    monkeypatch.setattr(rollout_commands, "_view", lambda args: rollout.AwsView())
    assert cli.main(["rollout", "history", "--json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert next(e["detail"] for e in events if e["kind"] == "stage") == "first deploy"
    monkeypatch.setenv("COLUMNS", "100")
    assert cli.main(["rollout", "history"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["time", "(UTC)", "kind", "detail", "by"]
    assert max(len(line) for line in out.splitlines()) <= 100
