"""``weightshift gateway``: serve a bundle in front of a model server (uvicorn, uvloop).

One process per pod: the main listener (the ALB's target: ``/v1/*``, ``/health``,
``/livez``) and, where ``--mirror-listen`` is given, the mirror listener (the ALB's
``mirror`` target group during a shadow rollout). Both share one ``Gateway``: one model
server client, one concurrency limit, one set of metrics. SIGTERM stops accepting
connections and waits for answers in flight (up to the request timeout), sends the last
metrics with a deadline, then exits: within the pod's grace period whatever CloudWatch does.

Everything that can stop the gateway is checked before "serving" is logged: the upstream
URL, the bundle (and ``--bundle-id`` against the folder's digest), the feedback key, and the
listeners' addresses, bound here before uvicorn starts (a busy port: exit 2, one paragraph).

The top of the gateway: it assembles the parts from the command line (bundle, metrics,
moderator, feedback key, mirror) and runs the applications of ``app.py`` under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from weightshift.bundles.manifest import load_local
from weightshift.bundles.schemas import BundleError
from weightshift.bundles.store import PULLED_ID
from weightshift.bundles.versioning import BundleId, VersionError
from weightshift.gateway.app import build_app
from weightshift.gateway.errors import BundleLoadError, GatewayStartError
from weightshift.gateway.feedback import FeedbackTokens, derive_key, random_key
from weightshift.gateway.metrics import (
    SHUTDOWN_FLUSH_SECONDS,
    Metrics,
    cloudwatch_client,
    cloudwatch_sink,
)
from weightshift.gateway.mirror import Mirror
from weightshift.gateway.moderation import local_gaps, moderator_for
from weightshift.gateway.observe import Prometheus, start_request_log
from weightshift.gateway.served import load_served
from weightshift.gateway.shadow import ShadowRecorder
from weightshift.gateway.state import Gateway

log = logging.getLogger("weightshift.gateway")


@dataclass(frozen=True)
class Options:
    """The command line, validated (see ``weightshift gateway --help``)."""

    bundle: Path
    upstream: str
    colour: str
    listen: tuple[str, int] = ("0.0.0.0", 8000)
    bundle_id: str | None = None
    keep_alive: int = 620
    """Seconds an idle client connection stays open: longer than the ALB's idle timeout, or
    the ALB may reuse a connection the gateway is closing and answer 502."""
    guardrail: tuple[str, str] | None = None
    feedback_key: str | None = None
    """The stack's KMS HMAC key (id or ARN) the feedback-token key is derived from."""
    region: str | None = None
    metrics: str = "auto"
    metrics_interval: float = 10.0
    mirror_listen: tuple[str, int] | None = None
    mirror_to: str | None = None
    mirror_queue: int = 256
    mirror_workers: int = 16
    mirror_timeout: float = 120.0
    shadow_bucket: str | None = None
    shadow_prefix: str = "shadow"
    shadow_keep_text: bool = False
    shadow_text_sample: float | None = None
    """The share of pairs that keep their text (``keeps_text`` of the request id)."""
    shadow_text_prefix: str | None = None
    shadow_text_kms_key: str | None = None
    shadow_flush_seconds: float = 60.0
    max_body_bytes: int | None = None
    """A request body larger than this is answered 413 before it is parsed (default: from
    the bundle's ``max_input_tokens``, at most 4 MiB: ``served.default_body_bytes``)."""
    prometheus_listen: tuple[str, int] | None = None
    """Where Prometheus scrapes ``/metrics`` (off by default)."""
    request_log: bool = True
    """One JSON line per request on stderr (``observe.py``)."""


def parse_upstream(text: str) -> str:
    """``--upstream``: an http(s) URL with a host (and a valid port, if any)."""
    problem = None
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as error:
        problem = str(error)
    else:
        if parts.scheme not in ("http", "https"):
            problem = "the scheme must be http or https"
        elif not parts.hostname:
            problem = "it names no host"
        elif parts.query or parts.fragment:
            problem = "it must not carry a query or a fragment"
    if problem:
        raise ValueError(
            f"--upstream {text!r} is not a URL the gateway can call ({problem}). Give the "
            "model server's base URL, scheme, host and port, e.g. http://127.0.0.1:8080 "
            "(the gateway calls /health and /v1/... under it)."
        )
    return text


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {text!r}: give HOST:PORT, e.g. 0.0.0.0:8000")
    return host or "0.0.0.0", int(port)


