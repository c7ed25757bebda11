"""The operator's rollout commands: status, promote, abort, ack, finish.

Each command reads the stack's config and outputs through :class:`StackBackend` (the
Pulumi Automation API in real use, :class:`AutomationBackend`; a fake in tests) and the
live state through :class:`AwsView` (CloudWatch alarm states and the gateways' metrics, the
rollback record in SSM, the incident and decision records in S3). A command that changes the
rollout edits the stack config (``Pulumi.<stack>.yaml``: commit it) and runs ``pulumi up``;
nothing moves without the checks below, and ``promote`` moves only on the stage gate's
evidence (:mod:`weightshift.gates.stage`), over the window since the stage started.
"""

from __future__ import annotations

import contextlib
import copy
import getpass
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from weightshift.config import NAMESPACE, StackConfig, load
from weightshift.console import paragraph, table_text
from weightshift.evidence.sequential import Decision, Verdict
from weightshift.gates.shadow import ShadowEvidenceError, ShadowGateDecision, check_comparison
from weightshift.gates.shadow import decide as decide_shadow
from weightshift.gates.stage import Counts, Criterion, StageGate, decide, read_counts
from weightshift.gates.verdict import BLOCKED_BY_EVALUATION
from weightshift.lambdas import rollback as rollback_function
from weightshift.rollout import capacity
from weightshift.rollout.errors import RolloutError as RolloutError  # noqa: PLC0414 (re-export)
from weightshift.rollout.record import RollbackRecord
from weightshift.rollout.record import read as read_record
from weightshift.stages import (
    Colour,
    Stage,
    Strategy,
    Weights,
    next_step,
    schedule,
    stage_of,
    weights_for,
)

if TYPE_CHECKING:
    from weightshift.shadow.report import Report

ROLLOUT_KEY = f"{NAMESPACE}:rollout"
ACK_SUFFIX = ".ack.json"
"""An acknowledgement's key: its incident record's key with this suffix for ``.json``."""
DECISIONS = "decisions"
"""The folder of the stage gate's decision records, under the incident prefix:
``decisions/<time>-stage<N>-<decision>.json``."""
_DECISION_TRIES = 20
"""Names tried for one decision record (``-2``, ``-3``... when the second is taken)."""


def incident_prefix(model: str, stack: str) -> str:
    """Where the rollback function writes a stack's incident records (``INCIDENT_PREFIX``)."""
    return f"incidents/{model}/{stack}"


class EvidenceError(RolloutError):
    """The stage gate's evidence (the gateways' metrics in CloudWatch) cannot be read, or
    is not what the gateways send: nothing is decided on it."""


def incident_location(
    config: StackConfig, outputs: Mapping[str, Any], stack: str
) -> tuple[str, str]:
    """The bucket and prefix of the stack's incident records: where its deployed rollback
    function writes them, else where the program would point it (the artifact bucket)."""
    settings = (outputs.get("rollback") or {}).get("settings") or {}
    return (
        str(settings.get("INCIDENT_BUCKET") or config.artifacts.bucket_name),
        str(settings.get("INCIDENT_PREFIX") or incident_prefix(config.model, stack)).rstrip("/"),
    )


@dataclass(frozen=True)
class Update:
    """One operation in the stack's history (``pulumi stack history``)."""

    kind: str
    """``update``, ``preview``, ``refresh``, ``destroy``..."""
    result: str
    """``succeeded``, ``failed``, ``in-progress``."""
    message: str
    start: datetime
    end: datetime | None
    config: dict[str, Any]
    """The stack config the operation ran with, as :meth:`StackBackend.config` decodes it
    (secrets are ``[secret]``)."""
    resource_changes: dict[str, int] = field(default_factory=dict)
    version: int | None = None


@dataclass(frozen=True)
class StoredObject:
    """An object read from the incident bucket."""

    key: str
    modified: datetime
    body: bytes


