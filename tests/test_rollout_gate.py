"""The stage gate inside `weightshift rollout promote` (and `--dry-run`): the fake Automation
API backend of tests/test_rollout.py, moto for the alarms, SSM and the incident bucket, and
botocore's Stubber for CloudWatch's GetMetricData (moto computes no PR(t:)), answering in
the gateways' own format (tests/test_gates_stage.py) for exactly the queries and the window
the gate must send: from the stage's start to now."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from tests.alb_world import BUCKET, REGION, World
from tests.conftest import PROJECT
from tests.test_gates_stage import answers, colour_periods
from tests.test_rollout import NOW, FakeBackend, ok_alarms, set_stage
from weightshift.cli import main
from weightshift.gates.stage import queries
from weightshift.rollout import commands as rollout_module
from weightshift.rollout.commands import AwsView, Rollout, RolloutError, Update, stage_start
from weightshift.rollout.history import build_history
from weightshift.stages import Colour

MODEL = "support-assistant"
LATENCY = 8.0  # Pulumi.prod.yaml: rollout.thresholds.latencyP99Seconds
DECISIONS = "incidents/support-assistant/prod/decisions/"
Colours = dict[Colour, dict[str, list[float]]]


def healthy(minutes: int, share: float = 0.05, per_minute: float = 1200) -> Colours:
    """Both colours at the same rates; the candidate (green) gets ``share`` of requests."""
    return {
        Colour.GREEN: colour_periods(minutes, per_minute * share, errors=0.01),
        Colour.BLUE: colour_periods(minutes, per_minute * (1 - share), errors=0.01),
    }


def doubled_errors(minutes: int, share: float = 0.05, per_minute: float = 1200) -> Colours:
    return {
        Colour.GREEN: colour_periods(minutes, per_minute * share, errors=0.02),
        Colour.BLUE: colour_periods(minutes, per_minute * (1 - share), errors=0.01),
    }


def metrics_client(*reads: tuple[datetime, datetime, Colours]) -> tuple[Any, Stubber]:
    """A CloudWatch client that answers each read (window and data) in turn, checking that
    the gate asks for exactly the gateways' queries over exactly that window."""
    client = boto3.client("cloudwatch", region_name=REGION)
    stubber = Stubber(client)
    wanted = queries(MODEL, LATENCY)
    for since, until, colours in reads:
        first, second = answers(since, colours, LATENCY)
        window = {"MetricDataQueries": wanted, "StartTime": since, "EndTime": until}
        stubber.add_response("get_metric_data", first, window)
        stubber.add_response("get_metric_data", second, {**window, "NextToken": "page-2"})
    stubber.activate()
    return client, stubber


def at_stage(backend: FakeBackend, stage: int, started: datetime, **rollout: Any) -> None:
    """The stack at ``stage`` (and ``rollout`` changes), deployed by an update that ended
    at ``started``."""
    set_stage(backend, stage, **rollout)
    message = f"weightshift rollout promote to stage {stage}"
    backend.updates.append(
        Update("update", "succeeded", message, started, started, backend.config())
    )


class Recording(FakeBackend):
    """The fake backend, counting every write: a dry run must make none."""

    def __init__(self, view: AwsView, world: World) -> None:
        super().__init__(view, world)
        self.writes: list[str] = []

    def set_config(self, key: str, value: Any) -> None:
        self.writes.append(key)
        super().set_config(key, value)


@pytest.fixture
def backend(world: World) -> Recording:
    found = Recording(AwsView(), world)
    ok_alarms(found)
    return found


def rollout(backend: FakeBackend, metrics: Any) -> Rollout:
    return Rollout("prod", backend, AwsView(metrics=metrics), now=lambda: NOW)