def _metrics_sink(options: Options) -> Any:
    if options.metrics == "off":
        return None
    import boto3  # noqa: PLC0415 (only when metrics go out)

    session = boto3.Session(region_name=options.region)
    if options.metrics == "auto" and session.get_credentials() is None:
        log.warning("no AWS credentials: metrics are counted but not sent to CloudWatch")
        return None
    return cloudwatch_sink(cloudwatch_client(session))


def check_bundle_id(root: Path, given: str | None) -> None:
    """A ``--bundle-id`` must name the folder: its hash is the first 12 hex characters of
    the folder's manifest digest (recorded by ``bundle pull``, else computed from the
    files), or the metrics would carry a version that does not exist."""
    if not given or not root.is_dir():
        return  # no id to check; a missing folder is load_served's to report
    try:
        bundle_id = BundleId.parse(given)
    except VersionError as error:
        raise BundleLoadError(f"--bundle-id {given!r}: {error}") from None
    record = root / PULLED_ID
    digest = None
    if record.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            digest = str(json.loads(record.read_text(encoding="utf-8"))["digest"])
    if digest is None:
        try:
            digest = load_local(root).manifest(bundle_id.version).digest
        except BundleError as error:
            raise BundleLoadError(
                f"--bundle-id {given}: the folder {root} cannot be hashed to check it: {error}"
            ) from None
    if not digest.startswith(bundle_id.digest):
        actual = BundleId(bundle_id.name, bundle_id.version, digest[: len(bundle_id.digest)])
        raise BundleLoadError(
            f"--bundle-id {given} does not match the folder {root}: its manifest digest is "
            f"{digest}, so its id is {actual}, not ...-{bundle_id.digest}. Pass "
            f"--bundle-id {actual}, or serve the folder that id names (a changed working copy "
            "is a different bundle: publish it to get its id)."
        )


