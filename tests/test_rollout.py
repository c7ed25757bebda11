"""The rollout commands over a fake Automation API backend (the program synthesized offline
on every `up`) and moto for CloudWatch, SSM and the load balancer."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import boto3
import pytest

from tests.alb_world import PARAMETER, REGION, World, forward
from tests.conftest import PROJECT
from tests.test_gates_stage import answers, colour_periods
from weightshift.cli import main
from weightshift.preview.plan import diff
from weightshift.preview.synth import Graph, stack_config, synthesize
from weightshift.rollout.commands import AutomationBackend, AwsView, Rollout, RolloutError, Update
from weightshift.stages import Colour

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class FakeBackend:
    """The stack as the Automation API would show it: `up` runs the real program offline,
    reading the rollback record from (emulated) SSM as the program does."""

    def __init__(self, view: AwsView, world: World) -> None:
        self.values: dict[str, Any] = stack_config(PROJECT, "prod")
        self.view = view
        self.world = world
        self.ups: list[str] = []
        self.updated_at: datetime | None = NOW - timedelta(days=3)
        self.clock: Callable[[], datetime] = lambda: NOW
        self.updates: list[Update] = []
        self.graph = self._synth()

    def _synth(self) -> Graph:
        return synthesize(PROJECT, "prod", self.values, record=self.view.record(PARAMETER))

    def config(self) -> dict[str, Any]:
        return copy.deepcopy(self.values)

    def set_config(self, key: str, value: Any) -> None:
        self.values[key] = copy.deepcopy(value)

    def up(self, message: str) -> str:
        graph = self._synth()
        changes = diff(self.graph, graph)
        self.graph = graph
        self.ups.append(message)
        self.updated_at = self.clock()
        self.updates.append(
            Update("update", "succeeded", message, self.updated_at, self.updated_at, self.config())
        )
        return f"{len(changes)} changed"

    def outputs(self) -> dict[str, Any]:
        outputs = copy.deepcopy(self.graph.outputs)
        # The deployed function's settings point at the (emulated) real resources.
        outputs["rollback"]["settings"] = {
            **outputs["rollback"]["settings"],
            **self.world.env,
            "ALARM_NAME": outputs["rollback"]["compositeAlarm"],
        }
        outputs["rollback"]["onCallTopic"] = self.world.env["TOPIC_ARN"]
        return outputs

    def last_update(self) -> datetime | None:
        return self.updated_at

    def history(self) -> list[Update]:
        return self.updates[::-1]


class PassingMetrics:
    """GetMetricData for two healthy colours, in the gateways' format: a million requests
    each over any window, at the same rates, so every stage gate passes."""

    def get_metric_data(self, **request: Any) -> dict[str, Any]:
        healthy = colour_periods(1, 1_000_000, errors=0.01)
        pages = answers(request["StartTime"], {Colour.GREEN: healthy, Colour.BLUE: healthy}, 8)
        return pages[1] if request.get("NextToken") else pages[0]


@pytest.fixture
def backend(world: World) -> FakeBackend:
    return FakeBackend(AwsView(), world)


def ok_alarms(backend: FakeBackend) -> None:
    """Every alarm of the stack exists (moto) and is OK."""
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    for name in backend.outputs()["rollback"]["alarms"]:
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            MetricName="RequestCount",
            Namespace="AWS/ApplicationELB",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="LessThanThreshold",
        )
        cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="test")


@pytest.fixture
def rollout(backend: FakeBackend) -> Rollout:
    ok_alarms(backend)
    return Rollout("prod", backend, AwsView(metrics=PassingMetrics()), now=lambda: NOW)


def set_stage(backend: FakeBackend, stage: int, **rollout: Any) -> None:
    backend.values["weightshift:rollout"] = {
        **backend.values["weightshift:rollout"],
        "stage": stage,
        **rollout,
    }
    backend.graph = backend._synth()


def test_status_shows_stage_weights_alarms_and_readiness(rollout: Rollout) -> None:
    status = rollout.status()
    found = status.to_json()
    assert (found["strategy"], found["stage"], found["nextStage"]) == ("canary", 0, 1)
    assert found["weights"] == {"blue": 999, "green": 0, "mirror": 0}
    assert set(found["alarms"].values()) <= {"OK", "MISSING"}
    assert found["blockers"] == []
    assert found["rollbackRecord"] is None
    assert found["onCallSubscriptions"] == 1
    assert "promote to 1: ready" in status.render()
    assert "weights: blue 100 %" in status.render()  # a lone 999 is all traffic


def test_status_shows_shares_of_traffic_not_tenths_of_weight(
    rollout: Rollout, backend: FakeBackend
) -> None:
    rollout.promote()
    assert "weights: blue 99 %, green 1 %" in rollout.status().render()


def test_status_says_which_alarms_have_no_data_to_judge(
    rollout: Rollout, backend: FakeBackend
) -> None:
    """The quality and safety metrics have no emitter yet: their alarms sit in
    INSUFFICIENT_DATA, and status says the stage is not judged by them."""
    name = backend.outputs()["rollback"]["alarms"][2]
    boto3.client("cloudwatch", region_name=REGION).set_alarm_state(
        AlarmName=name, StateValue="INSUFFICIENT_DATA", StateReason="no datapoints"
    )
    status = rollout.status()
    assert status.blockers == []
    (note,) = status.notes
    assert note.startswith(f"no data, so not judging this stage: {name}")
    assert f"note: {note}" in " ".join(status.render().split())


def unconfirmed(backend: FakeBackend, calls: int) -> Rollout:
    """A rollout whose on-call topic has only a pending email subscription: it pages nobody
    until its owner confirms it."""
    from botocore.stub import Stubber

    sns = boto3.client("sns", region_name=REGION)
    topic = backend.outputs()["rollback"]["onCallTopic"]
    stubber = Stubber(sns)
    pending = {
        "SubscriptionArn": "PendingConfirmation",
        "Owner": "210987654321",
        "Protocol": "email",
        "Endpoint": "ml-platform-oncall@example.com",
        "TopicArn": topic,
    }
    for _ in range(calls):
        stubber.add_response(
            "list_subscriptions_by_topic", {"Subscriptions": [pending]}, {"TopicArn": topic}
        )
    stubber.activate()
    return Rollout("prod", backend, AwsView(sns=sns), now=lambda: NOW)


def test_promote_refuses_while_nobody_would_be_paged(
    rollout: Rollout, backend: FakeBackend
) -> None:
    paged_by_nobody = unconfirmed(backend, calls=2)
    assert paged_by_nobody.status().on_call == 0
    with pytest.raises(RolloutError, match="nobody would be paged: the on-call topic"):
        paged_by_nobody.promote()
    assert backend.ups == []


def test_finish_and_release_refuse_while_nobody_would_be_paged(
    rollout: Rollout, backend: FakeBackend
) -> None:
    """After finish the rollback still acts (a late regression during the hold): it must
    page someone, so neither finish nor release goes ahead without a confirmed subscription."""
    set_stage(backend, 5)
    with pytest.raises(RolloutError, match="not finishing: nobody would be paged"):
        unconfirmed(backend, calls=1).finish()
    assert backend.values["weightshift:rollout"]["candidate"] == "green"
    rollout.finish()
    ups = list(backend.ups)
    with pytest.raises(RolloutError, match="not releasing: nobody would be paged"):
        unconfirmed(backend, calls=1).release(early=True)
    assert backend.ups == ups
    assert backend.values["weightshift:rollout"]["hold"].get("released") is not True


def test_promote_moves_exactly_one_stage_and_deploys(
    rollout: Rollout, backend: FakeBackend
) -> None:
    message = rollout.promote()
    assert message.startswith("promoted to stage 1: ")
    assert backend.values["weightshift:rollout"]["stage"] == 1
    assert backend.ups == ["weightshift rollout promote to stage 1"]
    assert backend.graph.outputs["rollout"]["weights"] == {"blue": 990, "green": 10, "mirror": 0}


def test_promote_waits_for_the_stage_to_bake(rollout: Rollout, backend: FakeBackend) -> None:
    rollout.promote()
    with pytest.raises(RolloutError, match=r"stage 1 bakes for 1 h 00 min more"):
        rollout.promote()
    assert rollout.promote(ignore_bake=True).startswith("promoted to stage 2")


def test_promote_refuses_while_an_alarm_is_in_alarm(rollout: Rollout, backend: FakeBackend) -> None:
    name = backend.outputs()["rollback"]["alarms"][0]
    boto3.client("cloudwatch", region_name=REGION).set_alarm_state(
        AlarmName=name, StateValue="ALARM", StateReason="p99 too high"
    )
    with pytest.raises(RolloutError, match=f"alarm\\(s\\) in ALARM: {name}"):
        rollout.promote()
    assert backend.ups == []


def test_abort_rolls_back_by_the_functions_path_and_nothing_undoes_it(
    rollout: Rollout, backend: FakeBackend, world: World
) -> None:
    set_stage(backend, 3)
    outcome = rollout.abort("customer reports of wrong answers")
    assert outcome.action == "rolled-back"
    assert forward(world) == {"weights": {world.stable: 999, world.candidate: 0}, "sticky": False}
    status = rollout.status()
    assert status.record is not None
    assert "manual abort by" in status.record.reason
    with pytest.raises(RolloutError, match="a rollback record exists"):
        rollout.promote(ignore_bake=True)
    # The next deploy, at the configured stage 3, keeps stable at 100 %.
    backend.up("an unrelated change")
    assert backend.graph.outputs["rollout"]["weights"] == {"blue": 999, "green": 0, "mirror": 0}
    assert backend.graph.outputs["rollout"]["rolledBack"] is True
    # A second abort is the same incident.
    assert rollout.abort("again").action == "already"


def test_ack_returns_the_config_to_stage_0_then_clears_the_record(
    rollout: Rollout, backend: FakeBackend, world: World
) -> None:
    set_stage(backend, 2)
    with pytest.raises(RolloutError, match="no rollback record"):
        rollout.ack()
    rollout.abort("bad canary")
    message = rollout.ack()
    assert "acknowledged incident" in message
    assert backend.values["weightshift:rollout"]["stage"] == 0
    assert world.ssm.describe_parameters()["Parameters"] == []
    backend.up("after ack")
    assert backend.graph.outputs["rollout"]["weights"] == {"blue": 999, "green": 0, "mirror": 0}
    assert backend.graph.outputs["rollout"]["rolledBack"] is False


def test_finish_swaps_the_roles_at_the_last_stage_only(
    rollout: Rollout, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RolloutError, match="not the last stage"):
        rollout.finish()
    set_stage(backend, 5)
    with pytest.raises(RolloutError, match="is the last stage of canary"):
        rollout.promote()
    message = rollout.finish()
    assert message.startswith("green is now the stable colour")
    assert backend.values["weightshift:rollout"]["candidate"] == "blue"
    assert backend.values["weightshift:rollout"]["stage"] == 0
    # Green keeps all traffic: finishing moves no request.
    assert backend.graph.outputs["rollout"]["weights"] == {"blue": 0, "green": 999, "mirror": 0}
    assert backend.graph.outputs["rollout"]["stable"] == "green"
    # Blue, the old stable colour, is held warm at full size for rollout.capacity.holdHours.
    hold = backend.values["weightshift:rollout"]["hold"]
    assert hold["version"] == "support-assistant/v1.4.2-424ef6470390"
    assert datetime.fromisoformat(hold["until"]) == NOW + timedelta(hours=24)
    assert "keeps support-assistant/v1.4.2-424ef6470390 warm until" in message
    assert backend.graph.outputs["inference"]["blue"]["replicas"] == 6
    # Release is refused within the hold, then scales blue to zero; green serves everything.
    with pytest.raises(RolloutError, match="held until 2026-11-26 12:00 UTC"):
        rollout.release()
    monkeypatch.setattr(rollout, "now", lambda: NOW + timedelta(hours=24, seconds=1))
    assert rollout.release().startswith("released support-assistant/v1.4.2-424ef6470390 (blue)")
    assert backend.values["weightshift:rollout"]["hold"]["released"] is True
    assert backend.graph.outputs["inference"]["blue"]["replicas"] == 0
    with pytest.raises(RolloutError, match="already released"):
        rollout.release()
    assert backend.graph.outputs["inference"]["green"]["replicas"] == 6
    assert backend.graph.outputs["rollout"]["weights"] == {"blue": 0, "green": 999, "mirror": 0}


def test_a_shadow_rollout_mirrors_and_never_finishes(
    rollout: Rollout, backend: FakeBackend
) -> None:
    set_stage(backend, 0, strategy="shadow")
    assert backend.graph.outputs["rollout"]["weights"]["mirror"] == 0
    rollout.promote(ignore_bake=True)
    assert backend.values["weightshift:rollout"]["stage"] == 1
    weights = backend.graph.outputs["rollout"]["weights"]
    # The stable colour serves every request; the mirror listener gets its copy.
    assert weights["mirror"] > 0
    assert weights[backend.values["weightshift:rollout"]["candidate"]] == 0
    with pytest.raises(RolloutError, match="never serves the candidate at 100 %"):
        rollout.finish()


@pytest.mark.skipif(shutil.which("pulumi") is not None, reason="the Pulumi CLI is installed")
def test_without_the_pulumi_cli_the_commands_say_what_is_needed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(RolloutError, match="need the Pulumi CLI on PATH"):
        AutomationBackend(PROJECT, "prod")
    assert main(["rollout", "status"]) == 2
    assert "need the Pulumi CLI on PATH" in " ".join(capsys.readouterr().err.split())


@pytest.mark.skipif(
    shutil.which("pulumi") is None or not os.environ.get("WEIGHTSHIFT_LIVE_STACK"),
    reason="needs the Pulumi CLI, AWS credentials and WEIGHTSHIFT_LIVE_STACK (a deployed stack)",
)
def test_the_automation_backend_reads_a_real_stack() -> None:
    stack = os.environ["WEIGHTSHIFT_LIVE_STACK"]
    backend = AutomationBackend(PROJECT, stack)
    status = Rollout(stack, backend, AwsView()).status()
    assert status.config.model == backend.config()["weightshift:model"]
    assert "rollout" in backend.outputs()


def test_a_failed_pulumi_command_is_one_paragraph_and_exit_2(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed `pulumi up` (or an unknown stack) reaches the operator as the end of the
    CLI's standard error, exit status 2, not as a traceback with exit status 1."""
    from pulumi import automation as auto
    from pulumi.automation._cmd import CommandResult

    from weightshift.rollout import commands as rollout_module

    class Failing:
        def get_all_config(self) -> Any:
            raise auto.CommandError(
                CommandResult(
                    stdout="Updating (prod)\n" * 50,
                    stderr="error: update failed\nerror: the stack is locked by another update\n",
                    code=255,
                )
            )

    backend = object.__new__(AutomationBackend)
    backend._auto = auto
    backend.name = "prod"
    backend.stack = cast(Any, Failing())
    with pytest.raises(RolloutError) as raised:
        backend.config()
    assert str(raised.value) == (
        "pulumi failed while reading the config of stack prod: error: update failed "
        "error: the stack is locked by another update"
    )
    monkeypatch.setattr(rollout_module, "AutomationBackend", lambda project, stack: backend)
    assert main(["rollout", "status", "--project", str(PROJECT)]) == 2
    err = capsys.readouterr().err
    assert "the stack is locked by another update" in " ".join(err.split())
    assert "Traceback" not in err