def decisions(world: World) -> dict[str, dict[str, Any]]:
    listed = world.s3.list_objects_v2(Bucket=BUCKET, Prefix=DECISIONS).get("Contents", [])
    return {
        item["Key"]: json.loads(world.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
        for item in listed
    }


FIVE_HOURS_AGO = NOW - timedelta(hours=5)
ONE_HOUR_AGO = NOW - timedelta(hours=1)


def test_a_failing_gate_refuses_says_to_abort_and_records_the_decision(
    backend: Recording, world: World
) -> None:
    """Stage 2 (5 %) baked 5 h; the candidate has twice the stable colour's errors."""
    at_stage(backend, 2, FIVE_HOURS_AGO)
    client, stubber = metrics_client(
        (FIVE_HOURS_AGO, NOW, doubled_errors(300)), (FIVE_HOURS_AGO, NOW, doubled_errors(300))
    )
    with pytest.raises(RolloutError) as refused:
        rollout(backend, client).promote()
    message = str(refused.value)
    assert message.startswith("not promoting to stage 3: the stage 2 gate failed: errors:")
    assert "`weightshift rollout abort" in message
    assert backend.ups == []
    assert backend.writes == []
    assert backend.values["weightshift:rollout"]["stage"] == 2
    ((key, document),) = decisions(world).items()
    assert key == f"{DECISIONS}20261125T120000Z-stage2-fail.json"
    assert f"s3://{BUCKET}/{key}" in message
    assert (document["decision"], document["action"], document["command"]) == (
        "fail",
        "refused",
        "promote",
    )
    assert document["window"] == {
        "since": FIVE_HOURS_AGO.isoformat(),
        "until": NOW.isoformat(),
        "seconds": 5 * 3600,
    }
    assert document["counts"]["candidate"]["colour"] == "green"
    assert document["counts"]["candidate"]["requests"] == 300 * 60
    assert document["counts"]["stable"]["requests"] == 300 * 1140
    assert document["counts"]["candidate"]["errors"] == pytest.approx(300 * 60 * 0.02)
    errors = next(c for c in document["criteria"] if c["name"] == "errors")
    assert errors["decision"] == "fail"
    assert errors["estimate"] == pytest.approx(2.0, rel=0.01)
    # Asked again at the same second: a second record beside the first, never over it.
    first = world.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with pytest.raises(RolloutError, match="stage 2 gate failed"):
        rollout(backend, client).promote()
    assert set(decisions(world)) == {key, key.replace(".json", "-2.json")}
    assert world.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == first
    stubber.assert_no_pending_responses()
    # The history shows both decisions, and reads neither as an incident.
    events = build_history(backend, AwsView(), MODEL, "prod", BUCKET)
    found = [e for e in events if e.kind.value in {"decision", "incident"}]
    assert [(e.kind.value, e.detail) for e in found] == [
        ("decision", "stage 2 gate fail (errors): promote refused")
    ] * 2


def test_an_inconclusive_gate_refuses_with_the_requests_and_time_still_needed(
    backend: Recording, world: World
) -> None:
    """An hour into stage 1 (1 %) at 600 requests a minute: 6 a minute reach the candidate,
    360 of the stage's 10,000; the bake (1 h) is over."""
    at_stage(backend, 1, ONE_HOUR_AGO)
    client, _ = metrics_client((ONE_HOUR_AGO, NOW, healthy(60, share=0.01, per_minute=600)))
    with pytest.raises(RolloutError) as refused:
        rollout(backend, client).promote()
    message = " ".join(str(refused.value).split())
    assert message.startswith("not promoting to stage 2: the stage 1 gate is inconclusive: ")
    needed = int(message.split("the candidate needs about ")[1].split(" more")[0].replace(",", ""))
    assert needed >= 10_000 - 360  # the stage's minimum, and the rates' own projection
    assert "at its present 1.0% share, 6 requests/min" in message
    # The time is that count at the candidate's present rate: 6 requests a minute.
    minutes = needed / 6
    assert f"about {int(minutes // 60)} h {int(minutes % 60):02d} min" in message
    assert "bakes" not in message
    assert backend.ups == []
    assert backend.writes == []
    assert decisions(world) == {}


def test_a_passing_gate_promotes_and_records_nothing_beside_the_update(
    backend: Recording, world: World
) -> None:
    at_stage(backend, 2, FIVE_HOURS_AGO)
    client, stubber = metrics_client((FIVE_HOURS_AGO, NOW, healthy(300, per_minute=24_000)))
    assert rollout(backend, client).promote().startswith("promoted to stage 3: ")
    assert backend.ups == ["weightshift rollout promote to stage 3"]
    assert backend.values["weightshift:rollout"]["stage"] == 3
    assert decisions(world) == {}
    stubber.assert_no_pending_responses()


def test_the_window_starts_where_the_stage_did_not_at_an_unrelated_update(
    backend: Recording,
) -> None:
    """A `pulumi up` for something else an hour ago does not restart stage 2's window
    (nor its bake): the gate reads from the update that deployed the stage."""
    at_stage(backend, 2, FIVE_HOURS_AGO)
    backend.updates.append(
        Update("update", "succeeded", "tags", ONE_HOUR_AGO, ONE_HOUR_AGO, backend.config())
    )
    backend.updates.append(Update("preview", "succeeded", "", NOW, NOW, {}))
    assert stage_start(backend.history(), rollout(backend, None)._config()) == FIVE_HOURS_AGO
    client, stubber = metrics_client((FIVE_HOURS_AGO, NOW, healthy(300, per_minute=24_000)))
    assert rollout(backend, client).promote().startswith("promoted to stage 3")
    stubber.assert_no_pending_responses()


def test_ignore_bake_skips_the_bake_and_never_the_evidence(backend: Recording) -> None:
    at_stage(backend, 2, ONE_HOUR_AGO)  # stage 2 bakes 4 h
    client, _ = metrics_client(
        (ONE_HOUR_AGO, NOW, healthy(60, per_minute=1_000_000)),
        (ONE_HOUR_AGO, NOW, doubled_errors(60, per_minute=1_000_000)),
        (ONE_HOUR_AGO, NOW, doubled_errors(60, per_minute=1_000_000)),
    )
    with pytest.raises(RolloutError, match=r"stage 2 bakes for 3 h 00 min more"):
        rollout(backend, client).promote()
    with pytest.raises(RolloutError, match="the stage 2 gate failed: errors"):
        rollout(backend, client).promote(ignore_bake=True)
    # A failure needs no bake: it is said as soon as it is evident, with or without the flag.
    with pytest.raises(RolloutError, match="the stage 2 gate failed: errors"):
        rollout(backend, client).promote()
    assert backend.ups == []
    passing, _ = metrics_client((ONE_HOUR_AGO, NOW, healthy(60, per_minute=1_000_000)))
    assert rollout(backend, passing).promote(ignore_bake=True).startswith("promoted to stage 3")


def test_ignore_gate_promotes_on_inconclusive_evidence_and_records_why(
    backend: Recording, world: World
) -> None:
    at_stage(backend, 1, ONE_HOUR_AGO)
    client, _ = metrics_client((ONE_HOUR_AGO, NOW, healthy(60, share=0.01, per_minute=600)))
    with pytest.raises(RolloutError, match="--ignore-gate needs a reason"):
        rollout(backend, client).promote(ignore_gate="  ")
    reason = "a 1 % stage at 6 requests a minute never reaches 10,000 in a day"
    message = rollout(backend, client).promote(ignore_gate=reason)
    assert message.startswith("promoted to stage 2: ")
    assert "stage 1 gate inconclusive, overridden: s3://" in message
    ((key, document),) = decisions(world).items()
    assert key.endswith("-stage1-inconclusive.json")
    assert document["action"] == "overridden"
    assert document["override"] == {"reason": reason}
    assert document["counts"]["candidate"]["requests"] == 360


def test_ignore_gate_does_not_skip_the_alarms(backend: Recording, world: World) -> None:
    at_stage(backend, 2, FIVE_HOURS_AGO)
    name = backend.outputs()["rollback"]["alarms"][0]
    boto3.client("cloudwatch", region_name=REGION).set_alarm_state(
        AlarmName=name, StateValue="ALARM", StateReason="errors"
    )
    client, _ = metrics_client()
    with pytest.raises(RolloutError, match=r"alarm\(s\) in ALARM"):
        rollout(backend, client).promote(ignore_gate="in a hurry")
    assert backend.ups == []
    assert decisions(world) == {}


def forbidden(since: datetime) -> dict[str, Any]:
    """One page with every result, the candidate's errors not computed (counted as zero,
    they would pass it)."""
    first, second = answers(since, doubled_errors(300), LATENCY)
    results = [*first["MetricDataResults"], *second["MetricDataResults"]]
    errors = next(r for r in results if r["Id"] == "green_errors")
    errors.update(StatusCode="Forbidden", Timestamps=[], Values=[])
    return {"MetricDataResults": results}


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("denied", "cloudwatch:GetMetricData"),
        ("forbidden", "could not compute the gateways' metric green_errors (status Forbidden)"),
        ("negative", "the green colour's errors over the stage is -"),
        ("ragged", "not what it sends (ValueError"),
    ],
)
def test_evidence_that_cannot_be_trusted_decides_nothing(
    backend: Recording, world: World, answer: str, said: str
) -> None:
    at_stage(backend, 2, FIVE_HOURS_AGO)
    client = boto3.client("cloudwatch", region_name=REGION)
    stubber = Stubber(client)
    if answer == "denied":
        stubber.add_client_error("get_metric_data", "AccessDenied", "not allowed", 403)
    elif answer == "forbidden":
        stubber.add_response("get_metric_data", forbidden(FIVE_HOURS_AGO))
    else:
        first, second = answers(FIVE_HOURS_AGO, healthy(300), LATENCY)
        results = [*first["MetricDataResults"], *second["MetricDataResults"]]
        target = next(r for r in results if r["Id"] == "green_errors")
        if answer == "negative":
            target["Values"] = [-5.0] * len(target["Values"])
        else:  # a value short of its timestamps
            target["Values"] = target["Values"][:-1]
        stubber.add_response("get_metric_data", first)
        stubber.add_response("get_metric_data", second)
    stubber.activate()
    with pytest.raises(RolloutError) as refused:
        rollout(backend, client).promote()
    message = " ".join(str(refused.value).split())
    assert message.startswith("not promoting to stage 3: ")
    assert said in message
    assert "--ignore-gate REASON" in message
    assert backend.ups == []
    assert decisions(world) == {}


