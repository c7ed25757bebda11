"""The rollback function: on an ALARM of the candidate's composite alarm, send every request
back to the stable colour, record why, and page on-call.

Packaged alone (standard library and boto3 only) by ``components/rollback.py``; also
imported by ``weightshift rollout abort``, so a manual abort takes the same path.

Steps, in this order (traffic first: every second counts):

1. ONE ``ModifyListener`` call: stable 999 (100 %), candidate 0 (mirror 0), stickiness off
   (sticky clients would otherwise keep reaching the candidate). Every invocation makes it:
   the call is idempotent, so repeated or concurrent invocations converge on one state.
2. The rollback record, an SSM parameter written with ``Overwrite=False``: exactly one
   invocation creates it; that one owns the incident. The Pulumi program reads the record
   and keeps the stable colour at 100 % until ``weightshift rollout ack``.
3. The owner writes the incident record (one S3 object per incident, conditional create,
   under the bucket's Object Lock) and publishes to the on-call topic.

Configuration comes from the environment (set by the component): ``LISTENER_ARN``,
``STABLE_TARGET_GROUP_ARN``, ``CANDIDATE_TARGET_GROUP_ARN``, optional
``MIRROR_TARGET_GROUP_ARN``, ``ALARM_NAME``, ``RECORD_PARAMETER``, ``INCIDENT_BUCKET``,
``INCIDENT_PREFIX``, ``TOPIC_ARN``, ``CANDIDATE_VERSION``, ``CANDIDATE_COLOUR``,
``STABLE_COLOUR``, ``STAGE_WEIGHTS`` (the candidate's served plus mirrored weight at each
stage, comma separated: the stage is read off the listener, so a stage change does not
have to redeploy the function).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ALB_WEIGHT_ALL = 999
"""A lone weight of 999 sends 100 % (the ALB's maximum; the program renders the same)."""
THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
    }
)
MAX_ATTEMPTS = 8


def log(level: str, message: str, **fields: Any) -> None:
    """One JSON object per line: CloudWatch Logs Insights reads the fields."""
    print(
        json.dumps(
            {"level": level, "message": message, "at": _now(), **fields},
            sort_keys=True,
            default=str,
        ),
        file=sys.stdout,
        flush=True,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def call(
    operation: Callable[..., Any],
    *,
    sleep: Callable[[float], None] = time.sleep,
    attempts: int = MAX_ATTEMPTS,
    **kwargs: Any,
) -> Any:
    """``operation(**kwargs)``, retried with capped exponential backoff and full jitter on
    throttling and transient service errors; any other error is raised at once."""
    for attempt in range(1, attempts + 1):
        try:
            return operation(**kwargs)
        except ClientError as error:
            if _code(error) not in THROTTLING or attempt == attempts:
                raise
            delay = random.uniform(0, min(8.0, 0.1 * 2**attempt))
            log(
                "warning",
                "throttled; retrying",
                operation=getattr(operation, "__name__", str(operation)),
                attempt=attempt,
                delay=round(delay, 3),
            )
            sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Settings:
    listener_arn: str
    stable_target_group_arn: str
    candidate_target_group_arn: str
    mirror_target_group_arn: str | None
    alarm_name: str
    record_parameter: str
    incident_bucket: str
    incident_prefix: str
    topic_arn: str
    candidate_version: str
    candidate_colour: str
    stable_colour: str
    stage_weights: tuple[int, ...]

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            listener_arn=env["LISTENER_ARN"],
            stable_target_group_arn=env["STABLE_TARGET_GROUP_ARN"],
            candidate_target_group_arn=env["CANDIDATE_TARGET_GROUP_ARN"],
            mirror_target_group_arn=env.get("MIRROR_TARGET_GROUP_ARN") or None,
            alarm_name=env["ALARM_NAME"],
            record_parameter=env["RECORD_PARAMETER"],
            incident_bucket=env["INCIDENT_BUCKET"],
            incident_prefix=env["INCIDENT_PREFIX"].rstrip("/"),
            topic_arn=env["TOPIC_ARN"],
            candidate_version=env["CANDIDATE_VERSION"],
            candidate_colour=env["CANDIDATE_COLOUR"],
            stable_colour=env["STABLE_COLOUR"],
            stage_weights=tuple(int(w) for w in env["STAGE_WEIGHTS"].split(",") if w),
        )