class StackBackend(Protocol):
    """The stack, as the Automation API sees it."""

    def config(self) -> dict[str, Any]:
        """Fully qualified keys (``weightshift:rollout``, ``aws:region``) to decoded values."""
        ...

    def set_config(self, key: str, value: Any) -> None: ...

    def up(self, message: str) -> str:
        """Deploy; return a one-line summary of what changed."""
        ...

    def outputs(self) -> dict[str, Any]: ...

    def last_update(self) -> datetime | None:
        """When the last successful update finished."""
        ...

    def history(self) -> list[Update]:
        """Every operation on the stack, newest first."""
        ...


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _utc(moment: datetime) -> datetime:
    """The Automation API parses the CLI's UTC times without a zone."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class AutomationBackend:
    """The real stack through the Pulumi Automation API (needs the Pulumi CLI)."""

    def __init__(self, project: Path, stack: str) -> None:
        from pulumi import automation as auto  # noqa: PLC0415 (only with the CLI present)

        if shutil.which("pulumi") is None:
            raise RolloutError(
                "the rollout commands drive `pulumi up` through the Automation API and need "
                "the Pulumi CLI on PATH (https://www.pulumi.com/docs/install/). `weightshift "
                "plan` and `synth` work without it."
            )
        self._auto = auto
        self.name = stack
        with self._engine("selecting"):
            self.stack = auto.select_stack(stack_name=stack, work_dir=str(project))

    @contextlib.contextmanager
    def _engine(self, doing: str) -> Iterator[None]:
        """A failed Pulumi CLI command as a RolloutError: one paragraph with the end of its
        standard error, not a traceback (its standard output was already printed)."""
        try:
            yield
        except self._auto.CommandError as error:
            stderr = str(error).rpartition("\n stderr: ")[2]
            tail = " ".join(line.strip() for line in stderr.strip().splitlines()[-5:])
            raise RolloutError(
                f"pulumi failed while {doing} stack {self.name}: {tail or 'no message'}"
            ) from None

    def config(self) -> dict[str, Any]:
        with self._engine("reading the config of"):
            found = self.stack.get_all_config()
        return {key: _decode(value.value) for key, value in found.items()}

    def set_config(self, key: str, value: Any) -> None:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        with self._engine(f"setting {key} on"):
            self.stack.set_config(key, self._auto.ConfigValue(value=text))

    def up(self, message: str) -> str:
        with self._engine("updating"):
            result = self.stack.up(message=message, on_output=print)
        changes = result.summary.resource_changes or {}
        return ", ".join(f"{kind} {count}" for kind, count in sorted(changes.items()))

    def outputs(self) -> dict[str, Any]:
        with self._engine("reading the outputs of"):
            found = self.stack.outputs()
        return {key: output.value for key, output in found.items()}

    def last_update(self) -> datetime | None:
        with self._engine("reading the history of"):
            updates = self.stack.history(page_size=10)
        for update in updates:
            if update.result == "succeeded" and update.kind == "update" and update.end_time:
                return _utc(update.end_time)
        return None

    def history(self) -> list[Update]:
        with self._engine("reading the history of"):
            # Secrets stay hidden: the history is for reading, not for deploying.
            updates = self.stack.history(show_secrets=False)
        return [
            Update(
                kind=update.kind,
                result=update.result,
                message=update.message,
                start=_utc(update.start_time),
                end=_utc(update.end_time) if update.end_time else None,
                config={key: _decode(value.value) for key, value in update.config.items()},
                # Plain strings from the CLI's JSON, typed as the OpType enum.
                resource_changes={
                    str(getattr(op, "value", op)): count
                    for op, count in (update.resource_changes or {}).items()
                },
                version=update.version,
            )
            for update in updates
        ]


class AwsView:
    """Live state: alarm states, the rollback record, the incident records and their acks."""

    def __init__(
        self,
        cloudwatch: Any = None,
        ssm: Any = None,
        sns: Any = None,
        s3: Any = None,
        metrics: Any = None,
        *,
        region: str | None = None,
    ) -> None:
        # In the stack's region (aws:region), whatever the environment says: the record, the
        # alarms and the gateways' metrics live there, and a client elsewhere finds none.
        self.cloudwatch = cloudwatch or boto3.client("cloudwatch", region_name=region)
        self.ssm = ssm or boto3.client("ssm", region_name=region)
        self.sns = sns or boto3.client("sns", region_name=region)
        self.s3 = s3 or boto3.client("s3", region_name=region)
        self.metrics = metrics or self.cloudwatch
        """The client the stage gate reads the gateways' metrics with (``GetMetricData``)."""

    def stage_counts(
        self, config: StackConfig, since: datetime, until: datetime
    ) -> dict[Colour, Counts]:
        """Both colours' evidence over [since, until), as :func:`read_counts` reads it,
        refused unless every answer is complete and every count a plausible one."""
        checked = _CheckedMetrics(self.metrics)
        try:
            counts = read_counts(
                checked, config.model, config.rollout.thresholds.latency_p99_seconds, since, until
            )
        except EvidenceError:
            raise
        except (ClientError, BotoCoreError) as error:
            raise EvidenceError(
                f"cannot read the gateways' metrics from CloudWatch ({error}): your AWS "
                "identity needs cloudwatch:GetMetricData in the stack's region."
            ) from None
        except (KeyError, TypeError, ValueError) as error:
            raise EvidenceError(
                f"CloudWatch's GetMetricData answer is not what it sends ({type(error).__name__}: "
                f"{error}): nothing is decided on it."
            ) from None
        for colour, tally in counts.items():
            for name, value in vars(tally).items():
                if not math.isfinite(value) or value < 0:
                    raise EvidenceError(
                        f"the {colour.value} colour's {name} over the stage is {value}, which "
                        "no gateway sends (metrics in the weightshift namespace are written "
                        "only by the gateways): nothing is decided on it; find who else "
                        "writes there."
                    )
        return counts

    def shadow_report(
        self,
        config: StackConfig,
        bucket: str,
        prefixes: Sequence[str],
        since: datetime,
        until: datetime,
    ) -> Report:
        """The shadow report over the stack's two versions' pairs under ``prefixes`` of
        ``bucket`` (the hash-only and the text-bearing ones) in [since, until), figures only
        (no judge, no embeddings), read with the embedded engine as ``weightshift shadow
        report`` reads them. An object that cannot be downloaded refuses the whole report:
        nothing is decided on part of the evidence."""
        import tempfile  # noqa: PLC0415

        from weightshift.shadow.pipeline import Options, report_from  # noqa: PLC0415 (DuckDB)
        from weightshift.shadow.report import ShadowReportError  # noqa: PLC0415
        from weightshift.shadow.source import SourceError, download, s3_keys  # noqa: PLC0415
        from weightshift.shadow.source import parse_source as source_of  # noqa: PLC0415

        rollout = config.rollout
        where = ", ".join(f"s3://{bucket}/{prefix}/" for prefix in prefixes)
        try:
            with tempfile.TemporaryDirectory(prefix="weightshift-shadow-gate-") as scratch:
                fetched = 0
                for index, prefix in enumerate(prefixes):
                    source = source_of(f"s3://{bucket}/{prefix}")
                    keys = list(s3_keys(self.s3, source, config.model, since, until))
                    folder = Path(scratch) / f"{index}"
                    folder.mkdir()
                    paths, _, failed = download(self.s3, source, keys, folder)
                    if failed:
                        name, why = failed[0]
                        raise EvidenceError(
                            f"{len(failed)} shadow record object(s) not read (first {name}: "
                            f"{why}): nothing is decided on part of the evidence."
                        )
                    fetched += len(paths)
                if not fetched:
                    raise EvidenceError(
                        f"no shadow records under {where} since {since:%Y-%m-%d %H:%M} UTC: "
                        "are the stable colour's gateways writing pairs (shadow stage 1)?"
                    )
                options = Options(
                    records=scratch,
                    model=config.model,
                    stable=config.colour(rollout.stable).version,
                    candidate=config.colour(rollout.candidate).version,
                    since=since,
                    until=until,
                    sample=0,
                    divergent=0,
                )
                report = report_from(options)
        except (ShadowReportError, SourceError) as error:
            raise EvidenceError(f"the shadow records under {where}: {error}") from None
        except (ClientError, BotoCoreError) as error:
            raise EvidenceError(
                f"cannot read the shadow records under {where} ({error}): your AWS identity "
                "needs s3:ListBucket and s3:GetObject there (and kms:Decrypt for the text "
                "pairs)."
            ) from None
        records = report.records.model_copy(update={"source": where})
        return report.model_copy(update={"records": records})

    def put_decision(self, bucket: str, stem: str, document: Mapping[str, Any]) -> str:
        """Create a decision record at ``stem.json`` (``stem-2.json``... when taken, so a
        record is never overwritten), as :meth:`put_ack` creates acks; its key."""
        body = json.dumps(document, sort_keys=True, indent=2).encode()
        for attempt in range(1, _DECISION_TRIES + 1):
            key = f"{stem}.json" if attempt == 1 else f"{stem}-{attempt}.json"
            try:
                self.s3.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/json",
                    IfNoneMatch="*",
                    ChecksumAlgorithm="SHA256",
                )
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    continue
                raise RolloutError(
                    f"cannot record the stage gate's decision at s3://{bucket}/{key} ({error}): "
                    "nothing was changed. Your AWS identity needs s3:PutObject there (and "
                    "kms:GenerateDataKey on the bucket's key)."
                ) from None
            except BotoCoreError as error:
                raise RolloutError(
                    f"cannot record the stage gate's decision at s3://{bucket}/{key} ({error}): "
                    "nothing was changed."
                ) from None
            return key
        raise RolloutError(
            f"cannot record the stage gate's decision: s3://{bucket}/{stem}.json and "
            f"{_DECISION_TRIES - 1} numbered names beside it are taken; nothing was changed."
        )

    def confirmed_subscriptions(self, topic_arn: str) -> int:
        """Subscriptions of ``topic_arn`` that receive messages. An email or HTTPS
        subscription is listed as ``PendingConfirmation`` until its owner confirms it, and
        until then a page goes nowhere."""
        found = 0
        paginator = self.sns.get_paginator("list_subscriptions_by_topic")
        for page in paginator.paginate(TopicArn=topic_arn):
            for subscription in page.get("Subscriptions", []):
                if str(subscription.get("SubscriptionArn", "")).startswith("arn:"):
                    found += 1
        return found

    def alarm_states(self, names: Sequence[str]) -> dict[str, str]:
        if not names:
            return {}
        found: dict[str, str] = {}
        paginator = self.cloudwatch.get_paginator("describe_alarms")
        for page in paginator.paginate(
            AlarmNames=list(names), AlarmTypes=["MetricAlarm", "CompositeAlarm"]
        ):
            for alarm in [*page.get("MetricAlarms", []), *page.get("CompositeAlarms", [])]:
                found[alarm["AlarmName"]] = alarm["StateValue"]
        return {name: found.get(name, "MISSING") for name in names}

    def record(self, parameter: str) -> RollbackRecord | None:
        return read_record(parameter, self.ssm)

    def delete_record(self, parameter: str) -> None:
        try:
            self.ssm.delete_parameter(Name=parameter)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ParameterNotFound":
                raise

    def put_ack(self, bucket: str, key: str, document: Mapping[str, Any]) -> bool:
        """Create the acknowledgement object as the rollback function creates incident
        records: conditional create under the bucket's Object Lock, SHA-256 checksum, the
        bucket's default encryption. False if it exists (an ack run again after a failure)."""
        try:
            self.s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=json.dumps(document, sort_keys=True).encode(),
                ContentType="application/json",
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise RolloutError(
                f"cannot record the acknowledgement at s3://{bucket}/{key} ({error}). The "
                "rollback record is kept: your "
                "AWS identity needs s3:PutObject there (and kms:GenerateDataKey on the "
                "bucket's key); then run `weightshift rollout ack` again."
            ) from None
        return True

    def incident_objects(self, bucket: str, prefix: str) -> list[StoredObject]:
        """Every object under ``prefix/``: the incident records and their acks."""
        found: list[StoredObject] = []
        try:
            paginator = self.s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/"):
                for item in page.get("Contents", []):
                    body = self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                    found.append(StoredObject(item["Key"], _utc(item["LastModified"]), body))
        except ClientError as error:
            raise RolloutError(
                f"cannot read the incident records under s3://{bucket}/{prefix}/ ({error}): "
                "your AWS identity needs "
                "s3:ListBucket and s3:GetObject there, and kms:Decrypt on the bucket's key."
            ) from None
        return found