def test_ignore_gate_promotes_without_readable_evidence_and_records_the_error(
    backend: Recording, world: World
) -> None:
    at_stage(backend, 2, FIVE_HOURS_AGO)
    client = boto3.client("cloudwatch", region_name=REGION)
    stubber = Stubber(client)
    stubber.add_client_error("get_metric_data", "AccessDenied", "not allowed", 403)
    stubber.activate()
    message = rollout(backend, client).promote(ignore_gate="CloudWatch outage; alarms are OK")
    assert message.startswith("promoted to stage 3")
    assert "gate unread, overridden" in message
    ((key, document),) = decisions(world).items()
    assert key.endswith("-stage2-unread.json")
    assert "AccessDenied" in document["evidenceError"]
    assert document["override"] == {"reason": "CloudWatch outage; alarms are OK"}


def cli(monkeypatch: pytest.MonkeyPatch, backend: FakeBackend, metrics: Any, *args: str) -> int:
    """`weightshift rollout ...` on the fake backend and the given metrics client."""
    monkeypatch.setattr(rollout_module, "AutomationBackend", lambda project, stack: backend)
    monkeypatch.setattr(rollout_module, "AwsView", lambda **_: AwsView(metrics=metrics))
    monkeypatch.setattr(
        rollout_module,
        "Rollout",
        lambda stack, backend, aws: Rollout(stack, backend, aws, now=lambda: NOW),
    )
    return main(["rollout", *args, "--project", str(PROJECT)])


