"""Shadow pair records: both answers to one mirrored request, batched to S3.

Format, layout and retention: ``docs/shadow-records.md``.

In a shadow rollout the stable colour answers a mirrored request and copies it to the
candidate. For each such request the gateway records a *pair*: the stable and the candidate
answer side by side. Shadow reports (divergence, latency, safety) are built on these records.

Texts (the prompt and the answers) may hold personal data, so a record carries only their
sha256 unless the recorder is configured to keep text; :func:`pair_from` and
:class:`ShadowRecorder` both apply that policy, so a record without permission never holds
text whichever path built it.

The recorder sits beside the serving path and must never slow it down or fail it:
``record()`` only appends to memory (bounded, dropping and counting beyond the limit), and a
background task writes batches to S3 from a worker thread, retrying a few times and then
dropping the batch with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from weightshift.bundles.hashing import canonical
from weightshift.bundles.versioning import NAME_PATTERN, BundleId, VersionError

log = logging.getLogger("weightshift.gateway.shadow")

SCHEMA_VERSION = 1
SHA256_PATTERN = r"^[0-9a-f]{64}$"
Endpoint = Literal["chat", "completions"]
AnswerOutcome = Literal["ok", "refused", "blocked", "error", "timeout", "dropped"]
TEXT_FIELDS = ("prompt_text", "output_text")
"""Left out of the JSON when None, so a record without permission has no text key at all."""


class ShadowRecordError(ValueError):
    """A stored object that is not a batch of pair records; the message names it."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_body(body: Mapping[str, Any]) -> str:
    """The request body as canonical JSON (sorted keys, no spaces, UTF-8).

    Hashing this rather than the bytes on the wire makes the same request hash the same
    whichever client library (key order, spacing) sent it.
    """
    return canonical(dict(body)).decode("utf-8")


def _drop_absent_text(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not (k in TEXT_FIELDS and v is None)}