_MAX_METRIC_PAGES = 200
"""GetMetricData pages read for one gate: a 15-day stage at 60-second periods is four."""
_READABLE = ("Complete", "PartialData")
"""A result's StatusCode with values to count (PartialData: the rest is on the next page)."""


class _CheckedMetrics:
    """A CloudWatch client for :func:`read_counts` that refuses what must not be counted: a
    result CloudWatch could not compute (``InternalError``, ``Forbidden``: its values would
    count as zero, and a candidate's missing errors look like no errors), and paging without
    end."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._pages = 0

    def get_metric_data(self, **request: Any) -> Mapping[str, Any]:
        self._pages += 1
        if self._pages > _MAX_METRIC_PAGES:
            raise EvidenceError(
                f"GetMetricData answered more than {_MAX_METRIC_PAGES} pages for one stage: "
                "nothing is decided on it."
            )
        answer: Mapping[str, Any] = self._client.get_metric_data(**request)
        for result in answer.get("MetricDataResults", []):
            status = result.get("StatusCode")
            if status not in _READABLE:
                raise EvidenceError(
                    f"CloudWatch could not compute the gateways' metric {result.get('Id')} "
                    f"(status {status}): nothing is decided on partial evidence. Run again; if "
                    "it persists, check the identity's cloudwatch:GetMetricData permission."
                )
        return answer


def _deployed_key(config: Mapping[str, Any]) -> tuple[str, ...] | None:
    """What makes a stage the same stage: strategy, stage, candidate colour and version."""
    rollout = config.get(ROLLOUT_KEY)
    if not isinstance(rollout, Mapping):
        return None
    candidate = str(rollout.get("candidate"))
    colour = config.get(f"{NAMESPACE}:{candidate}")
    version = colour.get("version") if isinstance(colour, Mapping) else None
    return (str(rollout.get("strategy")), str(rollout.get("stage")), candidate, str(version))


def stage_start(updates: Sequence[Update], config: StackConfig) -> datetime | None:
    """When the configured stage started: the end of the oldest of the newest successful
    updates that all deployed it (same strategy, stage and candidate version), so an
    unrelated ``pulumi up`` within a stage does not restart it. None when the newest
    successful update deployed something else (the config is not deployed yet) or there is
    none. ``updates`` newest first, as :meth:`StackBackend.history` gives them."""
    rollout = config.rollout
    wanted = (
        rollout.strategy.value,
        str(rollout.stage),
        rollout.candidate.value,
        str(config.colour(rollout.candidate).version),
    )
    start: datetime | None = None
    for update in updates:
        if update.kind != "update" or update.result != "succeeded":
            continue
        if _deployed_key(update.config) != wanted:
            break
        start = update.end or update.start
    return start


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.4g}"


def describe(criterion: Criterion) -> str:
    """One criterion with the numbers that decided it."""
    verdict = criterion.verdict
    parts = [criterion.name]
    if criterion.candidate is not None and criterion.stable is not None:
        parts.append(
            f"candidate {_number(criterion.candidate)}, stable {_number(criterion.stable)}"
        )
    elif criterion.candidate is not None:
        parts.append(f"candidate {_number(criterion.candidate)}")
    if verdict.estimate is not None:
        lower, upper = verdict.interval
        parts.append(f"estimate {verdict.estimate:.3g} in [{lower:.3g}, {upper:.3g}]")
    if criterion.note:
        parts.append(criterion.note)
    return " ".join([f"{parts[0]}:", ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]


@dataclass(frozen=True)
class Wait:
    """How much longer an inconclusive stage needs, at the candidate's present share and
    rate of requests."""

    requests: int | None
    """More candidate requests that would decide every undecided criterion at the present
    rates; None when no number would (no events yet, or an estimate on its margin)."""
    undecided: tuple[str, ...]
    share: float | None
    """The candidate's share of both colours' requests over the window."""
    rate: float
    """The candidate's requests per second over the window."""
    duration: timedelta | None
    """``requests`` at ``rate`` (None when either is unknown or the rate is zero)."""
    bake: timedelta | None
    """The stage's bake time left (None when baked)."""

    def text(self) -> str:
        parts: list[str] = []
        if self.undecided:
            share = f"{self.share:.1%} share, " if self.share is not None else ""
            at = f"at its present {share}{_number(self.rate * 60)} requests/min"
            if self.requests is None:
                parts.append(
                    f"{', '.join(self.undecided)} undecided, and no count of candidate requests "
                    "would decide at the present rates (no events yet, or an estimate on its "
                    "margin): look again later"
                )
            elif self.duration is None:
                parts.append(
                    f"the candidate needs about {self.requests:,} more requests "
                    f"({', '.join(self.undecided)}), and served none in the window"
                )
            else:
                parts.append(
                    f"the candidate needs about {self.requests:,} more requests "
                    f"({', '.join(self.undecided)}) {at}: about {_span(self.duration)}"
                )
        if self.bake is not None:
            parts.append(f"the stage bakes for {_duration(self.bake)} more")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "undecided": list(self.undecided),
            "share": self.share,
            "requestsPerSecond": self.rate,
            "seconds": int(self.duration.total_seconds()) if self.duration else None,
            "bakeSeconds": int(self.bake.total_seconds()) if self.bake else None,
        }


