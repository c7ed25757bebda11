"""Benchmark the gateway's added latency against the model server and against LiteLLM.

Variants, each a real process in front of the same fake model server (tests/fake_upstream):

- (a) ``direct``: clients -> the fake model server.
- (b) ``gateway``: clients -> ``weightshift gateway`` -> the fake model server, with the
  example bundle copied and changed to measure proxy overhead: output moderation off (it
  buffers a stream by sentence, a policy cost), input moderation on (local moderator),
  ``max_concurrent_requests`` 1024 (so the limit refuses nothing).
- (b') ``gateway-outmod``: as (b) with the bundle's safety as shipped (output moderation on),
  only ``max_concurrent_requests`` raised: shows the TTFT cost of sentence moderation.
- (c) ``litellm``: clients -> LiteLLM's proxy (``litellm --config``, separate venv) -> the fake
  model server. The config is ``LITELLM_CONFIG`` below, written to a temp dir: no database,
  no master key, no callbacks, no per-chunk logging, no token counting, no retries. It is
  started as ``litellm --config CFG --host 127.0.0.1 --port P --keepalive_timeout 620`` with
  LITELLM_LOCAL_MODEL_COST_MAP=True and LITELLM_LOG=ERROR (log in the temp dir). Install:
  ``python3 -m venv /tmp/bench-litellm && /tmp/bench-litellm/bin/pip install
  'litellm[proxy]' httptools`` (httptools: the same HTTP parser uvicorn uses for the gateway).
- (d) ``mirror``: clients -> the mirror listener of a gateway (bundle as (b)) with
  ``--mirror-to`` a second gateway in front of a second fake model server (no
  --shadow-bucket). The candidate pair is reniced (``--candidate-nice``) to stand in for
  pods elsewhere; the copies that reach it are counted.

- (b0) ``gateway-baseline`` (``--baseline REV``): as (b), served by the gateway of another
  revision of this repository (``git archive REV``, run with ``PYTHONPATH`` on it and
  ``PYTHONSAFEPATH=1``), in the same rounds: before and after of a change, side by side.

Load: an asyncio aiohttp client (uvloop) in this process, one connection pool per variant
sized for the concurrency; ``concurrency`` workers each send streaming chat requests back to
back (closed loop), started staggered over one stream's duration (``--lockstep``: all at
once; equal-length streams then stay in phase, and every proxy queues 64-256 simultaneous
arrivals). Per concurrency, every round runs each variant once, in an order rotated each
round: ``concurrency`` unmeasured warm-up requests, the measured ones, then unmeasured ones
until the last measured ends (so all see ``concurrency`` in flight). Per request: TTFT (first
SSE chunk carrying content) and total time (to ``[DONE]``). Per round and variant: p50/p99 of
both, completed requests/s, CPU used by each process (/proc). Reported: medians across
rounds; added latency = percentile(variant) - percentile(direct) within a round, median
across rounds.

The fake model server's pace: ``--token-delay`` 0.05 s (20 tokens/s, a model's pace) keeps
2 CPUs below saturation at 256 streams; at 0.001 s a closed loop drives the CPUs to 100% at
either concurrency (a warning is printed), and added latency then measures each proxy's CPU
per request more than its path latency.

Targets: the gateway's added TTFT p50 <= 1 ms and p99 <= 5 ms, below LiteLLM's, at each
concurrency; its completed requests/s within 5 % of direct's; with ``--baseline``, its CPU
per request at most half the baseline's; mirroring changes (b)'s figures by no more than
noise (half the range of (b)'s per-round values, or a sign that flips between rounds).

Cores: every process (this client, the model servers, the proxies) runs on ``--cores``
CPUs (default 2): the script pins itself before it starts anything, and what it starts
inherits the affinity, so the figures are "on 2 cores" on a larger machine too.

Instructions (``--callgrind``): CPU time per request moves with what else the machine runs;
the instructions a process executes do not. With ``--callgrind`` the script instead runs the
gateway (and ``--baseline``'s) under valgrind's callgrind in front of the fake model server,
counts only while 48 streamed requests run 8 at a time (after a warm-up), and prints the
user-space instructions per request of each and their ratio (valgrind must be installed;
each gateway takes a minute or two to start under it).

Usage: python scripts/bench_gateway.py [--rounds 5] [--concurrency 64 256]
    [--requests-per-round N] [--tokens 30] [--token-delay 0.05] [--litellm PATH]
    [--profile SECONDS] [--baseline REV] [--cores 2] [--variants VARIANT ...] [--json]
       python scripts/bench_gateway.py --callgrind [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from tests.gateway_harness import (  # noqa: E402
    Upstream,
    folder_id,
    free_port,
    gateway,
    request,
    sse,
    stop,
    upstream,
    wait_for,
)

BUNDLE = PROJECT / "bundles/support-assistant/v1.5.0"
DEFAULT_LITELLM = Path("/tmp/bench-litellm/bin/litellm")
ANSWER = (
    "Open Settings, then Security, and choose Reset password. We email you a code: enter it, "
    "pick a new password of twelve characters or more, and sign in on each device."
)
QUESTION = "How do I reset my password?"
CONTENT = re.compile(rb'"content":\s*"[^"]')
"""A chunk carrying answer text (the role chunk a chat stream starts with has "")."""
TICK = os.sysconf("SC_CLK_TCK")

LABELS = {
    "direct": "(a) direct",
    "gateway": "(b) gateway",
    "gateway-baseline": "(b0) gateway at --baseline",
    "gateway-outmod": "(b') gateway, output moderation on",
    "litellm": "(c) litellm",
    "mirror": "(d) gateway mirror listener",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cores() -> int:
    """The CPUs this process (and so every process it starts) may run on."""
    return len(os.sched_getaffinity(0))


def pin_cores(count: int) -> str | None:
    """Run this process and every process it starts (they inherit it) on the first
    ``count`` CPUs it may use: the figures are then "on ``count`` cores" whatever the
    machine has. The problem, if ``count`` cannot be had."""
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= count <= len(allowed):
        return (
            f"--cores {count}: this process may run on {len(allowed)} CPUs "
            f"({', '.join(map(str, allowed))}); give a number from 1 to {len(allowed)}."
        )
    os.sched_setaffinity(0, allowed[:count])
    return None


# --- processes --------------------------------------------------------------------------


def answer_text(tokens: int) -> str:
    words = ANSWER.split(" ")
    return " ".join((words * (tokens // len(words) + 1))[:tokens])


def bundle_copy(root: Path, name: str, *, proxy_only: bool) -> Path:
    """The example bundle, its concurrency limit raised; ``proxy_only``: output moderation
    off, input moderation on."""
    dest = root / name
    shutil.copytree(BUNDLE, dest)
    routing_file = dest / "config/routing.json"
    routing = json.loads(routing_file.read_text())
    routing["max_concurrent_requests"] = max(1024, routing["max_concurrent_requests"])
    routing_file.write_text(json.dumps(routing, indent=2))
    if proxy_only:
        safety_file = dest / "config/safety.json"
        safety = json.loads(safety_file.read_text())
        safety["output_moderation"] = False
        safety["input_moderation"] = True
        safety_file.write_text(json.dumps(safety, indent=2))
    return dest


LITELLM_CONFIG = """\
model_list:
  - model_name: support-assistant
    litellm_params:
      model: openai/support-assistant
      api_base: {api_base}
      api_key: x