@dataclass
class Clients:
    elbv2: Any
    ssm: Any
    s3: Any
    sns: Any

    @classmethod
    def default(cls) -> Clients:
        # Our own retry loop handles throttling (with logs); the SDK's would double it.
        config = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=3)
        return cls(
            elbv2=boto3.client("elbv2", config=config),
            ssm=boto3.client("ssm", config=config),
            s3=boto3.client("s3", config=config),
            sns=boto3.client("sns", config=config),
        )


def stable_only_actions(settings: Settings) -> list[dict[str, Any]]:
    """The listener's default action after a rollback: stable 100 %, stickiness off."""
    groups = [
        {"TargetGroupArn": settings.stable_target_group_arn, "Weight": ALB_WEIGHT_ALL},
        {"TargetGroupArn": settings.candidate_target_group_arn, "Weight": 0},
    ]
    if settings.mirror_target_group_arn:
        groups.append({"TargetGroupArn": settings.mirror_target_group_arn, "Weight": 0})
    return [
        {
            "Type": "forward",
            "ForwardConfig": {
                "TargetGroups": groups,
                "TargetGroupStickinessConfig": {"Enabled": False},
            },
        }
    ]


def incident_id(alarm_arn: str, state_timestamp: str, candidate_version: str) -> str:
    """The same for every delivery of one alarm transition, so retries and concurrent
    invocations agree on it."""
    digest = hashlib.sha256(f"{alarm_arn}|{state_timestamp}|{candidate_version}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Outcome:
    action: str
    """``ignored``, ``rolled-back`` (this invocation owns the incident) or ``already``."""
    incident: str | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "incident": self.incident, "reason": self.reason}


def _relevant(event: Mapping[str, Any], settings: Settings) -> str | None:
    """Why this event must not act, or None if it must."""
    data = event.get("alarmData") or {}
    state = (data.get("state") or {}).get("value")
    if state != "ALARM":
        return f"alarm state is {state}, not ALARM"
    name = data.get("alarmName")
    if name != settings.alarm_name:
        return f"alarm {name!r} is not this function's alarm {settings.alarm_name!r}"
    description = str((data.get("configuration") or {}).get("description") or "")
    for word in description.split():
        if word.startswith("listener=") and word.removeprefix("listener=") != settings.listener_arn:
            return f"the alarm names another listener ({word.removeprefix('listener=')})"
    return None