def _published_at(root: Path) -> int | None:
    """When the folder's bundle was published (``bundle pull``'s record), as Unix time."""
    try:
        stamp = json.loads((root / PULLED_ID).read_text(encoding="utf-8"))["publishedAt"]
        return int(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _exporter(prometheus: Prometheus, address: tuple[str, int]) -> Any:
    try:
        return prometheus.serve(address)
    except OSError as error:
        raise GatewayStartError(
            f"--prometheus-listen {address[0]}:{address[1]}: cannot listen there "
            f"({error.strerror or error}). Another process may hold the port (find it with "
            "`ss -ltnp`): stop it or give another --prometheus-listen."
        ) from None


def bind(address: tuple[str, int], option: str) -> socket.socket:
    """A listening socket on ``address``, bound now: a busy port is one paragraph and exit
    2 before "serving" is logged, not a uvicorn error after it."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise GatewayStartError(
            f"{option} {host}:{port}: cannot listen there ({error.strerror or error}). "
            "Another process may hold the port (find it with `ss -ltnp`), or the address "
            f"is not this machine's: stop that process or give another {option}."
        ) from None
    sock.setblocking(False)
    return sock


def run(options: Options) -> None:
    """Serve until SIGTERM, on uvloop where it is installed (it is a dependency except on
    Windows). ``uvicorn.Config(loop=...)`` would only choose the loop if uvicorn made it;
    the listeners here share one loop that this function makes."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover (Windows)
        asyncio.run(serve(options))
        return
    uvloop.run(serve(options))


async def serve(options: Options) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    check_bundle_id(options.bundle, options.bundle_id)
    prometheus = None
    gateway = await _gateway(options)
    if options.prometheus_listen is not None:
        prometheus = Prometheus(gateway.bundle.model, gateway.bundle.version, options.colour)
        gateway.metrics.exporter = prometheus
    sockets = [bind(options.listen, "--listen")]
    exporter_server = None
    try:
        if options.mirror_listen is not None:
            sockets.append(bind(options.mirror_listen, "--mirror-listen"))
        if prometheus is not None and options.prometheus_listen is not None:
            exporter_server = _exporter(prometheus, options.prometheus_listen)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    request_log = start_request_log() if options.request_log else None
    try:
        await _serve(gateway, options, sockets)
    finally:
        if exporter_server is not None:
            exporter_server.shutdown()
        if request_log is not None:
            request_log.stop()


async def _serve(gateway: Gateway, options: Options, sockets: list[socket.socket]) -> None:
    """Serve on the bound ``sockets`` until a signal; then drain and exit within the grace
    period: the mirror stopped, the last metrics sent with a deadline."""
    metrics = gateway.metrics
    await gateway.start()
    tasks = [asyncio.create_task(metrics.run())]
    mirror = None
    if options.mirror_listen is not None:
        mirror = _mirror(gateway, options)
        tasks += mirror.tasks()
    servers = _servers(gateway, mirror, options)
    _drain_on_signals(gateway, servers)
    # What start-up made (modules, the bundle, its tokenizer: ~100,000 objects) lives as
    # long as the process: out of the collector's sight, a full collection costs what the
    # requests in flight hold, not milliseconds of the event loop.
    gc.collect()
    gc.freeze()
    log.info(
        "serving %s (%s) on %s:%d in front of %s",
        gateway.bundle.version,
        options.colour,
        *options.listen,
        options.upstream,
    )
    try:
        await asyncio.gather(
            *(server.serve(sockets=[sock]) for server, sock in zip(servers, sockets, strict=True))
        )
    finally:
        gateway.draining = True
        if mirror is not None:
            await mirror.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await metrics.close(SHUTDOWN_FLUSH_SECONDS)
        await gateway.close()


async def _gateway(options: Options) -> Gateway:
    """The gateway's shared state: the bundle loaded, its metrics, moderator and key."""
    bundle = await asyncio.to_thread(
        load_served, options.bundle, options.bundle_id, options.max_body_bytes
    )
    metrics = Metrics(
        bundle.model,
        bundle.version,
        options.colour,
        interval=options.metrics_interval,
        sink=_metrics_sink(options),
    )
    if options.guardrail is None:
        for gap in local_gaps(bundle.safety):
            log.warning("local moderation does not enforce %s; serve with --guardrail", gap)
    key = (
        await asyncio.to_thread(derive_key, options.feedback_key, options.region)
        if options.feedback_key
        else random_key()
    )
    return Gateway(
        bundle,
        options.upstream,
        options.colour,
        moderator_for(bundle.safety, options.guardrail, options.region),
        metrics,
        tokens=FeedbackTokens(key),
    )


def _mirror(gateway: Gateway, options: Options) -> Mirror:
    """The mirror to ``--mirror-to``, its pairs stored where ``--shadow-bucket`` says."""
    recorder = None
    if options.shadow_bucket:
        import boto3  # noqa: PLC0415 (only where pairs are stored)

        recorder = ShadowRecorder(
            options.shadow_bucket,
            options.shadow_prefix,
            keep_text=options.shadow_keep_text,
            text_sample=options.shadow_text_sample,
            text_prefix=options.shadow_text_prefix,
            text_kms_key=options.shadow_text_kms_key,
            max_seconds=options.shadow_flush_seconds,
            client=boto3.client("s3", region_name=options.region),
        )
    else:
        log.warning("no --shadow-bucket: mirrored pairs are not stored")
    assert options.mirror_to is not None
    return Mirror(
        gateway,
        options.mirror_to,
        queue_size=options.mirror_queue,
        workers=options.mirror_workers,
        timeout=options.mirror_timeout,
        recorder=recorder,
    )


def _servers(gateway: Gateway, mirror: Mirror | None, options: Options) -> list[uvicorn.Server]:
    """The main listener, and the mirror listener where there is a mirror."""
    timeout = gateway.bundle.routing.request_timeout_seconds
    created = _published_at(options.bundle) or int(time.time())
    app = build_app(gateway, created=created)
    servers = [_server(app, options.listen, timeout, options.keep_alive)]
    if mirror is not None and options.mirror_listen is not None:
        servers.append(
            _server(
                build_app(gateway, mirror.observe, created=created),
                options.mirror_listen,
                timeout,
                options.keep_alive,
            )
        )
    return servers


def _drain_on_signals(gateway: Gateway, servers: list[uvicorn.Server]) -> None:
    """SIGTERM and SIGINT: report unready at once, stop accepting, let answers in flight
    finish. One handler for every listener (uvicorn's own would stop only the last one)."""
    loop = asyncio.get_running_loop()

    def stop(sig: signal.Signals) -> None:
        log.info("%s: draining", sig.name)
        gateway.draining = True
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to ``serve`` (which stops every listener)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(app: Any, address: tuple[str, int], timeout: int, keep_alive: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=address[0],
        port=address[1],
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        proxy_headers=False,  # nothing reads the client's address: no layer per request
        log_level="warning",
        timeout_keep_alive=keep_alive,
        timeout_graceful_shutdown=timeout,
    )
    return _Server(config)