litellm_settings:
  drop_params: true
  callbacks: []
  success_callback: []
  failure_callback: []
  turn_off_message_logging: true
  telemetry: false
  request_timeout: 120
  disable_streaming_logging: true
  disable_token_counter: true
  disable_end_user_cost_tracking: true
router_settings:
  num_retries: 0
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
  dangerously_permit_weak_or_unset_master_key: true
"""


@contextlib.contextmanager
def litellm_proxy(executable: Path, upstream_url: str, workdir: Path) -> Iterator[tuple[str, int]]:
    """LiteLLM's proxy in front of ``upstream_url``: (its URL, its pid)."""
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(api_base=f"{upstream_url}/v1"))
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    env.pop("LITELLM_MASTER_KEY", None)
    logfile = (workdir / "litellm.log").open("wb")
    process = subprocess.Popen(
        [
            str(executable),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--keepalive_timeout",
            "620",
        ],
        cwd=workdir,
        env=env,
        stdout=logfile,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(f"{url}/health/liveliness", timeout=180, process=process)
        except (RuntimeError, TimeoutError):
            log((workdir / "litellm.log").read_text(errors="replace")[-3000:])
            raise
        yield url, process.pid
    finally:
        stop(process)
        logfile.close()


def baseline_tree(rev: str, workdir: Path) -> Path:
    """The repository at ``rev``, unpacked (``git archive``): its gateway runs as (b0)."""
    tree = workdir / "baseline"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(PROJECT), "archive", "--format=tar", rev],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def cpu_seconds(pids: list[int], *, descendants: bool = True) -> float:
    """User + system CPU seconds of ``pids`` and (alive now) their descendants."""
    total = 0.0
    for pid in _with_descendants(pids) if descendants else pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _with_descendants(pids: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot (others' load included)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


# --- load -------------------------------------------------------------------------------


@dataclass
class Sample:
    ttft: float | None
    total: float
    ok: bool
    error: str | None = None


async def one_request(session: aiohttp.ClientSession, url: str, body: bytes) -> Sample:
    started = time.perf_counter()
    ttft = None
    tail = b""
    try:
        async with session.post(url, data=body) as response:
            if response.status != 200:
                await response.read()
                return Sample(None, time.perf_counter() - started, False, f"HTTP {response.status}")
            async for chunk in response.content.iter_any():
                if ttft is None and CONTENT.search(tail + chunk):
                    ttft = time.perf_counter() - started
                tail = (tail + chunk)[-64:]
    except (aiohttp.ClientError, TimeoutError) as error:
        return Sample(ttft, time.perf_counter() - started, False, type(error).__name__)
    total = time.perf_counter() - started
    if ttft is None or b"[DONE]" not in tail:
        return Sample(ttft, total, False, "incomplete stream")
    return Sample(ttft, total, True)


@dataclass
class Drive:
    samples: list[Sample]
    """The measured requests."""
    seconds: float
    """From the first measured request's start to the last one's end."""
    sent: int
    """All requests, warm-up and tail included."""
    throughput: float
    """Requests completed (measured or not) per second from the first measured request's
    start to the last one's end, while ``concurrency`` were in flight throughout."""
    wall: float
    """Seconds of the whole drive, warm-up and tail included."""


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    concurrency: int,
    count: int,
    warm: int = 0,
    spread: float = 0.0,
) -> Drive:
    """``concurrency`` workers send requests back to back, worker i starting i/concurrency
    of ``spread`` seconds late (so arrivals are not in lockstep). The requests numbered
    ``warm`` to ``warm + count`` are measured; the workers go on sending (unmeasured) until
    the last measured one ends, so each measured request sees ``concurrency`` in flight."""
    issued = sent = 0
    outstanding = count
    samples: list[Sample] = []
    first = last = 0.0
    completed: list[float] = []

    async def worker(index: int) -> None:
        nonlocal issued, sent, outstanding, first, last
        if spread:
            await asyncio.sleep(spread * index / concurrency)
        while issued < warm + count or outstanding > 0:
            number = issued
            issued += 1
            measured = warm <= number < warm + count
            if number == warm:
                first = time.perf_counter()
            sample = await one_request(session, url, body)
            sent += 1
            if sample.ok:
                completed.append(time.perf_counter())
            if measured:
                samples.append(sample)
                outstanding -= 1
                last = time.perf_counter()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - started
    inside = sum(1 for t in completed if first <= t <= last)
    return Drive(samples, last - first, sent, inside / max(last - first, 1e-9), wall)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


@dataclass
class Round:
    variant: str
    concurrency: int
    index: int
    requests: int
    errors: int
    seconds: float
    ttft_p50: float
    ttft_p99: float
    total_p50: float
    total_p99: float
    throughput: float
    cpu: dict[str, float]
    """CPU seconds in the measured round: client, upstream, proxy, candidate (mirror pair)."""
    machine_busy: float
    """Fraction of all CPUs busy in the round (every process on the machine)."""
    wall: float = 0.0
    """Seconds of the round, warm-up and tail included (the CPU figures' period)."""
    ours_busy: float = 0.0
    """Fraction of all CPUs used by the client, the model server and the proxy."""
    mirrored: int | None = None
    sent: int = 0
    """Requests sent in the round, warm-up and tail included (CPU is per these)."""
    error_kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class Target:
    key: str
    url: str
    pids: list[int]


@dataclass
class Setup:
    targets: dict[str, Target]
    upstream: Upstream
    upstream_pid: int
    candidate: Upstream | None
    candidate_pids: list[int]
    gateway_pid: int
    text: str


@dataclass
class Results:
    rounds: list[Round] = field(default_factory=list)


async def measure(
    setup: Setup, args: argparse.Namespace, results: Results, *, concurrency: int
) -> None:
    body = json.dumps(
        {
            "model": "support-assistant",
            "messages": [{"role": "user", "content": QUESTION}],
            "stream": True,
        }
    ).encode()
    count = args.requests_per_round or 4 * concurrency
    spread = 0.0 if args.lockstep else args.tokens * args.token_delay + args.first_token_delay
    sessions = {
        key: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=600),
            timeout=aiohttp.ClientTimeout(total=300),
            headers={"content-type": "application/json", "accept-encoding": "identity"},
        )
        for key in setup.targets
    }
    order = list(setup.targets)
    try:
        for key in order:  # first warm-up: connections, imports, caches
            target = setup.targets[key]
            await drive(
                sessions[key],
                target.url,
                body,
                concurrency=concurrency,
                count=0,
                warm=2 * concurrency,
                spread=spread,
            )
            settle(setup, key)
        for index in range(args.rounds):
            shift = index % len(order)
            for key in order[shift:] + order[:shift]:
                target = setup.targets[key]
                session = sessions[key]
                gc.collect()
                before = snapshot(setup, target)
                run = await drive(
                    session,
                    target.url,
                    body,
                    concurrency=concurrency,
                    count=count,
                    warm=concurrency,
                    spread=spread,
                )
                after = snapshot(setup, target)
                samples, seconds = run.samples, run.seconds
                mirrored = settle(setup, key, expected=run.sent)
                done = [s for s in samples if s.ok]
                ttfts = [s.ttft for s in done if s.ttft is not None]
                totals = [s.total for s in done]
                busy = (after["machine_busy"] - before["machine_busy"]) / max(
                    1.0, after["machine_total"] - before["machine_total"]
                )
                result = Round(
                    variant=key,
                    concurrency=concurrency,
                    index=index,
                    requests=len(samples),
                    errors=len(samples) - len(done),
                    seconds=seconds,
                    ttft_p50=percentile(ttfts, 0.50),
                    ttft_p99=percentile(ttfts, 0.99),
                    total_p50=percentile(totals, 0.50),
                    total_p99=percentile(totals, 0.99),
                    throughput=run.throughput,
                    cpu={
                        name: after[name] - before[name]
                        for name in ("client", "upstream", "proxy", "candidate")
                    },
                    machine_busy=busy,
                    ours_busy=sum(after[n] - before[n] for n in ("client", "upstream", "proxy"))
                    / run.wall
                    / cores(),
                    mirrored=mirrored,
                    sent=run.sent,
                    wall=run.wall,
                    error_kinds=dict(Counter(s.error for s in samples if s.error)),
                )
                results.rounds.append(result)
                log(
                    f"  c={concurrency} round {index + 1}/{args.rounds} {key:15s} "
                    f"ttft p50 {result.ttft_p50 * 1e3:7.2f} p99 {result.ttft_p99 * 1e3:7.2f} ms"
                    f"  {result.throughput:7.1f} req/s  err {result.errors}"
                    + (f"  mirrored {mirrored}" if mirrored is not None else "")
                )
    finally:
        for session in sessions.values():
            await session.close()