def test_dry_run_prints_the_gate_and_the_next_stages_changes_and_changes_nothing(
    backend: Recording,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    at_stage(backend, 2, FIVE_HOURS_AGO)
    graph, ups = backend.graph, list(backend.ups)
    client, stubber = metrics_client((FIVE_HOURS_AGO, NOW, doubled_errors(300)))
    assert cli(monkeypatch, backend, client, "promote", "--dry-run") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("stage 2 gate: FAIL (window 2026-11-25 07:00 to 12:00 UTC)")
    assert any(line.startswith("  errors: fail; candidate 0.02, stable 0.01") for line in lines)
    assert "dry run: promote to stage 3 refused: the gate failed: errors:" in out
    # The next stage's listener weights, as `weightshift plan` shows them.
    assert "~ Listener traffic-https: weights blue/green 950/50 → 750/250" in out
    assert lines[-1] == "nothing was changed (no config written, no update, no record)"
    assert backend.writes == []
    assert backend.ups == ups
    assert backend.graph is graph
    assert backend.values["weightshift:rollout"]["stage"] == 2
    assert decisions(world) == {}
    stubber.assert_no_pending_responses()


def test_dry_run_on_passing_evidence_says_it_would_go_ahead(
    backend: Recording,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    at_stage(backend, 2, FIVE_HOURS_AGO)
    client, _ = metrics_client((FIVE_HOURS_AGO, NOW, healthy(300, per_minute=24_000)))
    assert cli(monkeypatch, backend, client, "promote", "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.startswith("stage 2 gate: PASS")
    assert "dry run: promote to stage 3 would go ahead" in out
    assert backend.writes == []
    assert backend.ups == []
    assert decisions(world) == {}


def test_the_promote_command_exits_2_with_the_refusal(
    backend: Recording,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    at_stage(backend, 2, FIVE_HOURS_AGO)
    client, _ = metrics_client((FIVE_HOURS_AGO, NOW, doubled_errors(300)))
    assert cli(monkeypatch, backend, client, "promote") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the stage 2 gate failed: errors:" in err
    assert "Traceback" not in err
    assert cli(monkeypatch, backend, None, "promote", "--dry-run", "--ignore-gate", "x") == 2
    assert "--dry-run changes nothing" in capsys.readouterr().err


def test_a_promotion_the_program_refuses_for_its_evaluation_puts_the_stack_file_back(
    backend: Recording, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weightshift.gates.verdict import BLOCKED_BY_EVALUATION

    at_stage(backend, 2, FIVE_HOURS_AGO)
    client, _ = metrics_client((FIVE_HOURS_AGO, NOW, healthy(300, per_minute=24_000)))

    def refused(message: str) -> str:
        raise RuntimeError(f"{BLOCKED_BY_EVALUATION}its evaluation is missing.")

    monkeypatch.setattr(backend, "up", refused)
    with pytest.raises(RolloutError, match=r"not promoted: .*The stack file is back at canary"):
        rollout(backend, client).promote()
    assert backend.values["weightshift:rollout"]["stage"] == 2
