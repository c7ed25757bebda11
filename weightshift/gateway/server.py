"""``weightshift gateway``: serve a bundle in front of a model server (uvicorn, uvloop).

One process per pod: the main listener (the ALB's target: ``/v1/*``, ``/health``,
``/livez``) and, where ``--mirror-listen`` is given, the mirror listener (the ALB's
``mirror`` target group during a shadow rollout). Both share one ``Gateway``: one model
server client, one concurrency limit, one set of metrics. SIGTERM stops accepting
connections and waits for answers in flight (up to the request timeout) before exiting.

The top of the gateway: it assembles the parts from the command line (bundle, metrics,
moderator, feedback key, mirror) and runs the applications of ``app.py`` under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from weightshift.gateway.app import build_app
from weightshift.gateway.feedback import FeedbackTokens, derive_key, random_key
from weightshift.gateway.metrics import Metrics, cloudwatch_sink
from weightshift.gateway.mirror import Mirror
from weightshift.gateway.moderation import local_gaps, moderator_for
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
    shadow_flush_seconds: float = 60.0


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
    return cloudwatch_sink(session.client("cloudwatch"))


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
    gateway = await _gateway(options)
    metrics = gateway.metrics
    await gateway.start()
    tasks = [asyncio.create_task(metrics.run())]
    mirror = None
    if options.mirror_listen is not None:
        mirror = _mirror(gateway, options)
        tasks += mirror.tasks()
    servers = _servers(gateway, mirror, options)
    _drain_on_signals(gateway, servers)
    log.info(
        "serving %s (%s) on %s:%d in front of %s",
        gateway.bundle.version,
        options.colour,
        *options.listen,
        options.upstream,
    )
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        gateway.draining = True
        if mirror is not None:
            await mirror.stop()
        for task in tasks:
            task.cancel()
        await metrics.flush()
        await gateway.close()


async def _gateway(options: Options) -> Gateway:
    """The gateway's shared state: the bundle loaded, its metrics, moderator and key."""
    bundle = load_served(options.bundle, options.bundle_id)
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
    servers = [_server(build_app(gateway), options.listen, timeout, options.keep_alive)]
    if mirror is not None and options.mirror_listen is not None:
        servers.append(
            _server(
                build_app(gateway, mirror.observe),
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
        log_level="warning",
        timeout_keep_alive=keep_alive,
        timeout_graceful_shutdown=timeout,
    )
    return _Server(config)