@dataclass(frozen=True)
class GateReading:
    """The stage gate over the stage's window, with the counts it stands on."""

    gate: StageGate
    counts: Mapping[Colour, Counts]
    candidate: Colour
    stable: Colour
    bake_left: timedelta | None
    skipped_bake: bool = False

    @property
    def decision(self) -> Decision:
        return self.gate.decision

    def failing(self) -> list[Criterion]:
        return [c for c in self.gate.criteria if c.verdict.decision is Decision.FAIL]

    def baking(self) -> bool:
        return any(
            c.name == "bake" and c.verdict.decision is Decision.INCONCLUSIVE
            for c in self.gate.criteria
        )

    def wait(self) -> Wait:
        candidate, stable = self.counts[self.candidate], self.counts[self.stable]
        seconds = max((self.gate.until - self.gate.since).total_seconds(), 1.0)
        rate = candidate.requests / seconds
        served = candidate.requests + stable.requests
        undecided = [
            c
            for c in self.gate.criteria
            if c.verdict.decision is Decision.INCONCLUSIVE and c.name != "bake"
        ]
        needs: list[int | None] = []
        for criterion in undecided:
            needed = criterion.verdict.needed
            if criterion.name == "quality" and needed is not None:
                # A quality verdict counts feedback scores: as requests, at the present
                # share of requests that get one.
                per_request = candidate.quality_count / candidate.requests if rate else 0.0
                needed = math.ceil(needed / per_request) if per_request else None
            needs.append(needed)
        requests = None if None in needs or not needs else max(n for n in needs if n is not None)
        return Wait(
            requests=requests,
            undecided=tuple(c.name for c in undecided),
            share=candidate.requests / served if served else None,
            rate=rate,
            duration=timedelta(seconds=math.ceil(requests / rate))
            if requests is not None and rate > 0
            else None,
            bake=self.bake_left,
        )

    def counts_json(self) -> dict[str, Any]:
        return {
            "candidate": {"colour": self.candidate.value, **vars(self.counts[self.candidate])},
            "stable": {"colour": self.stable.value, **vars(self.counts[self.stable])},
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.gate.to_json(),
            "counts": self.counts_json(),
            "skippedBake": self.skipped_bake,
            "wait": self.wait().to_json() if self.decision is Decision.INCONCLUSIVE else None,
        }


_SKIPPED_BAKE = Criterion(
    "bake", Verdict(Decision.PASS, None, (0.0, 0.0)), note="skipped (--ignore-bake)"
)
"""The bake criterion of a promotion that skips the bake time (and nothing else)."""


StageChanges = Callable[[Mapping[str, Any], Mapping[str, Any], RollbackRecord | None], list[Any]]
"""The resources that differ between the stack at one config and at another, with the
rollback record the program would read (``weightshift plan``'s diff of two syntheses)."""


@dataclass
class PromotionPreview:
    """What ``promote`` would do, and the stack changes it would deploy: nothing written."""

    status: Status
    reading: GateReading | None
    evidence_error: str | None
    changes: list[Any]
    """:class:`weightshift.preview.plan.Change` of each resource the next stage changes."""
    refusal: str | None
    """Why ``promote`` would refuse; None when it would go ahead."""
    shadow: ShadowGateDecision | None = None
    """At a move between strategies: the shadow gate's decision."""
    shadow_error: str | None = None
    """...or why it could not be read."""

    def shadow_text(self) -> str | None:
        """The shadow gate's lines for the dry run; None where no move is previewed."""
        if self.shadow is not None:
            return self.shadow.render()
        if self.shadow_error is not None:
            return f"shadow gate: not read: {self.shadow_error}"
        return None


@dataclass
class Status:
    stack: str
    config: StackConfig
    stage: Stage
    weights: dict[str, int]
    rendered_stage: int
    in_stage_for: timedelta | None
    alarms: dict[str, str]
    record: RollbackRecord | None
    next_stage: int | None
    next_strategy: Strategy | None = None
    """The strategy of the next stage: the rollout's own, or another at a move between
    strategies (shadow stage 1 to canary stage 1, ``weightshift.stages.STRATEGY_MOVES``)."""
    on_call: int | None = None
    """Confirmed subscriptions of the on-call topic (None: the stack has no topic)."""
    started: datetime | None = None
    """When the stage started (:func:`stage_start`, else the stack's last update)."""
    blockers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the operator should know that does not block promotion."""

    def to_json(self) -> dict[str, Any]:
        rollout = self.config.rollout
        return {
            "stack": self.stack,
            "strategy": rollout.strategy.value,
            "stage": rollout.stage,
            "renderedStage": self.rendered_stage,
            "gate": self.stage.gate,
            "candidate": rollout.candidate.value,
            "candidateVersion": self.config.colour(rollout.candidate).version,
            "stableVersion": self.config.colour(rollout.stable).version,
            "weights": self.weights,
            "stageStartedAt": self.started.isoformat() if self.started else None,
            "inStageSeconds": int(self.in_stage_for.total_seconds())
            if self.in_stage_for is not None
            else None,
            "bakeSeconds": int(self.stage.duration.total_seconds())
            if self.stage.duration
            else None,
            "alarms": self.alarms,
            "rollbackRecord": self.record.model_dump() if self.record else None,
            "nextStage": self.next_stage,
            "nextStrategy": self.next_strategy.value if self.next_strategy else None,
            "onCallSubscriptions": self.on_call,
            "blockers": self.blockers,
            "notes": self.notes,
        }

    @property
    def moving(self) -> bool:
        """The next stage is another strategy's (the shadow gate decides it too)."""
        return self.next_strategy is not None and self.next_strategy is not (
            self.config.rollout.strategy
        )

    @property
    def target(self) -> str:
        """The next stage in words: ``stage 3``, or ``canary stage 1`` at a move."""
        if self.moving and self.next_strategy is not None:
            return f"{self.next_strategy.value} stage {self.next_stage}"
        return f"stage {self.next_stage}"

    def _shares(self) -> str:
        """Each target's share of requests: its weight over the sum (a lone 999 is 100 %)."""
        weights = Weights(**self.weights)
        return ", ".join(
            f"{target} {weights.percent(target):g} %"
            for target, weight in self.weights.items()
            if weight
        )

    def render(self) -> str:
        rollout = self.config.rollout
        lines = [
            f"stack {self.stack}: {rollout.strategy.value}, stage {rollout.stage} "
            f"({self.stage.gate}); candidate {rollout.candidate.value} "
            f"{self.config.colour(rollout.candidate).version}, stable {rollout.stable.value} "
            f"{self.config.colour(rollout.stable).version}",
            "weights: " + self._shares(),
            f"in stage for: {_duration(self.in_stage_for)}"
            + (f" (bake {_duration(self.stage.duration)})" if self.stage.duration else ""),
        ]
        if self.record is not None:
            lines.append(f"ROLLED BACK: {self.record.summary()}")
        if self.alarms:
            lines.append(
                table_text(
                    ["alarm", "state"],
                    [[name, state] for name, state in sorted(self.alarms.items())],
                    no_wrap=["alarm", "state"],
                )
            )
        lines += [paragraph(f"note: {note}") for note in self.notes]
        if self.next_stage is None:
            lines.append("next: none (last stage; `weightshift rollout finish` swaps the roles)")
        elif self.moving:
            lines.append(
                f"promote to {self.target}: "
                + ("blocked: " + "; ".join(self.blockers) if self.blockers else "ready")
                + " (and only if the shadow gate passes)"
            )
        elif self.blockers:
            lines.append(f"promote to {self.next_stage}: blocked: " + "; ".join(self.blockers))
        else:
            lines.append(f"promote to {self.next_stage}: ready")
        return "\n".join(lines)


