"""Real processes for the gateway's tests and benchmark: the fake model server, the gateway
(``weightshift gateway``) and, for metrics, moto's server standing in for CloudWatch."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent


def folder_id(root: Path, name: str = "support-assistant", version: str = "v1.5.0") -> str:
    """The id a bundle folder would be published under: a copy changed for a test has its
    own digest, and the gateway refuses a ``--bundle-id`` that does not name its folder."""
    from weightshift.bundles.manifest import load_local
    from weightshift.bundles.versioning import Version

    return f"{name}/{version}-{load_local(root).manifest(Version.parse(version)).digest[:12]}"


AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}
"""The environment a gateway process needs to talk to the emulator (with AWS_ENDPOINT_URL)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    url: str, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # answering, even if not ready
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def request(
    url: str,
    body: dict[str, Any] | None = None,
    *,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method or ("POST" if body is not None else "GET"),
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, _lower(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers), error.read()


def _lower(headers: Any) -> dict[str, str]:
    """Header names in lower case (HTTP names are case-insensitive)."""
    return {str(name).lower(): str(value) for name, value in headers.items()}


@dataclass
class Upstream:
    url: str
    process: subprocess.Popen[bytes]

    def control(self, **settings: Any) -> None:
        request(f"{self.url}/control", settings)

    def received(self) -> list[dict[str, Any]]:
        _, _, body = request(f"{self.url}/received")
        found: list[dict[str, Any]] = json.loads(body)
        return found

    def clear(self) -> None:
        request(f"{self.url}/received", method="DELETE")


@contextlib.contextmanager
def upstream() -> Iterator[Upstream]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", str(port)], cwd=PROJECT
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process=process)
        yield Upstream(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def aws_emulator() -> Iterator[str]:
    """moto's server on a free loopback port (S3, CloudWatch, ...): its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]
    mirror_url: str | None = None


@contextlib.contextmanager
def gateway(
    bundle: Path,
    upstream_url: str,
    *,
    colour: str = "green",
    bundle_id: str | None = None,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    mirror: bool = False,
) -> Iterator[Gateway]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "weightshift.cli",
        "gateway",
        "--bundle",
        str(bundle),
        "--upstream",
        upstream_url,
        "--colour",
        colour,
        "--listen",
        f"127.0.0.1:{port}",
        *(["--bundle-id", bundle_id] if bundle_id else []),
        *extra,
    ]
    mirror_url = None
    if mirror:
        mirror_port = free_port()
        args += ["--mirror-listen", f"127.0.0.1:{mirror_port}"]
        mirror_url = f"http://127.0.0.1:{mirror_port}"
    process = subprocess.Popen(args, cwd=PROJECT, env={**os.environ, **(env or {})})
    try:
        wait_for(f"http://127.0.0.1:{port}/livez", process=process)
        if mirror_url:
            wait_for(f"{mirror_url}/livez", process=process)
        yield Gateway(f"http://127.0.0.1:{port}", process, mirror_url)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, 15 s to drain and exit, then SIGKILL."""
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def sse(body: bytes) -> list[Any]:
    """The data payloads of a server-sent event stream (``[DONE]`` as the string)."""
    found: list[Any] = []
    for event in body.decode().split("\n\n"):
        for line in event.splitlines():
            if line.startswith("data:"):
                payload = line[5:].strip()
                found.append(payload if payload == "[DONE]" else json.loads(payload))
    return found


def datapoints(
    endpoint: str,
    name: str,
    dimensions: dict[str, str],
    stat: str = "Sum",
) -> list[float]:
    """What the gateways sent of ``name`` in the last ten minutes, one value per 1-second
    datapoint, as the emulated CloudWatch at ``endpoint`` answers for ``dimensions``."""
    import boto3

    client = boto3.client(
        "cloudwatch",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    now = datetime.now(UTC)
    found = client.get_metric_statistics(
        Namespace="weightshift",
        MetricName=name,
        Dimensions=[{"Name": key, "Value": value} for key, value in dimensions.items()],
        StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=1),
        Period=1,
        Statistics=[stat],  # type: ignore[list-item]
    )["Datapoints"]
    return [float(point[stat]) for point in found]  # type: ignore[literal-required]