def snapshot(setup: Setup, target: Target) -> dict[str, float]:
    busy, total = machine_ticks()
    return {
        "client": cpu_seconds([os.getpid()], descendants=False),  # the servers are children
        "upstream": cpu_seconds([setup.upstream_pid]),
        "proxy": cpu_seconds(target.pids) if target.pids else 0.0,
        "candidate": cpu_seconds(setup.candidate_pids) if setup.candidate_pids else 0.0,
        "machine_busy": float(busy),
        "machine_total": float(total),
    }


def settle(setup: Setup, key: str, expected: int | None = None) -> int | None:
    """Clear the model servers' request logs; after a mirror round, first wait until the
    copies stop arriving (so they do not load the next variant's round): the copies seen."""
    seen = None
    if key == "mirror" and setup.candidate is not None:
        last, stable_since, deadline = -1, time.monotonic(), time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = len(setup.candidate.received())
            if expected is not None and seen >= expected:
                break
            if seen != last:
                last, stable_since = seen, time.monotonic()
            elif time.monotonic() - stable_since > 1.5:
                break
            time.sleep(0.2)
        time.sleep(0.2)  # the last copies' streams finish
        setup.candidate.clear()
    setup.upstream.clear()
    return seen


def check_answers(setup: Setup) -> None:
    """Each variant streams the whole answer (read and parsed once, before measuring)."""
    payload = {
        "model": "support-assistant",
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
    }
    for key, target in setup.targets.items():
        status, _, raw = request(target.url, payload, timeout=60)
        text = ""
        if status == 200:
            for event in sse(raw):
                if isinstance(event, dict):
                    for choice in event.get("choices") or []:
                        text += (choice.get("delta") or {}).get("content") or ""
        if status != 200 or text != setup.text:
            raise RuntimeError(f"{key}: status {status}, answer {text!r} (not the fake's)")
    settle(setup, "mirror", expected=1)