class Side(BaseModel):
    """One colour's answer to the request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: int | None = Field(ge=100, le=599)
    """HTTP status the colour answered; None when it never answered (timeout, dropped)."""
    outcome: AnswerOutcome
    latency_ms: float | None = Field(default=None, ge=0)
    ttft_ms: float | None = Field(default=None, ge=0)
    tokens_in: int | None = Field(default=None, ge=0)
    tokens_out: int | None = Field(default=None, ge=0)
    refusal: bool = False
    output_hash: str | None = Field(default=None, pattern=SHA256_PATTERN)
    output_text: str | None = None

    @model_validator(mode="after")
    def _text_matches_hash(self) -> Side:
        # A text that does not hash to output_hash would make divergence by hash and by
        # text disagree; refuse it where it is built rather than in a report months later.
        if self.output_text is not None and self.output_hash != sha256_text(self.output_text):
            raise ValueError("output_hash must be the sha256 of output_text")
        return self

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_absent_text(handler(self))


class PairRecord(BaseModel):
    """Both answers to one mirrored request (field meanings: docs/shadow-records.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    request_id: str = Field(min_length=1, max_length=200)
    time: datetime
    """When the request reached the gateway, UTC."""
    model: str = Field(pattern=rf"^{NAME_PATTERN}$")
    stable_version: str
    candidate_version: str | None
    """None when the candidate has not answered one copy yet (so its version is unknown)."""
    endpoint: Endpoint
    prompt_hash: str = Field(pattern=SHA256_PATTERN)
    prompt_text: str | None = None
    stable: Side
    candidate: Side

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("time must carry a timezone (give it in UTC)")
        return value.astimezone(UTC)

    @field_serializer("time")
    def _iso(self, value: datetime) -> str:
        # One fixed shape (milliseconds, Z) so the strings sort and compare as times.
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    @field_validator("stable_version", "candidate_version")
    @classmethod
    def _bundle_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            BundleId.parse(value)
        except VersionError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PairRecord:
        for side in ("stable_version", "candidate_version"):
            if getattr(self, side) is None:
                continue
            name = BundleId.parse(getattr(self, side)).name
            if name != self.model:
                raise ValueError(f"{side} {getattr(self, side)} is not a bundle of {self.model}")
        if self.prompt_text is not None and sha256_text(self.prompt_text) != self.prompt_hash:
            raise ValueError("prompt_hash must be the sha256 of prompt_text")
        return self

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_absent_text(handler(self))

    def without_text(self) -> PairRecord:
        """This record with the prompt and both answers removed (their hashes stay)."""
        return self.model_copy(
            update={
                "prompt_text": None,
                "stable": self.stable.model_copy(update={"output_text": None}),
                "candidate": self.candidate.model_copy(update={"output_text": None}),
            }
        )


@dataclass(frozen=True)
class Answer:
    """What the gateway observed of one colour's answer, before the text policy."""

    status: int | None
    outcome: AnswerOutcome
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    refusal: bool = False
    text: str | None = None
    """The answer's text; None when there was no answer."""


def side_from(answer: Answer, *, keep_text: bool) -> Side:
    return Side(
        status=answer.status,
        outcome=answer.outcome,
        latency_ms=answer.latency_ms,
        ttft_ms=answer.ttft_ms,
        tokens_in=answer.tokens_in,
        tokens_out=answer.tokens_out,
        refusal=answer.refusal,
        output_hash=None if answer.text is None else sha256_text(answer.text),
        output_text=answer.text if keep_text else None,
    )


def pair_from(
    *,
    request_id: str,
    time: datetime,
    model: str,
    stable_version: str,
    candidate_version: str | None,
    endpoint: Endpoint,
    body: Mapping[str, Any],
    stable: Answer,
    candidate: Answer,
    keep_text: bool = False,
) -> PairRecord:
    """The pair record for one mirrored request; texts only when ``keep_text``.

    ``body`` is the JSON request body the client sent; the prompt hash (and, with
    ``keep_text``, the prompt text) is its canonical form, so the stored text is exactly
    what was hashed.
    """
    prompt = canonical_body(body)
    return PairRecord(
        request_id=request_id,
        time=time,
        model=model,
        stable_version=stable_version,
        candidate_version=candidate_version,
        endpoint=endpoint,
        prompt_hash=sha256_text(prompt),
        prompt_text=prompt if keep_text else None,
        stable=side_from(stable, keep_text=keep_text),
        candidate=side_from(candidate, keep_text=keep_text),
    )


# --- storage layout --------------------------------------------------------------------


def _clean_prefix(prefix: str) -> str:
    cleaned = prefix.strip("/")
    if "//" in cleaned:
        raise ValueError(f"shadow record prefix {prefix!r} has an empty path segment")
    return cleaned


def object_key(prefix: str, first: PairRecord) -> str:
    """Where a batch whose first record is ``first`` is stored (Hive-style partitions)."""
    stable = BundleId.parse(first.stable_version).digest
    candidate = (
        BundleId.parse(first.candidate_version).digest if first.candidate_version else "unknown"
    )
    parts = [
        _clean_prefix(prefix),
        f"model={first.model}",
        f"date={first.time:%Y-%m-%d}",
        f"hour={first.time:%H}",
        f"{stable}-{candidate}-{uuid.uuid4()}.jsonl.gz",
    ]
    return "/".join(part for part in parts if part)


def encode_batch(records: Sequence[PairRecord]) -> bytes:
    """Gzip-compressed JSON Lines, one record a line."""
    lines = "".join(record.model_dump_json() + "\n" for record in records)
    return gzip.compress(lines.encode("utf-8"))


def decode_batch(data: bytes, source: str) -> Iterator[PairRecord]:
    try:
        text = gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ShadowRecordError(f"{source}: not gzip-compressed UTF-8 JSON Lines ({exc})") from None
    # Lines end at "\n" only: str.splitlines() also splits at U+2028, U+0085 and \x1c-\x1e,
    # which a record's text may hold unescaped (JSON allows them).
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        try:
            yield PairRecord.model_validate(json.loads(line))
        except (ValueError, ValidationError) as exc:
            raise ShadowRecordError(f"{source} line {number}: not a pair record ({exc})") from None


def read_pairs(client: Any, bucket: str, prefix: str) -> Iterator[PairRecord]:
    """Every pair record stored under ``prefix``, object by object in key order."""
    folder = _clean_prefix(prefix)
    listing = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{folder}/" if folder else ""
    )
    for page in listing:
        for entry in page.get("Contents", []):
            key = entry["Key"]
            if not key.endswith(".jsonl.gz"):
                continue
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            yield from decode_batch(data, f"s3://{bucket}/{key}")


# --- the recorder ----------------------------------------------------------------------


_Group = tuple[str, str, str | None, str, bool]
"""model, stable version, candidate version, hour, text: what one object's key states."""


