"""Shadow pair records: the format, the text policy and the recorder's batches in (moto) S3."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from pydantic import ValidationError

from tests.conftest import offline_aws
from weightshift.gateway.shadow import (
    Answer,
    PairRecord,
    ShadowRecorder,
    ShadowRecordError,
    decode_batch,
    encode_batch,
    pair_from,
    read_pairs,
)

BUCKET = "weightshift-shadow-test"
PREFIX = "shadow"
MODEL = "support-assistant"
STABLE = "support-assistant/v1.4.2-3f9a1c2b7d4e"
CANDIDATE = "support-assistant/v1.5.0-0123456789ab"
NOON = datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
SECRET_PROMPT = "my card number is 4111 1111 1111 1111"
KEY_RE = re.compile(
    r"^shadow/model=support-assistant/date=2025-06-01/hour=12/"
    r"3f9a1c2b7d4e-0123456789ab-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"\.jsonl\.gz$"
)


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    offline_aws(monkeypatch)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def pair(
    n: int = 0, *, when: datetime = NOON, keep_text: bool = False, candidate: str = CANDIDATE
) -> PairRecord:
    return pair_from(
        request_id=f"req-{n}",
        time=when,
        model=MODEL,
        stable_version=STABLE,
        candidate_version=candidate,
        endpoint="chat",
        body={"messages": [{"role": "user", "content": f"{SECRET_PROMPT} #{n}"}]},
        stable=Answer(200, "ok", 812.5, 95.0, 20, 41, False, f"stable answer {n}"),
        candidate=Answer(200, "blocked", 1020.0, None, 20, 12, True, "I can't help with that."),
        keep_text=keep_text,
    )


def keys(client: Any) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def body(client: Any, key: str) -> bytes:
    data: bytes = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return data


def recorder(client: Any, **options: Any) -> ShadowRecorder:
    made = ShadowRecorder(BUCKET, PREFIX, client=client, **options)
    made.retry_delays = (0.0, 0.0)
    return made


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- the record ------------------------------------------------------------------------


def test_record_without_permission_holds_no_text_only_hashes() -> None:
    record = pair(1)
    line = record.model_dump_json()
    assert SECRET_PROMPT not in line
    assert "stable answer" not in line
    assert "help with that" not in line
    data = json.loads(line)
    assert "prompt_text" not in data
    assert "output_text" not in data["stable"]
    assert "output_text" not in data["candidate"]
    assert data["stable"]["output_hash"] == hashlib.sha256(b"stable answer 1").hexdigest()
    assert data["time"] == "2025-06-01T12:30:00.000Z"


def test_record_with_permission_keeps_text_matching_its_hashes() -> None:
    data = json.loads(pair(1, keep_text=True).model_dump_json())
    assert SECRET_PROMPT in data["prompt_text"]
    assert hashlib.sha256(data["prompt_text"].encode()).hexdigest() == data["prompt_hash"]
    assert data["stable"]["output_text"] == "stable answer 1"
    assert data["candidate"]["output_text"] == "I can't help with that."


def test_a_text_holding_unicode_line_separators_stays_one_record() -> None:
    odd = "first\u2028second\u0085third\x1cfourth\r"
    record = pair_from(
        request_id="req-odd",
        time=NOON,
        model=MODEL,
        stable_version=STABLE,
        candidate_version=CANDIDATE,
        endpoint="chat",
        body={"messages": [{"role": "user", "content": odd}]},
        stable=Answer(200, "ok", 812.5, 95.0, 20, 41, False, odd),
        candidate=Answer(200, "ok", 900.0, 90.0, 20, 41, False, odd),
        keep_text=True,
    )
    (back,) = decode_batch(encode_batch([record]), "memory")
    assert back == record


def test_prompt_hash_ignores_key_order_and_spacing() -> None:
    common: dict[str, Any] = {
        "request_id": "a",
        "time": NOON,
        "model": MODEL,
        "stable_version": STABLE,
        "candidate_version": CANDIDATE,
        "endpoint": "completions",
        "stable": Answer(200, "ok"),
        "candidate": Answer(None, "dropped"),
    }
    first = pair_from(body={"prompt": "hi", "max_tokens": 5}, **common)
    second = pair_from(body={"max_tokens": 5, "prompt": "hi"}, **common)
    other = pair_from(body={"max_tokens": 6, "prompt": "hi"}, **common)
    assert first.prompt_hash == second.prompt_hash != other.prompt_hash


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"time": "2025-06-01T12:30:00"}, "timezone"),
        ({"candidate_version": "other-model/v1.0.0-0123456789ab"}, "is not a bundle of"),
        ({"stable_version": "support-assistant/1.4.2"}, "not a bundle id"),
        ({"prompt_text": "not what was hashed"}, "prompt_hash must be the sha256"),
    ],
)
def test_record_refuses_inconsistent_fields(change: dict[str, Any], message: str) -> None:
    data = {**json.loads(pair(1).model_dump_json()), **change}
    with pytest.raises(ValidationError, match=message):
        PairRecord.model_validate(data)


# --- the recorder ----------------------------------------------------------------------


def test_full_batch_is_written_before_max_seconds(bucket: Any) -> None:
    async def scenario() -> list[str]:
        shadow = recorder(bucket, max_records=3, max_seconds=3600)
        shadow.start()
        for n in range(4):
            shadow.record(pair(n))
        await until(lambda: shadow.written == 3)
        written = keys(bucket)
        await shadow.stop()
        return written

    written = asyncio.run(scenario())
    assert len(written) == 1, "the fourth pair waits for its own batch"
    assert len(keys(bucket)) == 2, "stop() wrote the fourth"


def test_old_batch_is_written_after_max_seconds(bucket: Any) -> None:
    async def scenario() -> tuple[int, float]:
        shadow = recorder(bucket, max_records=500, max_seconds=0.2)
        shadow.start()
        started = time.monotonic()
        shadow.record(pair(1))
        await until(lambda: shadow.written == 1)
        waited = time.monotonic() - started
        await shadow.stop()
        return shadow.written, waited

    written, waited = asyncio.run(scenario())
    assert written == 1
    assert waited >= 0.2


def test_batch_key_layout_headers_and_round_trip(bucket: Any) -> None:
    records = [pair(n) for n in range(3)]

    async def scenario() -> None:
        shadow = recorder(bucket)
        shadow.start()
        for record in records:
            shadow.record(record)
        await shadow.stop()

    asyncio.run(scenario())
    (key,) = keys(bucket)
    assert KEY_RE.match(key), key
    head = bucket.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ContentType"] == "application/x-ndjson"
    assert head["ContentEncoding"] == "gzip"
    stored = body(bucket, key)
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(stored).digest()).decode()
    lines = gzip.decompress(stored).decode().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["req-0", "req-1", "req-2"]
    assert list(read_pairs(bucket, BUCKET, PREFIX)) == records


def test_pairs_of_another_hour_or_candidate_get_their_own_object(bucket: Any) -> None:
    later = NOON + timedelta(hours=1)
    other = "support-assistant/v1.5.1-abcdefabcdef"

    async def scenario() -> None:
        shadow = recorder(bucket)
        shadow.start()
        shadow.record(pair(1))
        shadow.record(pair(2, when=later))
        shadow.record(pair(3, candidate=other))
        await shadow.stop()

    asyncio.run(scenario())
    written = sorted(keys(bucket))
    assert len(written) == 3
    assert sum("/hour=13/" in key for key in written) == 1
    assert sum("-abcdefabcdef-" in key for key in written) == 1
    by_key = {key: [p.request_id for p in decode_batch(body(bucket, key), key)] for key in written}
    assert sorted(by_key.values()) == [["req-1"], ["req-2"], ["req-3"]]


def test_recorder_stores_no_text_unless_allowed(bucket: Any) -> None:
    async def scenario(prefix: str, keep_text: bool) -> None:
        shadow = ShadowRecorder(BUCKET, prefix, client=bucket, keep_text=keep_text)
        shadow.start()
        shadow.record(pair(1, keep_text=True))  # built with text: the recorder decides
        await shadow.stop()

    asyncio.run(scenario("private", False))
    asyncio.run(scenario("allowed", True))
    (private,) = read_pairs(bucket, BUCKET, "private")
    # Pairs with text go under their own prefix (rollout.shadowTextSample), never the other.
    assert list(read_pairs(bucket, BUCKET, "allowed")) == []
    (allowed,) = read_pairs(bucket, BUCKET, "allowed-text")
    assert private.prompt_text is None
    assert private.stable.output_text is None
    assert private.stable.output_hash == allowed.stable.output_hash
    assert allowed.prompt_text is not None
    assert SECRET_PROMPT in allowed.prompt_text
    assert allowed.candidate.output_text == "I can't help with that."
    (key,) = [k for k in keys(bucket) if k.startswith("private/")]
    raw = gzip.decompress(body(bucket, key)).decode()
    assert SECRET_PROMPT not in raw
    assert "text" not in raw


def test_full_queue_drops_and_counts_without_raising(
    bucket: Any, caplog: pytest.LogCaptureFixture
) -> None:
    shadow = recorder(bucket, queue_limit=2)
    with caplog.at_level(logging.WARNING, logger="weightshift.gateway.shadow"):
        for n in range(5):
            shadow.record(pair(n))  # not started: nothing drains the queue
    assert (shadow.recorded, shadow.dropped, shadow.pending) == (2, 3, 2)
    assert len([r for r in caplog.records if "queue_limit" in r.getMessage()]) == 1
    asyncio.run(shadow.stop())
    assert shadow.written == 2
    assert [p.request_id for p in read_pairs(bucket, BUCKET, PREFIX)] == ["req-0", "req-1"]


def test_failing_put_is_retried_then_dropped_and_counted(
    bucket: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def refuse(**kwargs: Any) -> None:
        calls.append(kwargs["Key"])
        error = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}
        raise ClientError(error, "PutObject")  # type: ignore[arg-type]

    monkeypatch.setattr(bucket, "put_object", refuse)

    async def scenario() -> ShadowRecorder:
        shadow = recorder(bucket, max_records=2)
        shadow.start()
        for n in range(3):
            shadow.record(pair(n))
        await shadow.stop()
        shadow.record(pair(9))  # after stop: dropped, not raised
        return shadow

    with caplog.at_level(logging.ERROR, logger="weightshift.gateway.shadow"):
        shadow = asyncio.run(scenario())
    assert len(calls) == 2 * 3, "each of the two batches tried three times"
    assert len(set(calls)) == 2, "a retry writes the same key"
    assert (shadow.recorded, shadow.written, shadow.failed_batches) == (3, 0, 2)
    assert shadow.dropped == 4
    messages = [r.getMessage() for r in caplog.records]
    assert any("AccessDenied" in m and f"s3://{BUCKET}/" in m for m in messages), messages


def test_put_that_fails_once_is_retried_and_written(
    bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bucket.put_object
    failures = [ClientError({"Error": {"Code": "SlowDown"}}, "PutObject")]

    def flaky(**kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(**kwargs)

    monkeypatch.setattr(bucket, "put_object", flaky)
    shadow = recorder(bucket)
    shadow.record(pair(1))
    asyncio.run(shadow.stop())
    assert (shadow.written, shadow.failed_batches, shadow.dropped) == (1, 0, 0)
    assert [p.request_id for p in read_pairs(bucket, BUCKET, PREFIX)] == ["req-1"]


def test_event_loop_keeps_serving_while_s3_is_slow(
    bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bucket.put_object
    in_flight, release = threading.Event(), threading.Event()

    def slow(**kwargs: Any) -> Any:
        in_flight.set()
        release.wait(10)  # held until the test has seen the loop and record() go on
        return real(**kwargs)

    monkeypatch.setattr(bucket, "put_object", slow)

    async def scenario() -> tuple[int, bool]:
        shadow = recorder(bucket, max_records=1)
        shadow.start()
        shadow.record(pair(1))
        ticks = 0
        while not in_flight.is_set() or ticks < 20:  # the loop turns while the put waits
            await asyncio.sleep(0.01)
            ticks += 1
        shadow.record(pair(2))
        still_held = not release.is_set()  # record() came back without waiting for S3
        release.set()
        await shadow.stop()
        return ticks, still_held

    ticks, still_held = asyncio.run(scenario())
    assert ticks >= 20, "the event loop was blocked by the put"
    assert still_held, "record() waited for the put"


def test_stop_flushes_what_is_left(bucket: Any) -> None:
    async def scenario() -> tuple[int, int]:
        shadow = recorder(bucket, max_records=500, max_seconds=3600)
        shadow.start()
        for n in range(7):
            shadow.record(pair(n))
        await asyncio.sleep(0.05)
        before = len(keys(bucket))
        await shadow.stop()
        return before, shadow.written

    before, written = asyncio.run(scenario())
    assert before == 0
    assert written == 7
    assert len(list(read_pairs(bucket, BUCKET, PREFIX))) == 7


def test_read_pairs_names_a_corrupt_object(bucket: Any) -> None:
    key = f"{PREFIX}/model={MODEL}/date=2025-06-01/hour=12/bad.jsonl.gz"
    bucket.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(b'{"request_id": "x"}\n'))
    with pytest.raises(ShadowRecordError, match=rf"s3://{BUCKET}/{re.escape(key)} line 1"):
        list(read_pairs(bucket, BUCKET, PREFIX))