# --- profile ----------------------------------------------------------------------------


def find_py_spy(litellm: Path | None) -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    for candidate in (litellm.parent / "py-spy" if litellm else None, DEFAULT_LITELLM.parent):
        if candidate is not None:
            path = candidate if candidate.name == "py-spy" else candidate / "py-spy"
            if path.exists():
                return str(path)
    return None


async def profile_gateway(
    setup: Setup, py_spy: str, seconds: float, concurrency: int, workdir: Path, *, spread: float
) -> dict[str, Any]:
    """py-spy samples of the plain gateway under load: where its time goes."""
    out = workdir / "gateway-profile.txt"
    target = setup.targets["gateway"]
    body = json.dumps(
        {
            "model": "support-assistant",
            "messages": [{"role": "user", "content": QUESTION}],
            "stream": True,
        }
    ).encode()
    spy = await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(setup.gateway_pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "250",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        headers={"content-type": "application/json"},
    ) as session:
        while spy.returncode is None:
            await drive(
                session,
                target.url,
                body,
                concurrency=concurrency,
                count=0,
                warm=concurrency * 2,
                spread=spread,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spy.wait(), 0.01)
    _, err = await spy.communicate()
    setup.upstream.clear()
    if not out.exists():
        return {"error": err.decode(errors="replace")[-500:]}
    return summarise_profile(out.read_text())