def keeps_text(request_id: str, fraction: float) -> bool:
    """Whether the pair of ``request_id`` keeps its text at ``fraction`` (0 to 1): the first
    64 bits of the id's SHA-256 as a share of 2**64, below ``fraction``. A function of the id
    alone, so every gateway (either colour, any pod) chooses the same pairs. The id is the
    client's ``x-request-id`` where it sends one: such a client can choose whether its own
    pairs keep their text (docs/shadow-records.md)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"text sample {fraction} is not a fraction: allowed 0 to 1")
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    head = int.from_bytes(hashlib.sha256(request_id.encode("utf-8")).digest()[:8], "big")
    return head < fraction * 2**64


@dataclass
class _Batch:
    opened: float
    text: bool = False
    records: list[PairRecord] = field(default_factory=list)


def _group(pair: PairRecord, text: bool) -> _Group:
    # The key names one model, one pair of versions and one hour; mixing records of another
    # (a candidate changed, an hour turned) would file them under the wrong partition. Pairs
    # with text go under their own prefix, so they never share an object with the others.
    return (
        pair.model,
        pair.stable_version,
        pair.candidate_version,
        f"{pair.time:%Y-%m-%dT%H}",
        text,
    )


class ShadowRecorder:
    """Batches pair records in memory and writes each batch to S3 in the background.

    Text: the share ``text_sample`` of pairs (by :func:`keeps_text` of the request id) keeps
    its prompt and answers and is written under ``text_prefix`` (with SSE-KMS under
    ``text_kms_key`` when given); every other pair loses its text and is written under
    ``prefix``. ``keep_text=True`` is ``text_sample=1``.

    ``record()`` never blocks and never raises. Call it, ``start()`` and ``stop()`` from the
    event loop's thread. Counters (pairs unless named otherwise): ``recorded`` accepted,
    ``written`` stored in S3, ``dropped`` lost (queue full, recorder stopped, or their batch
    failed), ``failed_batches`` batches given up after retries.
    """

    retry_delays: tuple[float, ...] = (0.5, 2.0)
    """Seconds to wait before each retry of a failed put (so 1 + len attempts in all)."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        keep_text: bool = False,
        text_sample: float | None = None,
        text_prefix: str | None = None,
        text_kms_key: str | None = None,
        max_records: int = 500,
        max_seconds: float = 60.0,
        client: Any = None,
        queue_limit: int = 10_000,
    ) -> None:
        if not bucket:
            raise ValueError("ShadowRecorder needs the bucket that holds shadow records")
        if max_records < 1 or max_seconds <= 0 or queue_limit < 1:
            raise ValueError(
                "ShadowRecorder needs max_records >= 1, max_seconds > 0 and queue_limit >= 1 "
                f"(got {max_records}, {max_seconds}, {queue_limit})"
            )
        if keep_text and text_sample is not None:
            raise ValueError("ShadowRecorder: keep_text is text_sample=1; give one of them")
        sample = text_sample if text_sample is not None else (1.0 if keep_text else 0.0)
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"ShadowRecorder: text_sample {sample} is not between 0 and 1")
        self.bucket = bucket
        self.prefix = _clean_prefix(prefix)
        self.text_sample = sample
        self.text_prefix = _clean_prefix(text_prefix or f"{self.prefix}-text")
        if self.text_prefix == self.prefix or not self.text_prefix:
            raise ValueError(
                f"ShadowRecorder: the text prefix {self.text_prefix!r} must differ from the "
                f"hash-only prefix {self.prefix!r}"
            )
        self.text_kms_key = text_kms_key
        self.keep_text = sample > 0
        """Whether any pair keeps its text (the mirror builds pairs with text then; the
        recorder strips it from the pairs not sampled)."""
        self.max_records = max_records
        self.max_seconds = max_seconds
        self.queue_limit = queue_limit
        self.client = client if client is not None else boto3.client("s3")
        self.recorded = 0
        self.written = 0
        self.dropped = 0
        self.failed_batches = 0
        self._open: dict[_Group, _Batch] = {}
        self._ready: list[_Batch] = []
        self._pending = 0
        self._full_logged = False
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Pairs held in memory, not yet handed to S3."""
        return self._pending

    def record(self, pair: PairRecord) -> None:
        """Queue ``pair`` for the next batch; drops (and counts) rather than wait or raise."""
        try:
            self._record(pair)
        except Exception:
            # Whatever went wrong here must not fail the request that produced the pair.
            self.dropped += 1
            log.exception("shadow pair dropped: the recorder failed")

    def _record(self, pair: PairRecord) -> None:
        if self._closing:
            self.dropped += 1
            return
        if self._pending >= self.queue_limit:
            self.dropped += 1
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "shadow pairs dropped: %d are waiting for s3://%s/%s (queue_limit); S3 "
                    "writes are failing or slower than traffic. Serving is unaffected.",
                    self._pending,
                    self.bucket,
                    self.prefix,
                )
            return
        self._full_logged = False
        text = keeps_text(pair.request_id, self.text_sample)
        if not text:
            pair = pair.without_text()
        group = _group(pair, text)
        batch = self._open.get(group)
        if batch is None:
            batch = self._open[group] = _Batch(opened=time.monotonic(), text=text)
            self._signal()  # the writer's next deadline may now be sooner
        batch.records.append(pair)
        self._pending += 1
        self.recorded += 1
        if len(batch.records) >= self.max_records:
            self._ready.append(self._open.pop(group))
            self._signal()

    def _signal(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        """Start the background writer; call from the running event loop (app startup)."""
        if self._task is not None:
            raise RuntimeError("ShadowRecorder.start() was called twice")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "ShadowRecorder.start() must run inside the event loop (the app's startup hook)"
            ) from None
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="shadow-recorder")

    async def stop(self) -> None:
        """Stop taking pairs and write every batch still in memory."""
        self._closing = True
        if self._task is None:
            await self._write_batches(self._take(everything=True))
            return
        self._signal()
        await self._task
        self._task = None

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closing:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._seconds_to_next_due())
            await self._write_batches(self._take(everything=self._closing))
        await self._write_batches(self._take(everything=True))

    def _seconds_to_next_due(self) -> float | None:
        if self._ready:
            return 0.0
        if not self._open:
            return None  # nothing to age: sleep until a record arrives
        oldest = min(batch.opened for batch in self._open.values())
        return max(0.0, oldest + self.max_seconds - time.monotonic())

    def _take(self, *, everything: bool) -> list[_Batch]:
        """Remove the batches due for writing (full or old; all of them when stopping)."""
        now = time.monotonic()
        due = [
            group
            for group, batch in self._open.items()
            if everything or now - batch.opened >= self.max_seconds
        ]
        batches = self._ready + [self._open.pop(group) for group in due]
        self._ready = []
        self._pending -= sum(len(batch.records) for batch in batches)
        return batches

    async def _write_batches(self, batches: list[_Batch]) -> None:
        for batch in batches:
            try:
                await self._write(batch.records, text=batch.text)
            except Exception:
                # A bug here must not kill the writer: later batches would pile up unseen.
                self.failed_batches += 1
                self.dropped += len(batch.records)
                log.exception("shadow pairs dropped: %d could not be written", len(batch.records))

    async def _write(self, records: list[PairRecord], *, text: bool = False) -> None:
        if not text and any(_has_text(record) for record in records):
            # The hash-only prefix never holds text, whoever built the batch.
            records = [record.without_text() for record in records]
        key = object_key(self.text_prefix if text else self.prefix, records[0])
        # Compression is CPU work in proportion to the texts: off the event loop as well.
        body = await asyncio.to_thread(encode_batch, records)
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body,
            "ContentType": "application/x-ndjson",
            "ContentEncoding": "gzip",
            "ChecksumAlgorithm": "SHA256",
        }
        if text and self.text_kms_key:
            # No S3 Bucket Key: with one, the KMS encryption context is the bucket's ARN, not
            # the object's, and the pods' grant (scoped to the text prefix's objects) fails.
            request |= {
                "ServerSideEncryption": "aws:kms",
                "SSEKMSKeyId": self.text_kms_key,
                "BucketKeyEnabled": False,
            }
        error: ClientError | BotoCoreError | None = None
        for delay in (*self.retry_delays, None):
            try:
                await asyncio.to_thread(lambda: self.client.put_object(**request))
            except (ClientError, BotoCoreError) as exc:
                error = exc
                if delay is not None:
                    await asyncio.sleep(delay)
                continue
            self.written += len(records)
            return
        self.failed_batches += 1
        self.dropped += len(records)
        log.error(
            "shadow pairs dropped: %d could not be written to s3://%s/%s after %d attempts "
            "(%s). Check that the bucket exists and the gateway's role may s3:PutObject "
            "there (and use its KMS key); serving is unaffected.",
            len(records),
            self.bucket,
            key,
            len(self.retry_delays) + 1,
            _describe(error),
        )


def _has_text(record: PairRecord) -> bool:
    return (
        record.prompt_text is not None
        or record.stable.output_text is not None
        or record.candidate.output_text is not None
    )


def _describe(error: ClientError | BotoCoreError | None) -> str:
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return f"{details.get('Code', 'error')}: {details.get('Message', error)}"
    return str(error)
