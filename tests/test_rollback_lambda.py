"""The rollback function against moto: a real ALB listener, SSM, S3 under Object Lock, SNS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from tests.conftest import serialize
from weightshift.lambdas import rollback
from weightshift.lambdas.rollback import Clients, Settings, handler

REGION = "us-east-1"
ALARM = "support-assistant-prod-green-rollback"
CANDIDATE = "support-assistant/v1.5.0-d93b4b8ffe77"
PARAMETER = "/weightshift/support-assistant/prod/rollback"
BUCKET = "weightshift-incidents-test"


@dataclass
class World:
    elbv2: Any
    ssm: Any
    s3: Any
    sqs: Any
    queue_url: str
    listener: str
    stable: str
    candidate: str
    env: dict[str, str]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.40.{i}.0/24", AvailabilityZone=zone)[
                "Subnet"
            ]["SubnetId"]
            for i, zone in enumerate(("us-east-1a", "us-east-1b"))
        ]
        elbv2 = boto3.client("elbv2", region_name=REGION)
        alb = elbv2.create_load_balancer(Name="traffic", Subnets=subnets, Type="application")[
            "LoadBalancers"
        ][0]["LoadBalancerArn"]
        groups = {
            colour: elbv2.create_target_group(
                Name=f"traffic-{colour}",
                Protocol="HTTP",
                Port=8000,
                VpcId=vpc,
                TargetType="ip",
            )["TargetGroups"][0]["TargetGroupArn"]
            for colour in ("blue", "green")
        }
        listener = elbv2.create_listener(
            LoadBalancerArn=alb,
            Protocol="HTTP",
            Port=80,
            DefaultActions=[
                {
                    "Type": "forward",
                    "ForwardConfig": {
                        "TargetGroups": [
                            {"TargetGroupArn": groups["blue"], "Weight": 950},
                            {"TargetGroupArn": groups["green"], "Weight": 50},
                        ],
                        "TargetGroupStickinessConfig": {"Enabled": True, "DurationSeconds": 900},
                    },
                }
            ],
        )["Listeners"][0]["ListenerArn"]
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        s3.put_object_lock_configuration(
            Bucket=BUCKET,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}},
            },
        )
        sns = boto3.client("sns", region_name=REGION)
        topic = sns.create_topic(Name="on-call")["TopicArn"]
        sqs = boto3.client("sqs", region_name=REGION)
        queue_url = sqs.create_queue(QueueName="pager")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        env = {
            "LISTENER_ARN": listener,
            "STABLE_TARGET_GROUP_ARN": groups["blue"],
            "CANDIDATE_TARGET_GROUP_ARN": groups["green"],
            "ALARM_NAME": ALARM,
            "RECORD_PARAMETER": PARAMETER,
            "INCIDENT_BUCKET": BUCKET,
            "INCIDENT_PREFIX": "incidents/support-assistant/prod",
            "TOPIC_ARN": topic,
            "CANDIDATE_VERSION": CANDIDATE,
            "CANDIDATE_COLOUR": "green",
            "STABLE_COLOUR": "blue",
            "STAGE_WEIGHTS": "0,10,50,250,500,999",
        }
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        yield World(
            elbv2,
            boto3.client("ssm", region_name=REGION),
            s3,
            sqs,
            queue_url,
            listener,
            groups["blue"],
            groups["green"],
            env,
        )


def alarm_event(
    state: str = "ALARM", name: str = ALARM, description: str | None = None
) -> dict[str, Any]:
    """What CloudWatch sends a Lambda alarm action for a composite alarm's state change."""
    return {
        "source": "aws.cloudwatch",
        "alarmArn": f"arn:aws:cloudwatch:{REGION}:123456789012:alarm:{name}",
        "accountId": "123456789012",
        "time": "2026-11-25T09:12:03.118+0000",
        "region": REGION,
        "alarmData": {
            "alarmName": name,
            "state": {
                "value": state,
                "reason": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:"
                "support-assistant-prod-green-errors transitioned to ALARM at "
                "Wednesday 25 November, 2026 09:12:03 UTC",
                "timestamp": "2026-11-25T09:12:03.118+0000",
            },
            "previousState": {
                "value": "OK",
                "reason": "All child alarms are OK",
                "timestamp": "2026-11-25T08:40:00.000+0000",
            },
            "configuration": {
                "alarmRule": "ALARM(support-assistant-prod-green-errors) OR "
                "ALARM(support-assistant-prod-green-latency-p99)",
                "description": description or "weightshift rollback of green",
            },
        },
    }


def forward(world: World) -> dict[str, Any]:
    (listener,) = world.elbv2.describe_listeners(ListenerArns=[world.listener])["Listeners"]
    (action,) = listener["DefaultActions"]
    config = action["ForwardConfig"]
    return {
        "weights": {g["TargetGroupArn"]: g["Weight"] for g in config["TargetGroups"]},
        "sticky": config.get("TargetGroupStickinessConfig", {}).get("Enabled", False),
    }


def pages(world: World) -> list[dict[str, Any]]:
    messages = world.sqs.receive_message(
        QueueUrl=world.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages", [])
    return [json.loads(json.loads(m["Body"])["Message"]) for m in messages]


def incidents(world: World) -> list[str]:
    listed = world.s3.list_objects_v2(Bucket=BUCKET, Prefix="incidents/").get("Contents", [])
    return [item["Key"] for item in listed]


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