def _frame(frame: str) -> tuple[str, str]:
    """(function (file), component) of a py-spy frame ``func (path:line)``."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    name, path = (match.group(1), match.group(2)) if match else (frame, "?")
    if "/weightshift/" in path:
        component = "weightshift." + path.split("/weightshift/", 1)[1].removesuffix(".py")
    elif "site-packages/" in path:
        component = path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    elif "/lib/python3" in path:
        component = "stdlib." + path.rsplit("/", 1)[-1].removesuffix(".py")
    else:
        component = path.rsplit("/", 1)[-1]
    short = "/".join(path.split("/")[-2:])
    return f"{name} ({short})", component


def summarise_profile(raw: str) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f[0].startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1][0]] += count
        components[frames[-1][1]] += count
        for name in {f[0] for f in frames}:
            inclusive[name] += count
    share = {k: round(v / total, 4) for k, v in components.most_common(15)} if total else {}
    return {
        "samples": total,
        "self_by_component": share,
        "self_top": [(k, round(v / total, 4)) for k, v in own.most_common(15)] if total else [],
        "inclusive_weightshift": [
            (k, round(v / total, 4))
            for k, v in inclusive.most_common()
            if "gateway/" in k or "weightshift" in k
        ][:12]
        if total
        else [],
    }


# --- report -----------------------------------------------------------------------------


def med(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def summarise(results: Results, concurrency: int) -> dict[str, Any]:
    rounds = [r for r in results.rounds if r.concurrency == concurrency]
    by: dict[str, dict[int, Round]] = {}
    for r in rounds:
        by.setdefault(r.variant, {})[r.index] = r
    out: dict[str, Any] = {}
    direct = by.get("direct", {})
    for key, per_round in by.items():
        rs = list(per_round.values())
        sent = sum(r.sent for r in rs)
        row: dict[str, Any] = {
            stat: med([getattr(r, stat) for r in rs])
            for stat in ("ttft_p50", "ttft_p99", "total_p50", "total_p99", "throughput")
        }
        row["errors"] = sum(r.errors for r in rs)
        kinds: Counter[str] = Counter()
        for r in rs:
            kinds.update(r.error_kinds)
        row["error_kinds"] = dict(kinds)
        row["requests"] = sum(r.requests for r in rs)
        row["machine_busy"] = med([r.machine_busy for r in rs])
        row["ours_busy"] = med([r.ours_busy for r in rs])
        row["cpu_ms_per_request"] = {
            name: 1e3 * sum(r.cpu[name] for r in rs) / max(1, sent)
            for name in ("client", "upstream", "proxy", "candidate")
        }
        row["upstream_core_share"] = med([r.cpu["upstream"] / r.wall for r in rs])
        if key == "mirror":
            row["mirrored_share"] = sum(r.mirrored or 0 for r in rs) / max(1, sent)
        if key != "direct":
            for stat in ("ttft_p50", "ttft_p99", "total_p50", "total_p99"):
                diffs = [
                    getattr(r, stat) - getattr(direct[i], stat)
                    for i, r in per_round.items()
                    if i in direct
                ]
                row[f"added_{stat}"] = med(diffs)
                row[f"added_{stat}_rounds"] = diffs
        out[key] = row
    if "mirror" in by and "gateway" in by:
        out["mirror_vs_gateway"] = mirror_effect(by["gateway"], by["mirror"])
    return out


def mirror_effect(plain: dict[int, Round], mirror: dict[int, Round]) -> dict[str, Any]:
    effect: dict[str, Any] = {}
    for stat in ("ttft_p50", "ttft_p99", "total_p50", "total_p99", "throughput"):
        diffs = [getattr(mirror[i], stat) - getattr(plain[i], stat) for i in mirror if i in plain]
        values = [getattr(r, stat) for r in plain.values()]
        noise = (max(values) - min(values)) / 2 if values else math.nan
        same_sign = len(diffs) >= 3 and (all(d > 0 for d in diffs) or all(d < 0 for d in diffs))
        diff = med(diffs)
        effect[stat] = {
            "diff": diff,
            "noise": noise,
            "rounds": diffs,
            "beyond_noise": bool(same_sign and abs(diff) > noise),
        }
    return effect


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1e3:.2f}"


def print_table(summary: dict[int, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    verdicts: list[str] = []
    for concurrency, rows in summary.items():
        count = args.requests_per_round or 4 * concurrency
        print(
            f"\nconcurrency {concurrency}: {count} streaming requests per round, "
            f"{args.rounds} rounds, medians across rounds (ms; +: over (a) in the same round;"
            " proxyCPU: CPU ms/request of the proxy process; ours/busy: CPUs used by client,"
            " model server and proxy / by the whole machine)"
        )
        print(
            f"{'variant':36s} {'TTFT50':>7s} {'TTFT99':>7s} {'tot50':>7s} {'tot99':>7s} "
            f"{'req/s':>7s} {'err':>4s} {'+TTFT50':>8s} {'+TTFT99':>8s} {'+tot50':>7s} "
            f"{'proxyCPU':>8s} {'ours':>5s} {'busy':>5s}"
        )
        for key, label in LABELS.items():
            row = rows.get(key)
            if row is None:
                continue
            cpu = row["cpu_ms_per_request"]["proxy"]
            print(
                f"{label:36s} {ms(row['ttft_p50']):>7s} {ms(row['ttft_p99']):>7s} "
                f"{ms(row['total_p50']):>7s} {ms(row['total_p99']):>7s} "
                f"{row['throughput']:7.1f} {row['errors']:4d} "
                f"{ms(row.get('added_ttft_p50', math.nan)):>8s} "
                f"{ms(row.get('added_ttft_p99', math.nan)):>8s} "
                f"{ms(row.get('added_total_p50', math.nan)):>7s} "
                f"{(f'{cpu:.2f}' if key != 'direct' else '-'):>8s} "
                f"{row['ours_busy'] * 100:4.0f}% {row['machine_busy'] * 100:4.0f}%"
            )
        for key, row in rows.items():
            if isinstance(row, dict) and row.get("error_kinds"):
                print(f"  errors, {key}: {row['error_kinds']}")
        direct = rows.get("direct")
        if direct:
            cpu = direct["cpu_ms_per_request"]
            print(
                f"  fake model server: {direct['throughput']:.0f} req/s direct, "
                f"{direct['upstream_core_share'] * 100:.0f}% of one core, "
                f"{cpu['upstream']:.2f} CPU ms/request; client {cpu['client']:.2f} CPU ms/request"
            )
            worst = max((row["ours_busy"], key) for key, row in rows.items() if key in LABELS)
            if worst[0] > 0.8:
                print(
                    f"  WARNING: {worst[1]} kept the CPUs {worst[0] * 100:.0f}% busy: the load is "
                    "CPU-bound, so its added latency includes CPU queueing (the CPU ms/request "
                    "of each process), not only path latency; raise --token-delay"
                )
        if "mirror" in rows:
            print(
                f"  mirror: {rows['mirror']['mirrored_share'] * 100:.0f}% of requests copied "
                f"to the candidate; candidate pair CPU "
                f"{rows['mirror']['cpu_ms_per_request']['candidate']:.2f} ms/request"
            )
        verdicts += verdict_lines(concurrency, rows)
    print()
    for line in verdicts:
        print(line)
    return verdicts


def verdict_lines(concurrency: int, rows: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    gw = rows.get("gateway")
    if gw is None:
        return lines

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    p50, p99 = gw["added_ttft_p50"], gw["added_ttft_p99"]
    lines.append(
        f"VERDICT c={concurrency} gateway added TTFT p50 {ms(p50)} ms <= 1 ms: {mark(p50 <= 1e-3)}"
    )
    lines.append(
        f"VERDICT c={concurrency} gateway added TTFT p99 {ms(p99)} ms <= 5 ms: {mark(p99 <= 5e-3)}"
    )
    direct = rows.get("direct")
    if direct is not None and direct["throughput"] > 0:
        ratio = gw["throughput"] / direct["throughput"]
        lines.append(
            f"VERDICT c={concurrency} gateway keeps the model server's throughput: "
            f"{gw['throughput']:.1f} vs {direct['throughput']:.1f} req/s direct "
            f"({(ratio - 1) * 100:+.1f} %, within 5 %): {mark(ratio >= 0.95)}"
        )
    base = rows.get("gateway-baseline")
    if base is not None:
        ours = gw["cpu_ms_per_request"]["proxy"]
        before = base["cpu_ms_per_request"]["proxy"]
        lines.append(
            f"VERDICT c={concurrency} gateway CPU per request at most half the baseline's: "
            f"{ours:.2f} vs {before:.2f} ms ({ours / before:.2f}x): {mark(ours <= before / 2)}"
        )
    lite = rows.get("litellm")
    if lite is not None:
        for stat in ("p50", "p99"):
            ours, theirs = gw[f"added_ttft_{stat}"], lite[f"added_ttft_{stat}"]
            lines.append(
                f"VERDICT c={concurrency} gateway added TTFT {stat} below LiteLLM's: "
                f"{ms(ours)} vs {ms(theirs)} ms: {mark(ours < theirs)}"
            )
    else:
        lines.append(f"VERDICT c={concurrency} gateway below LiteLLM: not measured (no LiteLLM)")
    effect = rows.get("mirror_vs_gateway")
    if effect is not None:
        parts, beyond = [], []
        for stat, found in effect.items():
            unit = " req/s" if stat == "throughput" else " ms"
            scale = 1.0 if stat == "throughput" else 1e3
            parts.append(
                f"{stat} {found['diff'] * scale:+.2f}{unit} (noise +-{found['noise'] * scale:.2f})"
            )
            if found["beyond_noise"]:
                beyond.append(stat)
        lines.append(
            f"VERDICT c={concurrency} mirroring does not change served figures beyond noise: "
            f"{'; '.join(parts)}: {mark(not beyond)}"
            + (f" (beyond noise: {', '.join(beyond)})" if beyond else "")
        )
    return lines


# --- main -------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument(
        "--requests-per-round", type=int, default=None, help="default: 4x the concurrency"
    )
    parser.add_argument("--tokens", type=int, default=30, help="answer length in tokens")
    parser.add_argument(
        "--token-delay",
        type=float,
        default=0.05,
        help="seconds per token (default 0.05, a model's pace; 0.001 saturates 2 CPUs)",
    )
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--litellm", type=Path, default=None, help="the litellm executable")
    parser.add_argument(
        "--candidate-nice",
        type=int,
        default=10,
        help="niceness of the mirror's candidate gateway and model server (0: as the rest)",
    )
    parser.add_argument(
        "--mirror-workers",
        type=int,
        default=None,
        help="the mirroring gateway's --mirror-workers (default: the gateway's own, 16)",
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="then sample the gateway with py-spy under load for SECONDS",
    )
    parser.add_argument(
        "--lockstep",
        action="store_true",
        help="start all workers at once (default: staggered over one stream's duration)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        default=None,
        help="also measure the gateway of this git revision (before/after in the same run)",
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=2,
        help="pin this process and every process it starts (client, model servers, proxies) "
        "to this many CPUs (default 2; 0: leave the affinity as it is)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        metavar="VARIANT",
        help=f"the variants to measure (default all: {', '.join(VARIANTS)}; direct always)",
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="instead: count the user-space instructions per streamed request under "
        "valgrind's callgrind (8 streams), of the gateway and of --baseline's; repeatable "
        "on a busy machine, where CPU time is not",
    )
    parser.add_argument("--json", action="store_true", help="print JSON results")
    return parser.parse_args()


VARIANTS = tuple(LABELS)


def start_targets(
    stack: contextlib.ExitStack, args: argparse.Namespace, litellm: Path | None, workdir: Path
) -> Setup:
    """The fake model servers and the proxies of the variants asked for, started in
    ``stack`` (which stops them): each variant in front of the same model server."""
    wanted = set(args.variants) | {"direct"}
    text = answer_text(args.tokens)
    proxy_bundle = bundle_copy(workdir, "proxy", proxy_only=True)
    shipped_bundle = bundle_copy(workdir, "shipped", proxy_only=False)
    # each copy's own id: the gateway refuses an id that does not name its folder
    proxy_id, shipped_id = folder_id(proxy_bundle), folder_id(shipped_bundle)
    log("starting processes")
    model = stack.enter_context(upstream())
    cand_model = stack.enter_context(upstream()) if "mirror" in wanted else None
    for server in (model, cand_model):
        if server is not None:
            server.control(
                mode="ok",
                text=text,
                token_delay=args.token_delay,
                first_token_delay=args.first_token_delay,
            )
    common = ["--metrics", "off"]
    chat = "/v1/chat/completions"
    targets = {"direct": Target("direct", model.url + chat, [])}
    gateway_pid = 0

    def serve(key: str, bundle: Path, bundle_id: str, **options: Any) -> None:
        nonlocal gateway_pid
        started = stack.enter_context(
            gateway(bundle, model.url, bundle_id=bundle_id, extra=common, **options)
        )
        targets[key] = Target(key, started.url + chat, [started.process.pid])
        if key == "gateway":
            gateway_pid = started.process.pid

    if "gateway" in wanted:
        serve("gateway", proxy_bundle, proxy_id)
    if args.baseline and "gateway-baseline" in wanted:
        tree = baseline_tree(args.baseline, workdir)
        env = {"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}
        serve("gateway-baseline", proxy_bundle, proxy_id, env=env)
    if "gateway-outmod" in wanted:
        serve("gateway-outmod", shipped_bundle, shipped_id)
    if litellm is not None and "litellm" in wanted:
        lite_url, lite_pid = stack.enter_context(litellm_proxy(litellm, model.url, workdir))
        targets["litellm"] = Target("litellm", lite_url + chat, [lite_pid])
    candidate_pids: list[int] = []
    if cand_model is not None:
        candidate = stack.enter_context(
            gateway(proxy_bundle, cand_model.url, colour="blue", bundle_id=proxy_id, extra=common)
        )
        workers = ["--mirror-workers", str(args.mirror_workers)] if args.mirror_workers else []
        mirrored = stack.enter_context(
            gateway(
                proxy_bundle,
                model.url,
                bundle_id=proxy_id,
                extra=[*common, "--mirror-to", candidate.url, *workers],
                mirror=True,
            )
        )
        assert mirrored.mirror_url is not None
        candidate_pids = [candidate.process.pid, cand_model.process.pid]
        if args.candidate_nice:
            for pid in candidate_pids:
                os.setpriority(os.PRIO_PROCESS, pid, args.candidate_nice)
        targets["mirror"] = Target("mirror", mirrored.mirror_url + chat, [mirrored.process.pid])
    return Setup(
        targets=targets,
        upstream=model,
        upstream_pid=model.process.pid,
        candidate=cand_model,
        candidate_pids=candidate_pids,
        gateway_pid=gateway_pid,
        text=text,
    )


def find_litellm(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """The LiteLLM executable (None: that variant is left out), or the problem."""
    if "litellm" not in args.variants:
        return None, None
    litellm = args.litellm or (DEFAULT_LITELLM if DEFAULT_LITELLM.exists() else None)
    if litellm is None:
        log(
            "LiteLLM not found: install it with\n"
            "  python3 -m venv /tmp/bench-litellm && "
            "/tmp/bench-litellm/bin/pip install 'litellm[proxy]' httptools\n"
            "(or pass --litellm PATH). Running the other variants."
        )
    elif not litellm.exists():
        return None, f"--litellm {litellm}: no such file; give the litellm executable's path."
    return litellm, None


def main() -> int:
    args = parse_args()
    problem = pin_cores(args.cores) if args.cores else None
    litellm, problem = (None, problem) if problem else find_litellm(args)
    if problem:
        log(problem)
        return 2

    def on_term(signum: int, _: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    if args.callgrind:
        return run_callgrind(args)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gateway-")))
        setup = start_targets(stack, args, litellm, workdir)
        check_answers(setup)
        results = Results()
        profile: dict[str, Any] | None = None
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            for concurrency in args.concurrency:
                log(f"concurrency {concurrency}")
                runner.run(measure(setup, args, results, concurrency=concurrency))
            if args.profile > 0 and setup.gateway_pid:
                profile = run_profile(runner, setup, args, litellm)
    summary = {c: summarise(results, c) for c in args.concurrency}
    if args.json:
        verdicts = [line for c, rows in summary.items() for line in verdict_lines(c, rows)]
        print(
            json.dumps(
                {
                    "config": run_config(args, litellm),
                    "summary": summary,
                    "verdicts": verdicts,
                    "profile": profile,
                    "rounds": [asdict(r) for r in results.rounds],
                },
                indent=2,
                default=str,
            )
        )
        return 0
    print(
        f"fake model server: {args.tokens} tokens, token_delay {args.token_delay} s; "
        f"{cores()} CPUs shared by client, model server(s) and proxies"
    )
    print_table(summary, args)
    if profile is not None:
        print_profile(profile)
    return 0


CALLGRIND_STREAMS = 8
CALLGRIND_REQUESTS = 48


def run_callgrind(args: argparse.Namespace) -> int:
    """``--callgrind``: instructions per streamed request of the gateway (and of
    ``--baseline``'s), each under callgrind in front of the same fake model server, counted
    only while ``CALLGRIND_REQUESTS`` requests run at ``CALLGRIND_STREAMS`` streams (after
    a warm-up; start-up and shutdown excluded). Instructions do not depend on what else
    the machine runs, so a before/after ratio holds on a shared machine."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        log("--callgrind needs valgrind (apt-get install valgrind).")
        return 2
    counts: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gateway-")))
        bundle = bundle_copy(workdir, "proxy", proxy_only=True)
        model = stack.enter_context(upstream())
        model.control(mode="ok", text=answer_text(args.tokens), token_delay=args.token_delay)
        trees: dict[str, Path | None] = {"gateway": None}
        if args.baseline:
            trees[f"gateway at {args.baseline}"] = baseline_tree(args.baseline, workdir)
        for label, tree in trees.items():
            counts[label] = callgrind_count(label, bundle, model.url, workdir, tree)
            log(f"{label}: {counts[label] / 1e6:.3f} M instructions per streamed request")
    if args.baseline:
        ours, before = counts["gateway"], counts[f"gateway at {args.baseline}"]
        print(
            f"callgrind, {CALLGRIND_STREAMS} streams, {args.tokens} tokens: gateway "
            f"{ours / 1e6:.3f} M instructions per streamed request, {args.baseline} "
            f"{before / 1e6:.3f} M ({ours / before:.2f}x)"
        )
    return 0


def callgrind_count(
    label: str, bundle: Path, model_url: str, workdir: Path, tree: Path | None
) -> float:
    """Instructions per streamed request of one gateway (``tree``: another revision's)."""
    out = workdir / f"callgrind-{len(os.listdir(workdir))}.out"
    port = free_port()
    env = {**os.environ}
    if tree is not None:
        env.update(PYTHONPATH=str(tree), PYTHONSAFEPATH="1")
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "weightshift.cli",
        "gateway",
        *("--bundle", str(bundle), "--bundle-id", folder_id(bundle)),
        *("--upstream", model_url, "--listen", f"127.0.0.1:{port}", "--colour", "green"),
        *("--metrics", "off"),
    ]
    logged = workdir / f"callgrind-{port}.log"
    with logged.open("ab") as logfile:
        process = subprocess.Popen(command, cwd=PROJECT, env=env, stderr=logfile)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = json.dumps(
        {"messages": [{"role": "user", "content": QUESTION}], "stream": True}
    ).encode()
    try:
        try:
            wait_for(f"http://127.0.0.1:{port}/livez", timeout=600, process=process)
        except RuntimeError:
            tail = logged.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{label} did not start under valgrind:\n{tail}") from None
        uvloop.run(closed_loop(url, body, CALLGRIND_STREAMS, 2 * CALLGRIND_STREAMS))
        control = ["callgrind_control", "--instr"]
        subprocess.run([*control, "on", str(process.pid)], check=True, capture_output=True)
        done = uvloop.run(closed_loop(url, body, CALLGRIND_STREAMS, CALLGRIND_REQUESTS))
        subprocess.run([*control, "off", str(process.pid)], check=True, capture_output=True)
    finally:
        process.terminate()
        try:
            process.wait(300)  # valgrind writes its counts on exit
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if done != CALLGRIND_REQUESTS:
        raise RuntimeError(f"{label}: {CALLGRIND_REQUESTS - done} requests failed under callgrind")
    totals = [
        int(line.split()[1])
        for line in out.read_text().splitlines()
        if line.startswith(("summary:", "totals:"))
    ]
    return max(totals) / CALLGRIND_REQUESTS


