"""The rollback function against moto: a real ALB listener, SSM, S3 under Object Lock, SNS."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from tests.alb_world import (
    ALARM,
    BUCKET,
    CANDIDATE,
    PARAMETER,
    REGION,
    World,
    alarm_event,
    forward,
    incidents,
    pages,
)
from tests.conftest import serialize
from weightshift.lambdas import rollback
from weightshift.lambdas.rollback import Clients, Settings, handler


def test_an_alarm_sends_everything_to_stable_records_and_pages(world: World) -> None:
    assert forward(world) == {
        "weights": {world.stable: 950, world.candidate: 50},
        "sticky": True,
    }
    result = handler(alarm_event(), None)
    assert result["action"] == "rolled-back"
    assert forward(world) == {"weights": {world.stable: 999, world.candidate: 0}, "sticky": False}
    record = json.loads(world.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"])
    assert record["incident"] == result["incident"]
    assert record["candidate"] == CANDIDATE
    assert record["alarm"] == ALARM
    assert record["stage"] == 2
    assert "green-errors transitioned to ALARM" in record["reason"]
    assert record["at"]
    (key,) = incidents(world)
    assert key == f"incidents/support-assistant/prod/{result['incident']}.json"
    head = world.s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    stored = json.loads(world.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert stored["event"]["alarmData"]["alarmName"] == ALARM
    (page,) = pages(world)
    assert page["incident"] == result["incident"]
    assert "rollout ack" in page["summary"]


def test_twenty_concurrent_invocations_make_one_incident_and_one_state(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.s3.responses import S3Response
    from moto.ssm.responses import SimpleSystemManagerResponse

    serialize(monkeypatch, S3Response, "put_object")
    serialize(monkeypatch, SimpleSystemManagerResponse, "put_parameter")
    event = alarm_event()
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: handler(event, None), range(20)))
    actions = sorted(r["action"] for r in results)
    assert actions == ["already"] * 19 + ["rolled-back"]
    assert len({r["incident"] for r in results}) == 1
    assert len(incidents(world)) == 1
    assert len(pages(world)) == 1
    assert forward(world) == {"weights": {world.stable: 999, world.candidate: 0}, "sticky": False}


def test_a_repeated_alarm_for_the_same_candidate_pages_once(world: World) -> None:
    first = handler(alarm_event(), None)
    later = alarm_event()
    later["alarmData"]["state"]["timestamp"] = "2026-11-25T09:30:00.000+0000"
    second = handler(later, None)
    assert (first["action"], second["action"]) == ("rolled-back", "already")
    assert second["incident"] == first["incident"]
    assert len(pages(world)) == 1


@pytest.mark.parametrize(
    "event",
    [
        alarm_event(state="OK"),
        alarm_event(state="INSUFFICIENT_DATA"),
        alarm_event(name="someone-elses-alarm"),
        alarm_event(
            description="weightshift rollback listener=arn:aws:elasticloadbalancing:us-east-1:"
            "123456789012:listener/app/other/0123456789abcdef/fedcba9876543210"
        ),
    ],
    ids=["ok", "insufficient-data", "other-alarm", "other-listener"],
)
def test_other_events_change_nothing(world: World, event: dict[str, Any]) -> None:
    before = forward(world)
    assert handler(event, None)["action"] == "ignored"
    assert forward(world) == before
    assert world.ssm.describe_parameters()["Parameters"] == []
    assert incidents(world) == []
    assert pages(world) == []


def test_throttling_is_retried_with_backoff() -> None:
    elbv2 = boto3.client("elbv2", region_name=REGION)
    stubber = Stubber(elbv2)
    for _ in range(3):
        stubber.add_client_error("modify_listener", "Throttling", "Rate exceeded", 400)
    stubber.add_response("modify_listener", {"Listeners": []})
    slept: list[float] = []
    with stubber:
        rollback.call(
            elbv2.modify_listener,
            sleep=slept.append,
            ListenerArn="arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/x/1/2",
            DefaultActions=[],
        )
    stubber.assert_no_pending_responses()
    assert len(slept) == 3
    assert all(0 <= s <= 8 for s in slept)


def test_other_errors_are_not_retried() -> None:
    elbv2 = boto3.client("elbv2", region_name=REGION)
    stubber = Stubber(elbv2)
    stubber.add_client_error("modify_listener", "ListenerNotFound", "gone", 400)
    slept: list[float] = []
    with stubber, pytest.raises(ClientError):
        rollback.call(elbv2.modify_listener, sleep=slept.append, ListenerArn="x", DefaultActions=[])
    assert slept == []


def test_throttling_inside_the_handler_still_rolls_back(world: World) -> None:
    clients = Clients.default()
    stubbed = Stubber(clients.elbv2)
    stubbed.add_client_error("describe_listeners", "Throttling", "Rate exceeded", 400)
    stubbed.add_response("describe_listeners", {"Listeners": []})
    stubbed.add_client_error("modify_listener", "Throttling", "Rate exceeded", 400)
    stubbed.add_response("modify_listener", {"Listeners": []})
    slept: list[float] = []
    with stubbed:
        outcome = rollback.roll_back(
            alarm_event(), Settings.from_environment(), clients, sleep=slept.append
        )
    assert outcome.action == "rolled-back"
    assert len(slept) == 2


def test_a_stale_record_of_another_candidate_is_replaced_and_pages(world: World) -> None:
    stale = {"incident": "0000000000000000", "candidate": "support-assistant/v1.4.0-aaaaaaaaaaaa"}
    world.ssm.put_parameter(Name=PARAMETER, Value=json.dumps(stale), Type="String")
    result = handler(alarm_event(), None)
    assert result["action"] == "rolled-back"
    record = json.loads(world.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"])
    assert (record["candidate"], record["incident"]) == (CANDIDATE, result["incident"])
    assert len(pages(world)) == 1
