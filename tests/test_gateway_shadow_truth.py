"""Shadow pairs that tell the truth, with real processes: a side that fails mid-stream is
recorded as failed (read from the answer, not from a header written before the stream),
and a pair's ``time`` is when the request arrived, not when its answer finished."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.gateway_harness import (
    AWS,
    PROJECT,
    Upstream,
    aws_emulator,
    folder_id,
    gateway,
    request,
    sse,
    upstream,
)
from weightshift.gateway.shadow import PairRecord, read_pairs

BUCKET = "shadow-truth"


def unmoderated(source: str, root: Path) -> tuple[Path, str]:
    """A copy of bundle ``source`` (``v1.4.2``) without output moderation (streams take the
    plain relay), and its id."""
    target = root / source
    shutil.copytree(PROJECT / "bundles/support-assistant" / source, target)
    safety = json.loads((target / "config/safety.json").read_text())
    safety["output_moderation"] = False
    (target / "config/safety.json").write_text(json.dumps(safety))
    return target, folder_id(target, version=source)


def s3(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Upstream, Upstream, str, str]]:
    """Both model servers, a stable gateway mirroring to the candidate's, pairs to S3: the
    stable model server, the candidate's, the mirror listener's URL and the S3 endpoint."""
    root = tmp_path_factory.mktemp("truth")
    stable, stable_id = unmoderated("v1.4.2", root)
    candidate, candidate_id = unmoderated("v1.5.0", root)
    with (
        aws_emulator() as endpoint,
        upstream() as stable_model,
        upstream() as candidate_model,
        gateway(
            candidate, candidate_model.url, bundle_id=candidate_id, extra=["--metrics", "off"]
        ) as green,
    ):
        s3(endpoint).create_bucket(Bucket=BUCKET)
        with gateway(
            stable,
            stable_model.url,
            bundle_id=stable_id,
            colour="blue",
            mirror=True,
            extra=[
                "--metrics",
                "off",
                "--mirror-to",
                green.url,
                "--shadow-bucket",
                BUCKET,
                "--shadow-flush-seconds",
                "0.3",
            ],
            env={**AWS, "AWS_ENDPOINT_URL": endpoint},
        ) as blue:
            assert blue.mirror_url
            yield stable_model, candidate_model, blue.mirror_url, endpoint


def ask(url: str, request_id: str) -> tuple[datetime, datetime, list[Any]]:
    """A streamed request: when it was sent, when its answer was complete, its events."""
    sent = datetime.now(UTC)
    status, _, body = request(
        f"{url}/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Where is my parcel?"}], "stream": True},
        headers={"x-request-id": request_id},
    )
    assert status == 200
    return sent, datetime.now(UTC), sse(body)


def pair(endpoint: str, request_id: str, timeout: float = 15.0) -> PairRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for found in read_pairs(s3(endpoint), BUCKET, "shadow"):
            if found.request_id == request_id:
                return found
        time.sleep(0.2)
    raise AssertionError(f"no pair for {request_id} within {timeout} s")


def test_a_candidate_that_fails_mid_stream_is_recorded_failed_at_the_arrival_time(
    world: tuple[Upstream, Upstream, str, str],
) -> None:
    stable_model, candidate_model, mirror, endpoint = world
    stable_model.control(mode="ok", first_token_delay=1.0)
    candidate_model.control(mode="midstream-error")
    sent, answered, events = ask(mirror, "truth-candidate-fails")
    assert events[-1] == "[DONE]"
    assert not any("error" in e for e in events[:-1])
    found = pair(endpoint, "truth-candidate-fails")
    assert (found.stable.outcome, found.candidate.outcome) == ("ok", "error")
    assert found.candidate.status == 200  # the status was sent before the failure
    # When the request arrived (ms precision), not when its answer (1 s later) finished.
    assert sent - timedelta(milliseconds=1) <= found.time
    assert found.time < answered - timedelta(seconds=0.5)


def test_a_stable_answer_that_fails_mid_stream_is_recorded_failed(
    world: tuple[Upstream, Upstream, str, str],
) -> None:
    stable_model, candidate_model, mirror, endpoint = world
    stable_model.control(mode="midstream-error", first_token_delay=0.0)
    candidate_model.control(mode="ok")
    _, _, events = ask(mirror, "truth-stable-fails")
    assert [e["error"]["code"] for e in events if e != "[DONE]" and "error" in e] == [
        "upstream_error"
    ]
    found = pair(endpoint, "truth-stable-fails")
    assert (found.stable.outcome, found.candidate.outcome) == ("error", "ok")