def _unpaged(topic: str) -> str:
    return (
        f"nobody would be paged: the on-call topic {topic} has no confirmed subscription "
        "(confirm the subscription email, or set weightshift:rollback.onCall)"
    )


def _workflow_run() -> str | None:
    """The GitHub Actions run this command runs in (the scheduled ``advance``), if any."""
    server, repository, run = (
        os.environ.get(name) for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
    )
    return f"{server}/{repository}/actions/runs/{run}" if server and repository and run else None


def _span(value: timedelta) -> str:
    return "a minute" if value < timedelta(minutes=1) else _duration(value)


def _gate_line(reading: GateReading) -> str:
    return ", ".join(f"{c.name} {c.verdict.decision.value}" for c in reading.gate.criteria)


_ORDER = {"pass": 0, "inconclusive": 1, "unread": 2, "fail": 3}


def _worse(first: str, second: str) -> str:
    """The worse of two recorded decisions (fail, unread, inconclusive, pass)."""
    return max(first, second, key=lambda d: _ORDER.get(d, 2))


def read_report_file(path: Path, option: str = "--shadow-report") -> Report:
    """A ``weightshift shadow report`` JSON file, validated, or an EvidenceError naming it."""
    from pydantic import ValidationError  # noqa: PLC0415

    from weightshift.shadow.report import Report  # noqa: PLC0415

    limit = 64 * 1024 * 1024
    try:
        size = path.stat().st_size
        if size > limit:
            raise EvidenceError(
                f"{option} {path}: {size:,} bytes; a report is far smaller (at most "
                f"{limit:,}): is it the report's JSON (report.json)?"
            )
        return Report.model_validate_json(path.read_bytes())
    except OSError as error:
        raise EvidenceError(f"{option} {path}: {error.strerror or error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        raise EvidenceError(
            f"{option} {path}: not a shadow report ({error.error_count()} problems; "
            f"first at {where}: {first['msg']}): give the report.json that `weightshift "
            "shadow report --out DIR` writes"
        ) from None


