"""An emulated ALB (moto) with blue and green target groups behind a 95/5 sticky listener,
SSM, an Object-Locked incident bucket and an on-call topic with a queue subscribed: the
world the rollback function acts on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.emulator import make_artifact_bucket

REGION = "us-east-1"
ALARM = "support-assistant-prod-green-rollback"
CANDIDATE = "support-assistant/v1.5.0-d80719af096e"
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


@contextmanager
def alb_world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
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
        make_artifact_bucket(s3, BUCKET, 30)
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


def published(world: World) -> list[dict[str, Any]]:
    """Every message published to the on-call topic, as moto kept it: unlike ``pages``,
    reading them consumes nothing, and a page nobody received still counts."""
    from moto.sns.models import sns_backends

    topic_arn = world.env["TOPIC_ARN"]
    account = topic_arn.split(":")[4]
    topic = sns_backends[account][REGION].topics[topic_arn]
    return [json.loads(sent[1]) for sent in topic.sent_notifications]


def incidents(world: World) -> list[str]:
    listed = world.s3.list_objects_v2(Bucket=BUCKET, Prefix="incidents/").get("Contents", [])
    return [item["Key"] for item in listed]
