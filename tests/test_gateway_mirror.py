"""Shadow mirroring with real processes: the stable gateway answers on its mirror listener,
copies each request to the candidate's gateway, and records both answers as a pair; a
candidate that hangs or refuses connections changes nothing the client sees."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator

import boto3
import pytest

from tests.gateway_harness import (
    AWS,
    PROJECT,
    Gateway,
    Upstream,
    aws_emulator,
    free_port,
    gateway,
    request,
    sse,
    upstream,
)
from weightshift.gateway.shadow import read_pairs

STABLE = PROJECT / "bundles/support-assistant/v1.4.2"
CANDIDATE = PROJECT / "bundles/support-assistant/v1.5.0"
STABLE_ID = "support-assistant/v1.4.2-424ef6470390"
CANDIDATE_ID = "support-assistant/v1.5.0-d80719af096e"
BUCKET = "support-assistant-shadow"
MIRROR_TIMEOUT = 5
"""Seconds the mirror waits for the candidate: far longer than serving 15 short answers."""


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with aws_emulator() as endpoint:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=BUCKET)
        yield endpoint


def s3(endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def models() -> Iterator[tuple[Upstream, Upstream]]:
    with upstream() as stable, upstream() as candidate:
        yield stable, candidate


@pytest.fixture(scope="module")
def candidate_gateway(models: tuple[Upstream, Upstream]) -> Iterator[Gateway]:
    with gateway(
        CANDIDATE, models[1].url, bundle_id=CANDIDATE_ID, colour="green", extra=["--metrics", "off"]
    ) as found:
        yield found


def stable_gateway(
    target: str, upstream_url: str, endpoint: str, prefix: str, *extra: str
) -> contextlib.AbstractContextManager[Gateway]:
    return gateway(
        STABLE,
        upstream_url,
        bundle_id=STABLE_ID,
        colour="blue",
        mirror=True,
        extra=[
            "--metrics",
            "off",
            "--mirror-to",
            target,
            "--shadow-bucket",
            BUCKET,
            "--shadow-prefix",
            prefix,
            "--shadow-flush-seconds",
            "0.5",
            *extra,
        ],
        env={**AWS, "AWS_ENDPOINT_URL": endpoint},
    )


def ask(url: str, stream: bool = False) -> tuple[int, float, bytes]:
    started = time.perf_counter()
    status, _, body = request(
        f"{url}/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Where is my parcel?"}], "stream": stream},
    )
    return status, time.perf_counter() - started, body


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Whether ``check`` comes true within ``timeout`` (a bound for a hung test only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def wait_pairs(endpoint: str, prefix: str, count: int, timeout: float = 10.0) -> list:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    pairs: list = []  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        pairs = list(read_pairs(s3(endpoint), BUCKET, prefix))
        if len(pairs) >= count:
            return pairs
        time.sleep(0.2)
    return pairs


def test_the_mirror_answers_from_stable_and_records_both_answers(
    models: tuple[Upstream, Upstream], candidate_gateway: Gateway, s3_endpoint: str
) -> None:
    stable_model, candidate_model = models
    candidate_model.clear()
    with stable_gateway(candidate_gateway.url, stable_model.url, s3_endpoint, "pairs") as blue:
        assert blue.mirror_url
        status, _, _ = ask(blue.mirror_url)
        assert status == 200
        status, _, streamed = ask(blue.mirror_url, stream=True)
        assert status == 200
        assert sse(streamed)[-1] == "[DONE]"
        pairs = wait_pairs(s3_endpoint, "pairs", 2)
    assert len(pairs) == 2
    for pair in pairs:
        assert (pair.stable_version, pair.candidate_version) == (STABLE_ID, CANDIDATE_ID)
        assert pair.stable.outcome == pair.candidate.outcome == "ok"
        assert pair.stable.status == pair.candidate.status == 200
        assert pair.candidate.output_hash is not None
        assert pair.prompt_text is None  # hashes only
        assert pair.candidate.output_text is None
    assert {p.stable.ttft_ms is not None for p in pairs} == {True, False}  # one streamed
    # The candidate's gateway applied the candidate's own bundle to the copy.
    copies = candidate_model.received()
    assert len(copies) == 2
    assert (
        copies[0]["body"]["messages"][0]["content"]
        == (CANDIDATE / "prompt/system.txt").read_text().strip()
    )
    assert copies[0]["headers"]["x-request-id"].startswith("ws-blue-")


def held_copies(model: Upstream) -> tuple[int, int]:
    """(copies the candidate's model server received, of which cancelled by their reader)."""
    _, _, state = request(f"{model.url}/state")
    return len(model.received()), int(json.loads(state)["cancelled"])


def served(url: str, count: int) -> list[tuple[int, list[object]]]:
    answers = []
    for _ in range(count):
        status, _, body = ask(url, stream=True)
        answers.append((status, sse(body)))
    return answers


@pytest.mark.parametrize("failure", ["hang", "refuse"])
def test_a_failing_candidate_changes_nothing_the_client_sees(
    models: tuple[Upstream, Upstream],
    candidate_gateway: Gateway,
    s3_endpoint: str,
    failure: str,
) -> None:
    stable_model, candidate_model = models
    target = candidate_gateway.url if failure == "hang" else f"http://127.0.0.1:{free_port()}"
    prefix = f"failing-{failure}"
    with stable_gateway(
        target,
        stable_model.url,
        s3_endpoint,
        prefix,
        "--mirror-timeout",
        str(MIRROR_TIMEOUT),
        "--mirror-queue",
        "4",
        "--mirror-workers",
        "2",
    ) as blue:
        assert blue.mirror_url
        candidate_model.control(mode="hang" if failure == "hang" else "ok")
        candidate_model.clear()
        _, cancelled_before = held_copies(candidate_model)
        first = served(blue.mirror_url, 1)
        if failure == "hang":
            # The first answer's copy reaches the candidate's model server, which holds it.
            assert eventually(lambda: held_copies(candidate_model)[0] >= 1)
        answers = first + served(blue.mirror_url, 14)
        still_held = held_copies(candidate_model)[1] == cancelled_before
        pairs = wait_pairs(s3_endpoint, prefix, 8, timeout=15)
        candidate_model.control(mode="ok")
    # Every answer was served whole, from the stable model, whatever the candidate did;
    # with a hanging candidate, while the copies sent to it were still held (none had
    # reached the mirror's timeout): the served path never waited for a copy.
    assert all(status == 200 and events[-1] == "[DONE]" for status, events in answers)
    if failure == "hang":
        assert still_held
    outcomes = {p.candidate.outcome for p in pairs}
    assert len(pairs) >= 8
    assert outcomes <= {"timeout", "error", "dropped"}
    assert {p.stable.outcome for p in pairs} == {"ok"}
