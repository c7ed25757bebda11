"""What the program checks again just before weight moves to the candidate
(weightshift/rollout/guard.py), against emulated AWS."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tests.conftest import offline_aws
from weightshift.rollout.guard import GuardError, before_weight_moves, unhealthy_targets

ARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/green/0123456789abcdef"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    offline_aws(monkeypatch)
    with mock_aws():
        yield


def health(*states: str) -> Any:
    client = boto3.client("elbv2", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_response(
        "describe_target_health",
        {
            "TargetHealthDescriptions": [
                {"Target": {"Id": f"10.0.0.{i}", "Port": 8000}, "TargetHealth": {"State": state}}
                for i, state in enumerate(states)
            ]
        },
        {"TargetGroupArn": ARN},
    )
    stubber.activate()
    return client


@pytest.mark.parametrize(
    ("states", "found"),
    [
        (("healthy", "healthy"), None),
        # A rolling update's replaced pods leave through draining.
        (("healthy", "draining"), None),
        (("healthy", "initial"), "1 healthy, 1 initial"),
        (("unhealthy",), "no target is healthy (1 unhealthy)"),
        ((), "no target is healthy"),
    ],
)
def test_the_candidates_targets_must_be_healthy(states: tuple[str, ...], found: str | None) -> None:
    assert unhealthy_targets(ARN, client=health(*states)) == found


def test_weight_does_not_move_onto_an_alarm_that_could_never_act(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate's composite alarm went to ALARM during the wait, its actions still off:
    turning them on now would never act (CloudWatch acts on changes of state). moto has no
    composite alarms: CloudWatch's answer is a recorded one."""
    name = "support-assistant-prod-green-rollback"
    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
    stubber = Stubber(cloudwatch)
    stubber.add_response(
        "describe_alarms",
        {
            "CompositeAlarms": [
                {
                    "AlarmName": name,
                    "StateValue": "ALARM",
                    "ActionsEnabled": False,
                    "StateReason": "errors went to ALARM",
                }
            ]
        },
        {"AlarmNames": [name], "AlarmTypes": ["CompositeAlarm"]},
    )
    stubber.activate()
    real = boto3.client
    monkeypatch.setattr(
        boto3,
        "client",
        lambda service, *a, **k: cloudwatch if service == "cloudwatch" else real(service, *a, **k),
    )
    with pytest.raises(GuardError, match="already in ALARM"):
        before_weight_moves(
            parameter="/weightshift/support-assistant/prod/rollback",
            candidate_version="support-assistant/v1.5.0-d80719af096e",
            colour="green",
            alarm_name=name,
            target_group_arn=ARN,
            region="us-east-1",
            dry_run=False,
        )


def test_a_preview_reads_only_the_record(aws: Any) -> None:
    """In `pulumi preview` the stage's pods are not up yet: no alarm or target check."""
    before_weight_moves(
        parameter="/weightshift/support-assistant/prod/rollback",
        candidate_version="support-assistant/v1.5.0-d80719af096e",
        colour="green",
        alarm_name="support-assistant-prod-green-rollback",
        target_group_arn=ARN,
        region="us-east-1",
        dry_run=True,
    )
