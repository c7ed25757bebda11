"""What happened to a stack's rollout, in time order: stages, incidents, rollbacks, acks.

Read from the two places that keep it, never from local files:

- the stack's update history (``pulumi stack history``): each successful ``pulumi up`` is a
  ``stage`` event, with its message (``weightshift rollout promote to stage 3``) and the
  stage it deployed, read off the ``weightshift:rollout`` config it ran with;
- the incident records in the artifact bucket (``incidents/<model>/<stack>/``), written
  under Object Lock by the rollback function: each is an ``incident`` (the alarm going to
  ALARM, or a manual abort) and a ``rollback`` (all traffic to the stable colour); the
  ``<incident>.ack.json`` beside it, written by ``weightshift rollout ack``, is an ``ack``;
  each stage gate decision that ``rollout promote`` refused or overrode, or on which
  ``rollout advance`` aborted (``decisions/`` under the same prefix), is a ``decision``.

Who ran a ``pulumi up`` is not in its history (the CLI records no user), so stage events
have no ``by``; a manual abort and an ack name the user who ran them.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from weightshift.config import NAMESPACE, load
from weightshift.rollout.commands import (
    ACK_SUFFIX,
    DECISIONS,
    ROLLOUT_KEY,
    AwsView,
    StackBackend,
    StoredObject,
    Update,
    incident_location,
    incident_prefix,
)
from weightshift.stages import DEFAULT_MIRROR_PERCENT, Colour, Strategy, weights_for

COLUMNS = ("time (UTC)", "kind", "detail", "by")
"""The columns of :meth:`Event.row`."""
MANUAL_SOURCE = "weightshift.rollout.abort"
"""The ``source`` of an incident that ``weightshift rollout abort`` started."""


class Kind(enum.StrEnum):
    # In the order events of the same second happened: the gate's decision, the alarm (or
    # the abort it led to), the rollback it triggered, the ack, the deploy after it.
    DECISION = "decision"
    INCIDENT = "incident"
    ROLLBACK = "rollback"
    ACK = "ack"
    STAGE = "stage"


_ORDER = {kind: rank for rank, kind in enumerate(Kind)}


@dataclass(frozen=True)
class Event:
    time: datetime
    """Aware, UTC."""
    kind: Kind
    detail: str
    by: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    """What a script may want beside the detail: stage, weights, incident, record..."""

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "kind": self.kind.value,
            "detail": self.detail,
            "by": self.by,
            **self.facts,
        }

    def row(self) -> list[str]:
        """The cells under :data:`COLUMNS`."""
        return [f"{self.time:%Y-%m-%d %H:%M:%S}", self.kind.value, self.detail, self.by or ""]


def to_json(events: list[Event]) -> list[dict[str, Any]]:
    return [event.to_json() for event in events]


def rows(events: list[Event]) -> list[list[str]]:
    return [event.row() for event in events]


def _time(value: object) -> datetime | None:
    """An ISO 8601 time as the function writes them (``+00:00``, or CloudWatch's
    ``+0000``), in UTC; None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _deployed(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stage an update's config deploys, with its weights; None if it has no (valid)
    ``weightshift:rollout``: an update from before the rollout config existed."""
    rollout = config.get(ROLLOUT_KEY)
    if not isinstance(rollout, dict):
        return None
    try:
        strategy = Strategy(rollout["strategy"])
        stage = int(rollout["stage"])
        candidate = Colour(rollout["candidate"])
        mirror = float(rollout.get("mirrorPercent", DEFAULT_MIRROR_PERCENT))
        weights = weights_for(strategy, stage, candidate, mirror)
    except (TypeError, KeyError, ValueError):
        return None
    colour = config.get(f"{NAMESPACE}:{candidate.value}")
    return {
        "strategy": strategy.value,
        "stage": stage,
        "candidate": candidate.value,
        "candidateVersion": colour.get("version") if isinstance(colour, dict) else None,
        "weights": {"blue": weights.blue, "green": weights.green, "mirror": weights.mirror},
        "percent": {
            "served": weights.percent(candidate.value),
            "mirrored": weights.percent("mirror"),
        },
    }


def _stage_event(update: Update) -> Event | None:
    """A successful ``pulumi up`` as a stage event; None for any other operation."""
    if update.kind != "update" or update.result != "succeeded":
        return None
    detail = update.message or "pulumi up"
    facts: dict[str, Any] = {"update": update.version, "resourceChanges": update.resource_changes}
    deployed = _deployed(update.config)
    if deployed is not None:
        served, mirrored = deployed["percent"]["served"], deployed["percent"]["mirrored"]
        detail += (
            f": {deployed['strategy']} stage {deployed['stage']}, "
            f"{deployed['candidate']} serves {served:g} %"
            + (f", {mirrored:g} % mirrored to it" if mirrored else "")
        )
        facts |= deployed
    return Event(update.end or update.start, Kind.STAGE, detail, None, facts)


def _record_events(bucket: str, stored: StoredObject) -> list[Event]:
    """The incident and rollback of one incident record, or its ack."""
    location = f"s3://{bucket}/{stored.key}"
    try:
        document = json.loads(stored.body)
    except ValueError as error:
        document = f"not JSON ({error})"
    if not isinstance(document, dict):
        return [
            Event(
                stored.modified,
                Kind.INCIDENT,
                f"unreadable record {location}: {document}",
                facts={"record": location},
            )
        ]
    incident = str(document.get("incident") or stored.key.rsplit("/", 1)[-1].split(".")[0])
    facts = {"incident": incident, "record": location, "candidate": document.get("candidate")}
    if stored.key.endswith(ACK_SUFFIX):
        by = document.get("by")
        return [
            Event(
                _time(document.get("at")) or stored.modified,
                Kind.ACK,
                f"incident {incident} acknowledged ({document.get('candidate')}): the stack "
                "config went back to stage 0 and the rollback record was cleared",
                str(by) if by else None,
                facts,
            )
        ]
    raw = document.get("event")
    event: dict[str, Any] = raw if isinstance(raw, dict) else {}
    manual = document.get("source") == MANUAL_SOURCE
    user = str(event.get("alarmArn", "")).removeprefix("manual-abort:") if manual else None
    at = _time(document.get("at")) or stored.modified
    stage = document.get("stage")
    where = f" at stage {stage}" if stage is not None else ""
    reason = str(document.get("reason") or "no reason given")
    return [
        Event(
            _time(document.get("alarmTransitionAt")) or at,
            Kind.INCIDENT,
            f"incident {incident}: "
            + (reason if manual else f"{document.get('alarm')} went to ALARM ({reason})"),
            user,
            facts | {"alarm": document.get("alarm")},
        ),
        Event(
            at,
            Kind.ROLLBACK,
            f"{document.get('candidate')} ({document.get('candidateColour')}) rolled "
            f"back{where}: all traffic to {document.get('stableColour')}",
            user if manual else "rollback function",
            facts | {"stage": stage},
        ),
    ]


def _decision_event(bucket: str, stored: StoredObject) -> Event:
    """A stage gate decision record (``rollout promote`` or ``rollout advance``)."""
    location = f"s3://{bucket}/{stored.key}"
    try:
        document = json.loads(stored.body)
    except ValueError as error:
        document = f"not JSON ({error})"
    if not isinstance(document, dict):
        detail = f"unreadable decision record {location}: {document}"
        return Event(stored.modified, Kind.DECISION, detail, facts={"record": location})
    shadow = document.get("shadowGate")
    shadow_criteria = shadow.get("criteria") if isinstance(shadow, dict) else None
    failing = [
        str(c.get("name"))
        for criteria in (document.get("criteria"), shadow_criteria)
        for c in (criteria if isinstance(criteria, list) else [])
        if isinstance(c, dict) and c.get("decision") == "fail"
    ]
    override = document.get("override")
    reason = override.get("reason") if isinstance(override, dict) else None
    detail = (
        f"stage {document.get('stage')} gate {document.get('decision')}"
        + (f" ({', '.join(failing)})" if failing else "")
        + f": {document.get('command')} {document.get('action')}"
        + (f" ({reason})" if reason else "")
    )
    by = document.get("by")
    facts = {
        "record": location,
        "stage": document.get("stage"),
        "decision": document.get("decision"),
        "action": document.get("action"),
        "candidate": (document.get("candidate") or {}).get("version")
        if isinstance(document.get("candidate"), dict)
        else None,
    }
    at = _time(document.get("at")) or stored.modified
    return Event(at, Kind.DECISION, detail, str(by) if by else None, facts)


def build_history(
    backend: StackBackend, aws: AwsView, model: str, stack: str, bucket: str
) -> list[Event]:
    """Every event of ``stack`` in time order: its updates, and the incident records and
    acks under ``incidents/<model>/<stack>/`` in ``bucket``."""
    events = [event for update in backend.history() if (event := _stage_event(update))]
    for stored in aws.incident_objects(bucket, incident_prefix(model, stack)):
        if f"/{DECISIONS}/" in stored.key:
            events.append(_decision_event(bucket, stored))
        elif stored.key.endswith(".json"):
            events += _record_events(bucket, stored)
    return sorted(events, key=lambda event: (event.time, _ORDER[event.kind]))


def stack_history(stack: str, backend: StackBackend, aws: AwsView) -> list[Event]:
    """:func:`build_history` with the model and bucket read off the stack: the deployed
    rollback function's bucket, else the artifact bucket."""
    config = load(backend.config(), source=f"config of stack {stack}")
    bucket, _ = incident_location(config, backend.outputs(), stack)
    return build_history(backend, aws, config.model, stack, bucket)