def roll_back(
    event: Mapping[str, Any],
    settings: Settings,
    clients: Clients,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Act on one alarm event (or a manual abort, which builds the same event)."""
    why_not = _relevant(event, settings)
    if why_not is not None:
        log("info", "ignored", reason=why_not)
        return Outcome("ignored", reason=why_not)
    data = event["alarmData"]
    state = data["state"]
    incident = incident_id(
        str(event.get("alarmArn", data["alarmName"])),
        str(state.get("timestamp", "")),
        settings.candidate_version,
    )
    stage = _current_stage(clients, settings, sleep)
    # 1. Traffic back to stable: one call, idempotent.
    call(
        clients.elbv2.modify_listener,
        sleep=sleep,
        ListenerArn=settings.listener_arn,
        DefaultActions=stable_only_actions(settings),
    )
    log(
        "warning",
        "traffic sent back to the stable colour",
        incident=incident,
        listener=settings.listener_arn,
        stable=settings.stable_colour,
        candidate=settings.candidate_version,
    )
    record = {
        "incident": incident,
        "candidate": settings.candidate_version,
        "candidateColour": settings.candidate_colour,
        "stableColour": settings.stable_colour,
        "alarm": data["alarmName"],
        "reason": state.get("reason", ""),
        "stage": stage,
        "at": _now(),
        "alarmTransitionAt": state.get("timestamp"),
        "source": event.get("source", "aws.cloudwatch"),
    }

    def put_record(*, overwrite: bool) -> None:
        call(
            clients.ssm.put_parameter,
            sleep=sleep,
            Name=settings.record_parameter,
            Value=json.dumps(record, sort_keys=True),
            Type="String",
            Overwrite=overwrite,
            Description="weightshift rollback record: cleared by `weightshift rollout ack`",
        )

    # 2. The record: the one invocation that creates it owns the incident.
    try:
        put_record(overwrite=False)
    except ClientError as error:
        if _code(error) != "ParameterAlreadyExists":
            raise
        existing = _read_record(clients, settings, sleep)
        if existing.get("incident") == incident:
            # Another delivery of this transition (or a retry of one that failed after the
            # record): the incident object's conditional create below picks one owner.
            pass
        elif existing.get("candidate") == settings.candidate_version:
            log("info", "already rolled back", incident=existing.get("incident"))
            return Outcome("already", str(existing.get("incident")), "record exists")
        else:
            # A record of an earlier candidate that nobody acknowledged: this one replaces it.
            log("warning", "replacing a stale rollback record", stale=existing)
            put_record(overwrite=True)
    # 3. The incident record and the page.
    key = f"{settings.incident_prefix}/{incident}.json"
    try:
        call(
            clients.s3.put_object,
            sleep=sleep,
            Bucket=settings.incident_bucket,
            Key=key,
            Body=json.dumps({**record, "event": event}, sort_keys=True, default=str).encode(),
            ContentType="application/json",
            IfNoneMatch="*",
            # No encryption headers: the bucket's default (SSE-KMS, its own key) applies.
        )
    except ClientError as error:
        if _code(error) not in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise
        log("info", "incident record already written", incident=incident)
        return Outcome("already", incident, "incident exists")
    call(
        clients.sns.publish,
        sleep=sleep,
        TopicArn=settings.topic_arn,
        Subject=f"weightshift rollback: {settings.candidate_version}"[:100],
        Message=json.dumps(
            {
                **record,
                "summary": (
                    f"{settings.candidate_version} ({settings.candidate_colour}) was rolled back "
                    f"at stage {stage}: {data['alarmName']} went to ALARM. All traffic "
                    f"is on {settings.stable_colour}. Incident record: "
                    f"s3://{settings.incident_bucket}/{key}. After review: weightshift rollout ack."
                ),
            },
            sort_keys=True,
        ),
    )
    log("warning", "rollback recorded and on-call paged", incident=incident, record=key)
    return Outcome("rolled-back", incident, str(state.get("reason", "")))


def _current_stage(
    clients: Clients, settings: Settings, sleep: Callable[[float], None]
) -> int | None:
    """The stage the listener is at (before the rollback), from the candidate's weight; None
    if the listener cannot be read or matches no stage (the rollback goes ahead anyway)."""
    try:
        response = call(
            clients.elbv2.describe_listeners,
            sleep=sleep,
            attempts=3,
            ListenerArns=[settings.listener_arn],
        )
        actions = response["Listeners"][0]["DefaultActions"]
        groups = actions[0]["ForwardConfig"]["TargetGroups"]
    except (ClientError, KeyError, IndexError) as error:
        log("warning", "could not read the listener's weights", error=str(error))
        return None
    ours = {settings.candidate_target_group_arn, settings.mirror_target_group_arn}
    weight = sum(int(g.get("Weight", 0)) for g in groups if g.get("TargetGroupArn") in ours)
    return settings.stage_weights.index(weight) if weight in settings.stage_weights else None


def _read_record(
    clients: Clients, settings: Settings, sleep: Callable[[float], None]
) -> dict[str, Any]:
    response = call(clients.ssm.get_parameter, sleep=sleep, Name=settings.record_parameter)
    try:
        return dict(json.loads(response["Parameter"]["Value"]))
    except (KeyError, ValueError):
        return {}


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point."""
    settings = Settings.from_environment()
    log("info", "invoked", event=event)
    return roll_back(event, settings, Clients.default()).to_json()