def _duration(value: timedelta | None) -> str:
    if value is None:
        return "unknown"
    minutes = int(value.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


class Rollout:
    """The commands, over a stack backend and a view of AWS."""

    def __init__(
        self,
        stack: str,
        backend: StackBackend,
        aws: AwsView,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clients: Callable[[], rollback_function.Clients] = rollback_function.Clients.default,
    ) -> None:
        self.stack = stack
        self.backend = backend
        self.aws = aws
        self.now = now
        self.clients = clients

    def _config(self) -> StackConfig:
        return load(self.backend.config(), source=f"config of stack {self.stack}")

    def _set_rollout(self, config: StackConfig, **changes: Any) -> None:
        """Write ``weightshift:rollout`` back with ``changes`` (camelCase keys), all else kept."""
        rollout = config.model_dump(by_alias=True, mode="json")["rollout"]
        self.backend.set_config(ROLLOUT_KEY, {**rollout, **changes})

    def status(self) -> Status:
        config = self._config()
        rollout = config.rollout
        outputs = self.backend.outputs()
        rendered = outputs.get("rollout") or {}
        alarm_names = list((outputs.get("rollback") or {}).get("alarms") or [])
        composite = (outputs.get("rollback") or {}).get("compositeAlarm")
        topic = str((outputs.get("rollback") or {}).get("onCallTopic") or "")
        if composite:
            alarm_names.append(composite)
        parameter = str(rendered.get("recordParameter") or "")
        record = self.aws.record(parameter) if parameter else None
        candidate_version = config.colour(rollout.candidate).version
        if record is not None and record.candidate != candidate_version:
            record = None  # about another candidate: not this rollout's business
        alarms = self.aws.alarm_states(alarm_names)
        following = next_step(rollout.strategy, rollout.stage)
        since = stage_start(self.backend.history(), config) or self.backend.last_update()
        stage = stage_of(rollout.strategy, rollout.stage, rollout.mirror_percent)
        status = Status(
            stack=self.stack,
            config=config,
            stage=stage,
            weights=dict(rendered.get("weights") or {}),
            rendered_stage=int(rendered.get("renderedStage", rollout.stage)),
            in_stage_for=self.now() - since if since else None,
            alarms=alarms,
            record=record,
            next_stage=following[1] if following else None,
            next_strategy=following[0] if following else None,
            on_call=self.aws.confirmed_subscriptions(topic) if topic else None,
            started=since,
        )
        if status.on_call == 0:
            status.blockers.append(_unpaged(topic))
        if record is not None:
            status.blockers.append(
                "a rollback record exists: review the incident, then `weightshift rollout ack`"
            )
        blind = sorted(name for name, state in alarms.items() if state == "INSUFFICIENT_DATA")
        if blind:
            status.notes.append(
                f"no data, so not judging this stage: {', '.join(blind)} (an alarm without "
                "data judges nothing: check that the candidate's gateways report, and check "
                "the stage's gate yourself)"
            )
        firing = sorted(name for name, state in alarms.items() if state == "ALARM")
        if firing:
            status.blockers.append(f"alarm(s) in ALARM: {', '.join(firing)}")
        if status.rendered_stage > rollout.stage and record is None:
            status.blockers.append(
                f"the deployed stage is {status.rendered_stage}, ahead of the stack file's "
                f"{rollout.stage}: commit the Pulumi.{self.stack}.yaml that the last promote "
                "wrote (a `pulumi up` from this one would move traffic back)"
            )
        elif status.rendered_stage != rollout.stage and record is None:
            status.blockers.append(
                f"the deployed stage is {status.rendered_stage}, the config says {rollout.stage}:"
                " run `pulumi up` first"
            )
        if stage.duration and (status.in_stage_for or timedelta(0)) < stage.duration:
            left = stage.duration - (status.in_stage_for or timedelta(0))
            status.blockers.append(f"stage {rollout.stage} bakes for {_duration(left)} more")
        return status

    def read_gate(self, status: Status, *, ignore_bake: bool = False) -> GateReading:
        """The configured stage's gate over the window since the stage started (raises
        :class:`EvidenceError` when the evidence cannot be read)."""
        config = status.config
        rollout = config.rollout
        until = self.now()
        started = min(status.started or until, until)
        # A stage that starts now (or a clock behind the stack's) has seen nothing yet; the
        # query still needs a window.
        since = min(started, until - timedelta(seconds=1))
        counts = self.aws.stage_counts(config, since, until)
        gate = decide(config, counts, since=since, until=until)
        elapsed = until - started
        bake_left = (
            status.stage.duration - elapsed
            if status.stage.duration and elapsed < status.stage.duration
            else None
        )
        if ignore_bake:
            gate = replace(
                gate,
                criteria=[_SKIPPED_BAKE if c.name == "bake" else c for c in gate.criteria],
            )
            bake_left = None
        return GateReading(
            gate, counts, rollout.candidate, rollout.stable, bake_left, skipped_bake=ignore_bake
        )

    def read_shadow_gate(
        self, status: Status, report_file: Path | None = None
    ) -> ShadowGateDecision:
        """The divergence gate (:mod:`weightshift.gates.shadow`) on ``report_file`` (a
        ``weightshift shadow report`` JSON), else on a report computed from the stack's own
        shadow records over the window since the stage started. Raises
        :class:`EvidenceError` when neither is evidence for this rollout."""
        config = status.config
        rollout = config.rollout
        if report_file is not None:
            report = read_report_file(report_file)
        else:
            exported = self.backend.outputs().get("shadowRecords") or {}
            bucket, prefixes = exported.get("bucket"), exported.get("prefixes")
            if not bucket or not prefixes:
                raise EvidenceError(
                    f"stack {self.stack} exports no shadowRecords location (deploy it with this "
                    "version of weightshift first), so its shadow records cannot be found: pass "
                    "--shadow-report FILE (weightshift shadow report --json)"
                )
            until = self.now()
            since = min(status.started or until, until - timedelta(seconds=1))
            report = self.aws.shadow_report(
                config, str(bucket), [str(p) for p in prefixes], since, until
            )
        try:
            check_comparison(
                report,
                model=config.model,
                stable=config.colour(rollout.stable).version,
                candidate=config.colour(rollout.candidate).version,
            )
        except ShadowEvidenceError as error:
            raise EvidenceError(str(error)) from None
        return decide_shadow(report, rollout.shadow_gate)

    def _shadow_for_move(
        self, status: Status, report_file: Path | None, ignore_gate: str | None
    ) -> tuple[ShadowGateDecision | None, str | None]:
        """The shadow gate of a move between strategies (None, None for any other
        promotion); its evidence error is a refusal unless ``ignore_gate``."""
        if not status.moving:
            if report_file is not None:
                raise RolloutError(
                    f"--shadow-report decides only the move from shadow stage 1 to canary "
                    f"stage 1; stack {self.stack} is at {status.config.rollout.strategy.value} "
                    f"stage {status.config.rollout.stage}: leave it out."
                )
            return None, None
        try:
            return self.read_shadow_gate(status, report_file), None
        except EvidenceError as error:
            if ignore_gate is None:
                raise RolloutError(
                    f"not promoting to {status.target}: the shadow gate cannot decide: {error} "
                    "(`--ignore-gate REASON` promotes without it, and records that it did)"
                ) from None
            return None, str(error)

    def _refusal(self, status: Status) -> str | None:
        """Why no promotion may go ahead whatever the evidence says; None if none."""
        rollout = status.config.rollout
        if status.next_stage is None:
            return (
                f"stage {rollout.stage} is the last stage of {rollout.strategy.value}: "
                "`weightshift rollout finish` makes the candidate the stable colour."
            )
        hard = [b for b in status.blockers if " bakes for " not in b]
        if hard:
            return f"not promoting to stage {status.next_stage}: " + "; ".join(hard) + "."
        return None

    def record_decision(
        self,
        status: Status,
        reading: GateReading | None,
        *,
        action: str,
        command: str,
        override: str | None = None,
        error: str | None = None,
        shadow: ShadowGateDecision | None = None,
        shadow_error: str | None = None,
    ) -> str:
        """Write the gate's decision beside the incident records (never over another);
        its ``s3://`` location. At a move between strategies the shadow gate's decision (or
        why it was not read) goes with it, and the recorded decision is the worse of both."""
        config = status.config
        rollout = config.rollout
        bucket, prefix = incident_location(config, self.backend.outputs(), self.stack)
        now = self.now()
        decision = reading.decision.value if reading is not None else "unread"
        if status.moving:
            decision = _worse(decision, shadow.decision.value if shadow else "unread")
        document: dict[str, Any] = {
            "kind": "stage-gate",
            "stack": self.stack,
            "model": config.model,
            "strategy": rollout.strategy.value,
            "stage": rollout.stage,
            "nextStage": status.next_stage,
            "nextStrategy": status.next_strategy.value if status.next_strategy else None,
            "candidate": {
                "colour": rollout.candidate.value,
                "version": config.colour(rollout.candidate).version,
            },
            "stable": {
                "colour": rollout.stable.value,
                "version": config.colour(rollout.stable).version,
            },
            "decision": decision,
            "action": action,
            "command": command,
            "by": getpass.getuser(),
            "run": _workflow_run(),
            "at": now.isoformat(timespec="seconds"),
            "override": {"reason": override} if override is not None else None,
            "evidenceError": error,
        }
        if status.moving:
            document["shadowGate"] = (
                shadow.to_json() if shadow is not None else {"error": shadow_error}
            )
        if reading is not None:
            gate = reading.to_json()
            document |= {
                "window": {
                    "since": gate["since"],
                    "until": gate["until"],
                    "seconds": int((reading.gate.until - reading.gate.since).total_seconds()),
                },
                "criteria": gate["criteria"],
                "counts": gate["counts"],
                "skippedBake": reading.skipped_bake,
            }
        stem = f"{prefix}/{DECISIONS}/{now:%Y%m%dT%H%M%SZ}-stage{rollout.stage}-{decision}"
        return f"s3://{bucket}/{self.aws.put_decision(bucket, stem, document)}"

    def promote(
        self,
        *,
        ignore_bake: bool = False,
        ignore_gate: str | None = None,
        shadow_report: Path | None = None,
    ) -> str:
        """The next stage, on the stage gate's evidence: pass (and baked) promotes; fail
        refuses, records the decision and says to abort; inconclusive refuses and says how
        much longer. ``ignore_gate`` (a reason) promotes whatever the evidence says, and is
        recorded; neither option skips the alarms, the record or the on-call check.

        From shadow stage 1 the next stage is canary stage 1, and the shadow (divergence)
        gate must pass too (:meth:`read_shadow_gate`, on ``shadow_report`` or the stack's
        own records): its failure refuses and is recorded, its inconclusive refuses with
        the pairs still needed; a pass is recorded with the promotion."""
        if ignore_gate is not None and not ignore_gate.strip():
            raise RolloutError(
                "--ignore-gate needs a reason (it is recorded): --ignore-gate 'why'."
            )
        status = self.status()
        refusal = self._refusal(status)
        if refusal is not None:
            raise RolloutError(refusal)
        stage, following = status.config.rollout.stage, status.target
        try:
            reading = self.read_gate(status, ignore_bake=ignore_bake)
        except EvidenceError as error:
            if ignore_gate is None:
                raise RolloutError(
                    f"not promoting to {following}: {error} (`--ignore-gate REASON` "
                    "promotes without the evidence, and records that it did)"
                ) from None
            shadow, shadow_error = self._shadow_for_move(status, shadow_report, ignore_gate)
            location = self.record_decision(
                status,
                None,
                action="overridden",
                command="promote",
                override=ignore_gate,
                error=str(error),
                shadow=shadow,
                shadow_error=shadow_error,
            )
            return self.promote_to(status) + f" (gate unread, overridden: {location})"
        decision = reading.decision
        shadow, shadow_error = self._shadow_for_move(status, shadow_report, ignore_gate)
        # A failure needs no bake: it is said (and recorded) as soon as it is evident.
        if decision is Decision.FAIL and ignore_gate is None:
            location = self.record_decision(
                status,
                reading,
                action="refused",
                command="promote",
                shadow=shadow,
                shadow_error=shadow_error,
            )
            failing = "; ".join(describe(c) for c in reading.failing())
            raise RolloutError(
                f"not promoting to {following}: the stage {stage} gate failed: {failing}. "
                "Roll back with `weightshift rollout abort --reason 'stage gate failed'`. The "
                f"decision is recorded at {location}."
            )
        if shadow is not None and shadow.decision is Decision.FAIL and ignore_gate is None:
            location = self.record_decision(
                status,
                reading,
                action="refused",
                command="promote",
                shadow=shadow,
                shadow_error=shadow_error,
            )
            failing = "; ".join(c.text() for c in shadow.failing())
            raise RolloutError(
                f"not promoting to {following}: the shadow gate failed ({shadow.pairs:,} "
                f"pairs): {failing}. Roll back with `weightshift rollout abort --reason "
                f"'shadow gate failed'`. The decision is recorded at {location}."
            )
        if reading.baking():
            raise RolloutError(
                f"not promoting to {following}: stage {stage} bakes for "
                f"{_duration(reading.bake_left)} more (`--ignore-bake` skips the bake time, "
                "not the evidence). Gate so far: " + _gate_line(reading) + "."
            )
        if shadow is not None and shadow.decision is Decision.INCONCLUSIVE and ignore_gate is None:
            raise RolloutError(
                f"not promoting to {following}: the shadow gate is inconclusive on "
                f"{shadow.pairs:,} pairs: {shadow.wait_text()}. Keep mirroring and promote "
                "again."
            )
        if decision is Decision.PASS and not status.moving:
            return self.promote_to(status)
        if decision is Decision.PASS and shadow is not None and shadow.decision is Decision.PASS:
            location = self.record_decision(
                status,
                reading,
                action="promoted",
                command="promote",
                shadow=shadow,
                shadow_error=shadow_error,
            )
            return (
                self.promote_to(status)
                + f" (shadow gate passed on {shadow.pairs:,} pairs: {location})"
            )
        if ignore_gate is not None:
            location = self.record_decision(
                status,
                reading,
                action="overridden",
                command="promote",
                override=ignore_gate,
                shadow=shadow,
                shadow_error=shadow_error,
            )
            return (
                self.promote_to(status)
                + f" (stage {stage} gate {decision.value}, "
                + (f"overridden: {location})")
            )
        raise RolloutError(
            f"not promoting to {following}: the stage {stage} gate is inconclusive: "
            f"{reading.wait().text()}. Promote again then; `weightshift rollout advance` does "
            "it on a schedule."
        )

    def promote_to(self, status: Status) -> str:
        """Set the next stage (and strategy, at a move) and deploy it, checking nothing:
        the callers decided."""
        following = status.next_stage
        changes: dict[str, Any] = {"stage": following}
        if status.moving and status.next_strategy is not None:
            changes["strategy"] = status.next_strategy.value
        self._set_rollout(status.config, **changes)
        try:
            summary = self.backend.up(f"weightshift rollout promote to {status.target}")
        except Exception as error:
            if BLOCKED_BY_EVALUATION not in str(error):
                raise
            # The program refused before registering anything: put the stack file back, so
            # it does not claim a stage that was never deployed.
            rollout = status.config.rollout
            self._set_rollout(status.config, stage=rollout.stage, strategy=rollout.strategy.value)
            raise RolloutError(
                f"not promoted: {str(error).strip()} The stack file is back at "
                f"{rollout.strategy.value} stage {rollout.stage}."
            ) from None
        return f"promoted to {status.target}: {summary}"

    def preview_promotion(
        self,
        changes_of: StageChanges,
        *,
        ignore_bake: bool = False,
        shadow_report: Path | None = None,
    ) -> PromotionPreview:
        """``promote --dry-run``: the gate's decisions and the next stage's changes, by
        ``changes_of`` (offline synthesis, from the command line); nothing is written or
        deployed."""
        status = self.status()
        refusal = self._refusal(status)
        reading: GateReading | None = None
        evidence_error: str | None = None
        changes: list[Any] = []
        shadow: ShadowGateDecision | None = None
        shadow_error: str | None = None
        if status.next_stage is not None:
            try:
                reading = self.read_gate(status, ignore_bake=ignore_bake)
            except EvidenceError as error:
                evidence_error = str(error)
            if status.moving:
                try:
                    shadow = self.read_shadow_gate(status, shadow_report)
                except EvidenceError as error:
                    shadow_error = str(error)
            values = self.backend.config()
            following = copy.deepcopy(values)
            following[ROLLOUT_KEY] = {
                **status.config.model_dump(by_alias=True, mode="json")["rollout"],
                "stage": status.next_stage,
                "strategy": (status.next_strategy or status.config.rollout.strategy).value,
            }
            changes = changes_of(values, following, status.record)
        if refusal is None:
            if evidence_error is not None:
                refusal = f"the evidence cannot be read: {evidence_error}"
            elif reading is not None and reading.decision is Decision.FAIL:
                refusal = "the gate failed: " + "; ".join(describe(c) for c in reading.failing())
            elif reading is not None and reading.baking():
                refusal = f"stage {status.config.rollout.stage} bakes for " + (
                    f"{_duration(reading.bake_left)} more"
                )
            elif shadow_error is not None:
                refusal = f"the shadow gate cannot decide: {shadow_error}"
            elif shadow is not None and shadow.decision is Decision.FAIL:
                refusal = "the shadow gate failed: " + "; ".join(c.text() for c in shadow.failing())
            elif reading is not None and reading.decision is Decision.INCONCLUSIVE:
                refusal = "the gate is inconclusive: " + reading.wait().text()
            elif shadow is not None and shadow.decision is Decision.INCONCLUSIVE:
                refusal = "the shadow gate is inconclusive: " + shadow.wait_text()
        return PromotionPreview(
            status, reading, evidence_error, changes, refusal, shadow, shadow_error
        )

    def abort(self, reason: str, *, by_advance: bool = False) -> rollback_function.Outcome:
        """A manual rollback, by the rollback function's own code and settings (``by_advance``:
        the one ``weightshift rollout advance`` starts on a failed gate, so said)."""
        outputs = self.backend.outputs()
        settings_map = (outputs.get("rollback") or {}).get("settings")
        if not settings_map:
            raise RolloutError(
                "the stack has no rollback function (no candidate version is deployed): "
                "there is nothing to abort."
            )
        settings = rollback_function.Settings.from_environment(settings_map)
        user = getpass.getuser()
        now = self.now().strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        event = {
            "source": "weightshift.rollout.abort",
            "alarmArn": f"manual-abort:{user}",
            "time": now,
            "alarmData": {
                "alarmName": settings.alarm_name,
                "state": {
                    "value": "ALARM",
                    "reason": (
                        f"automatic abort by weightshift rollout advance (run by {user}): "
                        if by_advance
                        else f"manual abort by {user}: "
                    )
                    + reason,
                    "timestamp": now,
                },
                "configuration": {"description": f"listener={settings.listener_arn}"},
            },
        }
        try:
            return rollback_function.roll_back(event, settings, self.clients())
        except rollback_function.RollbackIncomplete as error:
            raise RolloutError(
                f"traffic is on the stable colour, but the rollback is incomplete: {error} Run "
                "`weightshift rollout abort` again: it repeats only the missing steps."
            ) from None

    def ack(self) -> str:
        """Clear a reviewed rollback: the config goes back to stage 0 first, then the ack is
        recorded beside the incident record, then the record goes, so the next `pulumi up`
        keeps the stable colour at 100 % and no record is cleared without a trace."""
        config = self._config()
        outputs = self.backend.outputs()
        parameter = str((outputs.get("rollout") or {}).get("recordParameter") or "")
        record = self.aws.record(parameter) if parameter else None
        if record is None:
            raise RolloutError(f"stack {self.stack} has no rollback record to acknowledge.")
        self._set_rollout(config, stage=0)
        bucket, prefix = incident_location(config, outputs, self.stack)
        self.aws.put_ack(
            bucket,
            f"{prefix}/{record.incident}{ACK_SUFFIX}",
            {
                "incident": record.incident,
                "candidate": record.candidate,
                "by": getpass.getuser(),
                "at": self.now().isoformat(timespec="seconds"),
                "stack": self.stack,
                "configuredStage": config.rollout.stage,
            },
        )
        self.aws.delete_record(parameter)
        self.aws.delete_record(rollback_function.page_marker(parameter, record.incident))
        return (
            f"acknowledged incident {record.incident} ({record.candidate}); the stack config is "
            "at stage 0 (commit Pulumi.<stack>.yaml). Publish a fixed bundle or promote again."
        )

    def release(self, *, early: bool = False) -> str:
        """End the hold ``finish`` started: the old stable colour scales to zero."""
        config = self._config()
        hold = config.rollout.hold
        if hold is None or not capacity.held(config):
            raise RolloutError(
                f"stack {self.stack} holds no colour warm (rollout.hold applies after "
                "`weightshift rollout finish`, while the candidate colour still runs the old "
                "version at stage 0)."
            )
        if hold.released:
            raise RolloutError(f"{hold.version} is already released.")
        self._refuse_unpaged("not releasing")
        if self.now() < hold.until and not early:
            raise RolloutError(
                f"{hold.version} is held until {hold.until:%Y-%m-%d %H:%M} UTC, the window in "
                "which a late regression is still rolled back at once; run again after it, or "
                "pass --early."
            )
        self._set_rollout(
            config, hold={**hold.model_dump(by_alias=True, mode="json"), "released": True}
        )
        summary = self.backend.up(f"weightshift rollout release: {hold.version} scaled to 0")
        return f"released {hold.version} ({config.rollout.candidate.value}): {summary}"

    def _refuse_unpaged(self, doing: str) -> None:
        """Refuse while the on-call topic has no confirmed subscription: after a release (or
        a finish) the rollback still acts, and a rollback nobody hears about is never
        investigated."""
        topic = str((self.backend.outputs().get("rollback") or {}).get("onCallTopic") or "")
        if topic and self.aws.confirmed_subscriptions(topic) == 0:
            raise RolloutError(f"{doing}: {_unpaged(topic)}.")

    def finish(self) -> str:
        """The candidate (at 100 %) becomes the stable colour; the old stable stays warm."""
        status = self.status()
        rollout = status.config.rollout
        if status.moving:
            raise RolloutError(
                f"{rollout.strategy.value} never serves the candidate at 100 % (shadow only "
                f"mirrors): `weightshift rollout promote` moves it to {status.target} once the "
                "shadow gate passes, or switch to blue-green."
            )
        if status.next_stage is not None:
            raise RolloutError(
                f"stage {rollout.stage} is not the last stage of {rollout.strategy.value}: "
                f"promote to stage {len(schedule(rollout.strategy)) - 1} first."
            )
        hard = [b for b in status.blockers if " bakes for " not in b]
        if hard:
            raise RolloutError("not finishing: " + "; ".join(hard) + ".")
        weights = weights_for(rollout.strategy, rollout.stage, rollout.candidate)
        if weights.of(rollout.candidate) != max(weights.blue, weights.green):
            raise RolloutError(
                f"{rollout.strategy.value} never serves the candidate at 100 % (shadow only "
                "mirrors): switch to blue-green or canary to ship it."
            )
        old_version = status.config.colour(rollout.stable).version
        until = self.now() + timedelta(hours=rollout.capacity.hold_hours)
        hold = {"version": old_version, "until": until.isoformat()} if old_version else None
        self._set_rollout(status.config, candidate=rollout.stable.value, stage=0, hold=hold)
        summary = self.backend.up(
            f"weightshift rollout finish: {status.config.colour(rollout.candidate).version} "
            "is stable"
        )
        held = (
            f"keeps {old_version} warm until {until:%Y-%m-%d %H:%M} UTC (rollout.hold; then "
            "`weightshift rollout release` scales it to 0)"
            if old_version
            else "has no version"
        )
        return (
            f"{rollout.candidate.value} is now the stable colour; {rollout.stable.value} {held}: "
            f"{summary}"
        )
