"""The rollback function: on an ALARM of the candidate's composite alarm, send every request
back to the stable colour, record why, and page on-call.

Packaged alone (standard library and boto3 only) by ``components/rollback.py``; also
imported by ``weightshift rollout abort``, so a manual abort takes the same path.

Steps, in this order (traffic first: every second counts; then the page, which must not
wait on or depend on any record):

1. ONE ``ModifyListener`` call: stable 999 (100 %), candidate 0 (mirror 0), stickiness off
   (sticky clients would otherwise keep reaching the candidate). Every invocation makes it:
   the call is idempotent, so repeated or concurrent invocations converge on one state.
   If it fails, the invocation fails (and Lambda retries it).
2. The rollback record, an SSM parameter written with ``Overwrite=False``: exactly one
   invocation creates it. The Pulumi program reads the record and keeps the stable colour
   at 100 % until ``weightshift rollout ack``. Found with this incident: another delivery
   or a retry of this incident, go on. Found with this candidate but another incident: the
   candidate is already rolled back and paged for, stop. Found with another candidate: an
   unacknowledged earlier rollback, replaced. If SSM fails, go on (on-call must hear of the
   rollback) and fail the invocation at the end so that Lambda retries it.
3. The page, claimed by a marker parameter written with ``Overwrite=False``:
   ``<RECORD_PARAMETER>-paged/<incident>`` (see :func:`page_marker`). Claimed: publish to
   the on-call topic; if that fails, delete the marker (so that Lambda's retry pages) and
   fail at the end. Found: on-call was paged for this incident, skip. Any other error
   writing it: page anyway, since a duplicate page beats silence.
4. The incident record: one S3 object per incident, conditional create (``If-None-Match``)
   under the bucket's Object Lock, with a SHA-256 checksum. Found: fine. Failed: logged,
   and the invocation fails at the end so that Lambda retries it; a retry finds the listener
   rolled back, the record and the marker, so it writes the incident without paging again.

So every invocation that rolls back (or finds this incident rolled back) pages unless the
page of this incident is already claimed: one page per incident, whatever else fails.

Configuration comes from the environment (set by the component): ``LISTENER_ARN``,
``STABLE_TARGET_GROUP_ARN``, ``CANDIDATE_TARGET_GROUP_ARN``, optional
``MIRROR_TARGET_GROUP_ARN``, ``ALARM_NAME``, ``RECORD_PARAMETER``, ``INCIDENT_BUCKET``,
``INCIDENT_PREFIX``, ``TOPIC_ARN``, ``CANDIDATE_VERSION``, ``CANDIDATE_COLOUR``,
``STABLE_COLOUR``, ``STAGE_WEIGHTS`` (the candidate's served plus mirrored weight at each
stage, comma separated: the stage is read off the listener, so a stage change does not
have to redeploy the function).

Permissions beyond the listener, the record, the bucket and the topic: ``ssm:PutParameter``
and ``ssm:DeleteParameter`` on the page markers,
``arn:<partition>:ssm:<region>:<account>:parameter<RECORD_PARAMETER>-paged/*``.
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
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as SdkConnectionError

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
    }
)
"""Refusals before any work was done: a retry cannot repeat an effect."""
SERVER_ERRORS = frozenset(
    {
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
"""Transient failures after which the request may or may not have taken effect."""
SERVER_STATUSES = frozenset({500, 502, 503, 504})
AWS_ERRORS = (ClientError, BotoCoreError)
"""What a failed AWS call raises: service errors, and connection or timeout errors."""
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


def _describe(error: Exception) -> str:
    """The error's code (or class) and message, for logs and the page."""
    if isinstance(error, ClientError):
        return f"{_code(error)}: {error.response.get('Error', {}).get('Message', '')}"
    return f"{type(error).__name__}: {error}"


def _retryable(error: Exception, *, maybe_applied: bool) -> bool:
    """Whether ``call`` retries ``error``. ``maybe_applied``: also errors after which the
    request may have taken effect (server errors, a lost response), for calls whose repeat
    is harmless or detected."""
    if isinstance(error, ClientError):
        if _code(error) in THROTTLING:
            return True
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return maybe_applied and (_code(error) in SERVER_ERRORS or status in SERVER_STATUSES)
    if isinstance(error, SdkConnectionError):
        return True  # no connection, so no request was made
    return maybe_applied and isinstance(error, HTTPClientError)


