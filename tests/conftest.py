"""Shared fixtures: the project folder, its production stack config, an emulated bucket."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.alb_world import World, alb_world
from tests.emulator import make_artifact_bucket
from tests.gateway_harness import Upstream, aws_emulator, upstream
from weightshift.preview.synth import Graph, apply_overrides, stack_config, synthesize

PROJECT = Path(__file__).resolve().parent.parent
BUCKET = "weightshift-artifacts-test"


@pytest.fixture(scope="session")
def project() -> Path:
    return PROJECT


@pytest.fixture
def prod_values() -> dict[str, Any]:
    return stack_config(PROJECT, "prod")


def synth(*overrides: str) -> Graph:
    """The prod stack synthesized offline with ``--set`` style overrides."""
    return synthesize(PROJECT, "prod", apply_overrides(stack_config(PROJECT, "prod"), overrides))


def listener_weights(graph: Graph) -> dict[str, int]:
    """Target (blue, green, mirror) -> weight in the HTTPS listener's default forward action."""
    (action,) = graph.named("traffic-https").inputs["defaultActions"]
    assert action["type"] == "forward"
    by_arn = {group["arn"]: group["weight"] for group in action["forward"]["targetGroups"]}
    return {target: by_arn[arn] for target, arn in graph.outputs["targetGroupArns"].items()}


def serialize(monkeypatch: pytest.MonkeyPatch, handler: type, *names: str) -> None:
    """Make moto's handlers ``names`` of ``handler`` mutually exclusive.

    AWS makes a conditional write (S3 ``If-None-Match``, SSM ``Overwrite=False``) atomic;
    moto checks, then writes. Serialising its handlers gives the guarantee AWS gives, so a
    concurrency test exercises our code's use of it, not moto's race.
    """
    lock = threading.Lock()
    for name in names:
        original = getattr(handler, name)

        def atomic(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return _original(self, *args, **kwargs)

        monkeypatch.setattr(handler, name, atomic)


@pytest.fixture(autouse=True)
def _keep_the_event_loop() -> Iterator[None]:
    """Pulumi's runtime (synthesis, ``@pulumi.runtime.test``) runs on the thread's current
    event loop and keeps state bound to it; a test's ``asyncio.run`` leaves none current.
    Each test ends with the loop it started with."""
    policy = asyncio.get_event_loop_policy()
    try:
        before: asyncio.AbstractEventLoop | None = policy.get_event_loop()
    except RuntimeError:
        before = None
    yield
    if before is not None and not before.is_closed():
        policy.set_event_loop(before)


def offline_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region, and no endpoint or profile a developer's shell may set:
    every boto3 call goes to moto."""
    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    offline_aws(monkeypatch)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        make_artifact_bucket(client, BUCKET, 30, boto3.client("kms", region_name="us-east-1"))
        yield client


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The emulated ALB, SSM, incident bucket and on-call topic of tests/alb_world.py."""
    with alb_world(monkeypatch) as found:
        yield found


@pytest.fixture(scope="module")
def model() -> Iterator[Upstream]:
    """A fake model server process, one per test module that asks for it."""
    with upstream() as found:
        yield found


@pytest.fixture(scope="module")
def cloudwatch() -> Iterator[str]:
    """The AWS emulator as a server (CloudWatch, S3, KMS), one per test module."""
    with aws_emulator() as endpoint:
        yield endpoint