async def closed_loop(url: str, body: bytes, streams: int, count: int) -> int:
    """``count`` streaming requests, ``streams`` at a time; how many succeeded."""
    async with aiohttp.ClientSession() as session:
        slots = asyncio.Semaphore(streams)

        async def one() -> bool:
            async with slots:
                return (await one_request(session, url, body)).ok

        return sum(await asyncio.gather(*(one() for _ in range(count))))


def run_profile(
    runner: asyncio.Runner, setup: Setup, args: argparse.Namespace, litellm: Path | None
) -> dict[str, Any] | None:
    """``--profile``: py-spy's samples of the plain gateway at the highest concurrency."""
    py_spy = find_py_spy(litellm)
    if py_spy is None:
        log("py-spy not found: pip install py-spy (no profile)")
        return None
    log(f"profiling the gateway for {args.profile:.0f} s")
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-profile-"))
    try:
        return runner.run(
            profile_gateway(
                setup,
                py_spy,
                args.profile,
                max(args.concurrency),
                workdir,
                spread=0.0 if args.lockstep else args.tokens * args.token_delay,
            )
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_config(args: argparse.Namespace, litellm: Path | None) -> dict[str, Any]:
    return {
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "requests_per_round": {c: args.requests_per_round or 4 * c for c in args.concurrency},
        "tokens": args.tokens,
        "token_delay": args.token_delay,
        "first_token_delay": args.first_token_delay,
        "litellm": str(litellm) if litellm else None,
        "candidate_nice": args.candidate_nice,
        "lockstep": args.lockstep,
        "mirror_workers": args.mirror_workers,
        "baseline": args.baseline,
        "variants": args.variants,
        "cpus": cores(),
    }


def print_profile(profile: dict[str, Any]) -> None:
    if "error" in profile:
        print(f"\nprofile failed: {profile['error']}")
        return
    print(f"\ngateway profile (py-spy, {profile['samples']} samples of busy time)")
    print("  self time by component:")
    for name, share in profile["self_by_component"].items():
        print(f"    {share * 100:5.1f}%  {name}")
    print("  self time, top functions:")
    for name, share in profile["self_top"]:
        print(f"    {share * 100:5.1f}%  {name}")
    print("  inclusive time, weightshift functions:")
    for name, share in profile["inclusive_weightshift"]:
        print(f"    {share * 100:5.1f}%  {name}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted: processes stopped")
        sys.exit(130)