def call(
    operation: Callable[..., Any],
    *,
    sleep: Callable[[float], None] = time.sleep,
    attempts: int = MAX_ATTEMPTS,
    maybe_applied: bool = True,
    **kwargs: Any,
) -> Any:
    """``operation(**kwargs)``, retried with capped exponential backoff and full jitter on
    throttling, transient server errors and lost connections (the SDK's own retries are
    off, so that every retry is logged here); any other error is raised at once. With
    ``maybe_applied=False`` only errors that guarantee no effect are retried, for a
    conditional write whose retry would mistake its own success for someone else's."""
    for attempt in range(1, attempts + 1):
        try:
            return operation(**kwargs)
        except AWS_ERRORS as error:
            if attempt == attempts or not _retryable(error, maybe_applied=maybe_applied):
                raise
            delay = random.uniform(0, min(8.0, 0.1 * 2**attempt))
            log(
                "warning",
                "transient error; retrying",
                operation=getattr(operation, "__name__", str(operation)),
                attempt=attempt,
                error=_describe(error),
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
        # No SDK retries: ``call`` retries, and logs each one. In the retries dict
        # ``max_attempts`` excludes the first attempt (1 would still retry once, silently);
        # ``total_max_attempts`` includes it.
        config = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=3)
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


def page_marker(record_parameter: str, incident: str) -> str:
    """The SSM parameter whose creation claims the page of ``incident``: beside the record
    (SSM allows ``/a/b-paged/c`` next to ``/a/b``), so one IAM resource pattern,
    ``parameter<RECORD_PARAMETER>-paged/*``, covers every incident."""
    return f"{record_parameter}-paged/{incident}"


@dataclass(frozen=True)
class Outcome:
    action: str
    """``ignored``; ``rolled-back``: this invocation paged on-call for the incident (the
    listener is on stable); ``already``: the listener is on stable and on-call was paged by
    another invocation, or for an earlier incident of this candidate."""
    incident: str | None = None
    reason: str = ""
    paged: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "incident": self.incident,
            "reason": self.reason,
            "paged": self.paged,
        }


class RollbackIncomplete(Exception):
    """Traffic is on the stable colour, but a later step failed. Raised after every step
    was tried, so that Lambda retries the event; the retry repeats only what is missing."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _parse(
    event: object, settings: Settings
) -> tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]] | str:
    """``(event, alarmData, state)`` of an event this function must act on, or why not."""
    # Lambda hands over whatever JSON the invoker sent: a malformed event is ignored with a
    # reason, not a stack trace (and not Lambda's retries of a stack trace).
    if not isinstance(event, Mapping):
        return f"the event is {_kind(event)}, not an object"
    if "alarmData" not in event:
        return "the event has no alarmData"
    data = event["alarmData"]
    if not isinstance(data, Mapping):
        return f"alarmData is {_kind(data)}, not an object"
    for field in ("state", "configuration"):
        if data.get(field) is not None and not isinstance(data[field], Mapping):
            return f"alarmData.{field} is {_kind(data[field])}, not an object"
    state = data.get("state") or {}
    if state.get("value") != "ALARM":
        return f"alarm state is {state.get('value')}, not ALARM"
    name = data.get("alarmName")
    if name != settings.alarm_name:
        return f"alarm {name!r} is not this function's alarm {settings.alarm_name!r}"
    description = str((data.get("configuration") or {}).get("description") or "")
    for word in description.split():
        if word.startswith("listener=") and word.removeprefix("listener=") != settings.listener_arn:
            return f"the alarm names another listener ({word.removeprefix('listener=')})"
    return event, data, state


def roll_back(
    event: object,
    settings: Settings,
    clients: Clients,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Act on one alarm event (or a manual abort, which builds the same event).

    Raises :class:`RollbackIncomplete` if traffic went back to stable but the record, the
    page or the incident record failed, after trying all of them."""
    parsed = _parse(event, settings)
    if isinstance(parsed, str):
        log("info", "ignored", reason=parsed)
        return Outcome("ignored", reason=parsed)
    event, data, state = parsed
    incident = incident_id(
        str(event.get("alarmArn", data["alarmName"])),
        str(state.get("timestamp", "")),
        settings.candidate_version,
    )
    stage = _current_stage(clients, settings, sleep)
    # 1. Traffic back to stable: one call, idempotent.
    _send_to_stable(clients, settings, sleep, incident)
    record = _rollback_record(event, data, state, settings, incident=incident, stage=stage)
    failed: dict[str, Exception] = {}
    """Step -> its error: the later steps run anyway, then the invocation fails."""
    # 2. The record, which keeps the next `pulumi up` from undoing the rollback.
    try:
        found = _write_record(clients, settings, sleep, record)
    except AWS_ERRORS as error:
        # On-call must hear of the rollback even if SSM is down: page, then fail.
        log(
            "error",
            "could not write the rollback record",
            incident=incident,
            error=_describe(error),
        )
        failed["rollback record"] = error
    else:
        if found is not None:
            return found
    key = f"{settings.incident_prefix}/{incident}.json"
    location = f"s3://{settings.incident_bucket}/{key}"
    # 3. The page, before the incident object: S3 must not delay or prevent it.
    summary = _summary(settings, stage, data["alarmName"], location, failed.get("rollback record"))
    message = {**record, "incidentRecord": location, "summary": summary}
    try:
        paged = _page(clients, settings, sleep, incident, message)
    except AWS_ERRORS as error:
        failed["page"] = error
        paged = False
    # 4. The incident record (its retry is harmless: a conditional create).
    body = {**record, "event": event}
    incident_error = _write_incident(clients, settings, sleep, body, key=key, location=location)
    if incident_error is not None:
        failed["incident record"] = incident_error
    return _conclude(settings, incident, state, location=location, paged=paged, failed=failed)


