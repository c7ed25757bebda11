"""The rollback record: what the rollback function wrote, read by the program on every run.

While a record for the configured candidate exists, the program renders the stable colour
at 100 % whatever the configured stage, so the next ``pulumi up`` cannot undo an automated
rollback. ``weightshift rollout ack`` clears it after review.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class RecordError(Exception):
    """A rollback record that cannot be read; the message says why."""


class RollbackRecord(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    incident: str = Field(min_length=1)
    candidate: str = Field(min_length=1)
    """The bundle id that was rolled back."""
    alarm: str
    reason: str = ""
    stage: int | None = None
    at: str

    def summary(self) -> str:
        stage = f" at stage {self.stage}" if self.stage is not None else ""
        return (
            f"{self.candidate} was rolled back{stage} ({self.alarm}, {self.at}, incident "
            f"{self.incident}): the stable colour serves 100 % until `weightshift rollout ack`"
        )


def parameter_name(model: str, stack: str) -> str:
    return f"/weightshift/{model}/{stack}/rollback"


def parse(text: str, source: str) -> RollbackRecord:
    try:
        return RollbackRecord.model_validate(json.loads(text))
    except (ValueError, ValidationError) as exc:
        raise RecordError(f"{source} is not a rollback record ({exc}).") from None


def load_file(path: Path) -> RollbackRecord:
    try:
        return parse(path.read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        raise RecordError(f"cannot read {path}: {exc.strerror}") from None


class _Offline:
    """Marks a run without AWS: the record (or its absence) was given."""

    def __init__(self, record: RollbackRecord | None) -> None:
        self.record = record


OFFLINE_RECORD: ContextVar[_Offline | None] = ContextVar("OFFLINE_RECORD", default=None)


def set_offline(record: RollbackRecord | None) -> None:
    OFFLINE_RECORD.set(_Offline(record))


def read(parameter: str, client: Any = None, region: str | None = None) -> RollbackRecord | None:
    """The record in SSM (or the offline one under ``weightshift synth``); None if none."""
    offline = OFFLINE_RECORD.get()
    if offline is not None:
        return offline.record
    ssm = client or boto3.client("ssm", region_name=region)
    try:
        value = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return None
        raise RecordError(
            f"cannot read the rollback record {parameter}: {error}. The program must know "
            "whether the candidate was rolled back before it renders any weights."
        ) from None
    except BotoCoreError as error:
        raise RecordError(
            f"cannot reach SSM to read the rollback record {parameter} ({error}): check the "
            "AWS credentials and region. Nothing was deployed."
        ) from None
    return parse(str(value), parameter)


def composite_alarm_name(model: str, stack: str, candidate: str) -> str:
    """The candidate's rollback (composite) alarm, as ``components/rollback.py`` names it."""
    return f"{model}-{stack}-{candidate}-rollback"


def silent_activation(name: str, client: Any = None, region: str | None = None) -> str | None:
    """Why enabling the actions of composite alarm ``name`` now would do nothing, or None.

    CloudWatch acts on state *transitions*: an alarm already in ALARM when its actions are
    turned on never invokes them, so a stage that first sends the candidate traffic while its
    rollback alarm is in ALARM would leave it with no automatic rollback at all. None under
    ``weightshift synth`` (offline) and when the alarm does not exist yet or already acts.
    """
    if OFFLINE_RECORD.get() is not None:
        return None
    cloudwatch = client or boto3.client("cloudwatch", region_name=region)
    try:
        found = cloudwatch.describe_alarms(AlarmNames=[name], AlarmTypes=["CompositeAlarm"])
    except (ClientError, BotoCoreError) as error:
        raise RecordError(
            f"cannot read the rollback alarm {name} ({error}): the program must know it can "
            "act before it sends the candidate traffic. Nothing was deployed."
        ) from None
    for alarm in found.get("CompositeAlarms", []):
        if alarm.get("StateValue") == "ALARM" and not alarm.get("ActionsEnabled", True):
            return (
                f"the candidate's rollback alarm {name} is already in ALARM "
                f"({alarm.get('StateReason', 'no reason given')}). CloudWatch acts only on a "
                "change of state, so turning its actions on now would never roll back. Find "
                "out why (`weightshift rollout status`), fix the candidate, and deploy this "
                "stage once the alarm is OK; nothing was deployed."
            )
    return None