def _send_to_stable(
    clients: Clients, settings: Settings, sleep: Callable[[float], None], incident: str
) -> None:
    """Step 1: the listener's one ``ModifyListener`` call; its failure fails the invocation."""
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


def _rollback_record(
    event: Mapping[str, Any],
    data: Mapping[str, Any],
    state: Mapping[str, Any],
    settings: Settings,
    *,
    incident: str,
    stage: int | None,
) -> dict[str, Any]:
    """What the rollback record, the page and the incident record all say."""
    return {
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


def _write_record(
    clients: Clients,
    settings: Settings,
    sleep: Callable[[float], None],
    record: Mapping[str, Any],
) -> Outcome | None:
    """Step 2: create the rollback record. An :class:`Outcome` to stop with (the candidate
    was rolled back and paged for under another incident), or None to go on. AWS errors
    are raised."""

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

    try:
        put_record(overwrite=False)
    except ClientError as error:
        if _code(error) != "ParameterAlreadyExists":
            raise
        existing = _read_record(clients, settings, sleep)
        if existing.get("incident") == record["incident"]:
            # Another delivery of this incident, or a retry of one that failed later
            # on: the page marker decides whether to page.
            pass
        elif existing.get("candidate") == settings.candidate_version:
            log("info", "already rolled back", incident=existing.get("incident"))
            return Outcome("already", str(existing.get("incident")), "record exists")
        else:
            # A record of an earlier candidate that nobody acknowledged: this one
            # replaces it.
            log("warning", "replacing a stale rollback record", stale=existing)
            put_record(overwrite=True)
    return None


def _summary(
    settings: Settings,
    stage: int | None,
    alarm: str,
    location: str,
    record_error: Exception | None,
) -> str:
    """The page's text for people: what happened, where traffic is, what to do next."""
    summary = (
        f"{settings.candidate_version} ({settings.candidate_colour}) was rolled back at "
        f"stage {stage}: {alarm} went to ALARM. All traffic is on "
        f"{settings.stable_colour}. Incident record: {location} (written just after this "
        "page; the function's log says if that failed). After review: weightshift rollout ack."
    )
    if record_error is not None:
        summary += (
            f" The rollback record {settings.record_parameter} could not be written "
            f"({_describe(record_error)}): until the function's retry writes "
            f"it, a `pulumi up` would send traffic back to {settings.candidate_colour}."
        )
    return summary


def _write_incident(
    clients: Clients,
    settings: Settings,
    sleep: Callable[[float], None],
    body: Mapping[str, Any],
    *,
    key: str,
    location: str,
) -> Exception | None:
    """Step 4: the incident object ``key``, created once under Object Lock; the error if it
    failed (found already written is fine)."""
    incident = body["incident"]
    try:
        call(
            clients.s3.put_object,
            sleep=sleep,
            Bucket=settings.incident_bucket,
            Key=key,
            Body=json.dumps(body, sort_keys=True, default=str).encode(),
            ContentType="application/json",
            IfNoneMatch="*",
            # Object Lock requires a checksum; named here rather than left to the
            # default of whichever botocore the Lambda runtime bundles.
            ChecksumAlgorithm="SHA256",
            # No encryption headers: the bucket's default (SSE-KMS, its own key) applies.
        )
        log("info", "incident record written", incident=incident, record=location)
    except AWS_ERRORS as error:
        if isinstance(error, ClientError) and _code(error) in (
            "PreconditionFailed",
            "ConditionalRequestConflict",
        ):
            log("info", "incident record already written", incident=incident)
            return None
        log(
            "error",
            "could not write the incident record",
            incident=incident,
            error=_describe(error),
        )
        return error
    return None


def _conclude(
    settings: Settings,
    incident: str,
    state: Mapping[str, Any],
    *,
    location: str,
    paged: bool,
    failed: Mapping[str, Exception],
) -> Outcome:
    """The invocation's outcome, or :class:`RollbackIncomplete` naming every failed step."""
    if failed:
        steps = "; ".join(f"{step}: {_describe(error)}" for step, error in failed.items())
        raise RollbackIncomplete(
            f"incident {incident}: traffic is on {settings.stable_colour}, "
            f"{'on-call was paged' if paged else 'on-call was not paged by this invocation'}, "
            f"but these failed (Lambda retries the event): {steps}"
        ) from next(iter(failed.values()))
    if paged:
        log("warning", "rolled back and on-call paged", incident=incident, record=location)
        return Outcome("rolled-back", incident, str(state.get("reason", "")), paged=True)
    return Outcome("already", incident, "on-call already paged for this incident")


def _page(
    clients: Clients,
    settings: Settings,
    sleep: Callable[[float], None],
    incident: str,
    message: Mapping[str, Any],
) -> bool:
    """Publish ``message`` unless the page of ``incident`` is already claimed; whether it was
    published. If the publish fails, the claim is released and the error raised."""
    marker = page_marker(settings.record_parameter, incident)
    claimed = False
    try:
        call(
            clients.ssm.put_parameter,
            sleep=sleep,
            # A retry after a lost response would find its own marker and never page.
            maybe_applied=False,
            Name=marker,
            Value=json.dumps({"incident": incident, "at": _now()}, sort_keys=True),
            Type="String",
            Overwrite=False,
            Description="weightshift: on-call was paged for this rollback incident",
        )
        claimed = True
    except AWS_ERRORS as error:
        if isinstance(error, ClientError) and _code(error) == "ParameterAlreadyExists":
            log("info", "on-call already paged for this incident", incident=incident)
            return False
        log(
            "warning",
            "could not claim the page; paging anyway, as a duplicate page beats silence",
            incident=incident,
            marker=marker,
            error=_describe(error),
        )
    try:
        call(
            clients.sns.publish,
            sleep=sleep,
            TopicArn=settings.topic_arn,
            Subject=f"weightshift rollback: {settings.candidate_version}"[:100],
            Message=json.dumps(message, sort_keys=True, default=str),
        )
    except AWS_ERRORS as error:
        log("error", "could not page on-call", incident=incident, error=_describe(error))
        if claimed:
            try:
                call(clients.ssm.delete_parameter, sleep=sleep, Name=marker)
            except AWS_ERRORS as cleanup:
                log(
                    "error",
                    "could not release the page claim: a retry will not page",
                    incident=incident,
                    marker=marker,
                    error=_describe(cleanup),
                )
        raise
    log("info", "on-call paged", incident=incident)
    return True


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


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda entry point."""
    settings = Settings.from_environment()
    log("info", "invoked", event=event)
    return roll_back(event, settings, Clients.default()).to_json()
