"""Synthetic pair records for benchmarks and tests: realistic shape, known figures.

Writes gzip JSON Lines exactly as the gateway's recorder does (``docs/shadow-records.md``),
without building a :class:`~weightshift.gateway.shadow.PairRecord` per line, so a million
pairs are written in seconds. Every record written here validates as a ``PairRecord``
(tests check a sample).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

MODEL = "support-assistant"
STABLE = "support-assistant/v1.4.2-3f9a1c2b7d4e"
CANDIDATE = "support-assistant/v1.5.0-0123456789ab"
START = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Mix:
    """The chances that shape a synthetic candidate against its stable colour."""

    same_output: float = 0.7
    stable_refusal: float = 0.02
    candidate_refusal: float = 0.03
    candidate_dropped: float = 0.005
    candidate_timeout: float = 0.002
    candidate_blocked: float = 0.004


def side(
    *,
    outcome: str = "ok",
    status: int | None = 200,
    latency_ms: float | None = 100.0,
    ttft_ms: float | None = None,
    tokens_in: int | None = 10,
    tokens_out: int | None = 20,
    refusal: bool = False,
    text: str | None = None,
    keep_text: bool = False,
    output_hash: str | None = None,
) -> dict[str, Any]:
    """One side's JSON object; an answer's hash from ``text`` (kept only with ``keep_text``)."""
    data: dict[str, Any] = {
        "status": status,
        "outcome": outcome,
        "latency_ms": latency_ms,
        "ttft_ms": ttft_ms,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "refusal": refusal,
        "output_hash": output_hash if text is None else sha(text),
    }
    if keep_text and text is not None:
        data["output_text"] = text
    return data


def record(
    n: int,
    *,
    stable: dict[str, Any],
    candidate: dict[str, Any],
    when: datetime = START,
    prompt: str | None = None,
    keep_text: bool = False,
    candidate_version: str | None = CANDIDATE,
) -> dict[str, Any]:
    """One pair record's JSON object (request id ``req-<n>``)."""
    body = prompt if prompt is not None else json.dumps({"prompt": f"question {n}"})
    data: dict[str, Any] = {
        "schema_version": 1,
        "request_id": f"req-{n}",
        "time": iso(when),
        "model": MODEL,
        "stable_version": STABLE,
        "candidate_version": candidate_version,
        "endpoint": "chat",
        "prompt_hash": sha(body),
        "stable": stable,
        "candidate": candidate,
    }
    if keep_text:
        data["prompt_text"] = body
    return data


def write_jsonl_gz(path: Path, records: list[dict[str, Any]] | list[str]) -> Path:
    """``records`` (objects, or lines as they are) as one gzip JSON Lines file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r, separators=(",", ":")) for r in records]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), compresslevel=1))
    return path


def random_records(count: int, *, seed: int = 0, mix: Mix = Mix()) -> Iterator[str]:
    """``count`` JSON lines (hashes and figures, no text) in time order, a second apart."""
    rng = random.Random(seed)
    hashes = [sha(f"answer {i}") for i in range(4096)]
    prompt_hashes = [sha(f"prompt {i}") for i in range(4096)]
    base = START
    for n in range(count):
        when = iso(base + timedelta(seconds=n))
        stable_latency = round(rng.lognormvariate(6.0, 0.5), 3)
        stable_tokens = rng.randint(5, 400)
        stable_hash = hashes[n % 4096]
        stable_refusal = rng.random() < mix.stable_refusal
        draw = rng.random()
        latency = round(stable_latency * rng.uniform(0.8, 1.3), 3)
        candidate_latency: float | None = latency
        candidate_ttft: float | None = round(latency * 0.2, 3)
        candidate_tokens: int | None = max(1, int(stable_tokens * rng.uniform(0.7, 1.4)))
        candidate_status: int | None = 200
        outcome = "ok"
        candidate_hash: str | None = (
            stable_hash if rng.random() < mix.same_output else hashes[(n * 7 + 1) % 4096]
        )
        if draw < mix.candidate_dropped:
            outcome, candidate_status = "dropped", None
            candidate_latency = candidate_ttft = None
            candidate_tokens, candidate_hash = None, None
        elif draw < mix.candidate_dropped + mix.candidate_timeout:
            outcome, candidate_status = "timeout", 504
            candidate_ttft, candidate_tokens, candidate_hash = None, None, None
        elif draw < mix.candidate_dropped + mix.candidate_timeout + mix.candidate_blocked:
            outcome = "blocked"
        candidate_refusal = outcome == "ok" and rng.random() < mix.candidate_refusal
        candidate = json.dumps(
            {
                "status": candidate_status,
                "outcome": outcome,
                "latency_ms": candidate_latency,
                "ttft_ms": candidate_ttft,
                "tokens_in": 12 if candidate_status else None,
                "tokens_out": candidate_tokens,
                "refusal": candidate_refusal,
                "output_hash": candidate_hash,
            },
            separators=(",", ":"),
        )
        yield (
            f'{{"schema_version":1,"request_id":"req-{n}","time":"{when}","model":"{MODEL}",'
            f'"stable_version":"{STABLE}","candidate_version":"{CANDIDATE}","endpoint":"chat",'
            f'"prompt_hash":"{prompt_hashes[n % 4096]}","stable":{{"status":200,"outcome":"ok",'
            f'"latency_ms":{stable_latency},"ttft_ms":{round(stable_latency * 0.2, 3)},'
            f'"tokens_in":12,"tokens_out":{stable_tokens},'
            f'"refusal":{"true" if stable_refusal else "false"},"output_hash":"{stable_hash}"}},'
            f'"candidate":{candidate}}}'
        )


def write_random(folder: Path, count: int, *, per_file: int = 500, seed: int = 0) -> list[Path]:
    """``count`` random pairs as files of ``per_file`` lines, laid out as the gateway does."""
    paths: list[Path] = []
    batch: list[str] = []
    for line in random_records(count, seed=seed):
        batch.append(line)
        if len(batch) == per_file:
            paths.append(_write_batch(folder, len(paths), batch))
            batch = []
    if batch:
        paths.append(_write_batch(folder, len(paths), batch))
    return paths


def _write_batch(folder: Path, index: int, lines: list[str]) -> Path:
    when = json.loads(lines[0])["time"]
    day, hour = when[:10], when[11:13]
    path = folder / f"model={MODEL}/date={day}/hour={hour}/batch-{index:07d}.jsonl.gz"
    return write_jsonl_gz(path, lines)


SCRIPT_TEXT = '<script>alert("shadow")</script> Your order ships Monday.'
"""A candidate answer holding markup: the page must show it as text."""


def text_records(count: int = 40) -> list[dict[str, Any]]:
    """A known mix of text-bearing pairs, an hour apart, for the page and its tests:
    every fourth pair the candidate answers differently (one of them with ``SCRIPT_TEXT``,
    one blocked), the rest alike."""
    records = []
    for n in range(count):
        stable_text = f"Your order {n} ships on Monday. Track it with the link in your email."
        candidate_text = stable_text
        candidate_outcome = "ok"
        if n % 4 == 1:
            candidate_text = f"Order {n} leaves the warehouse Monday; tracking is in your email."
        if n == 5:
            candidate_text = SCRIPT_TEXT
        if n == 9:
            candidate_text, candidate_outcome = "I can't help with that.", "blocked"
        records.append(
            record(
                n,
                when=START + timedelta(minutes=7 * n),
                keep_text=True,
                prompt=json.dumps({"messages": [{"role": "user", "content": f"Where is {n}?"}]}),
                stable=side(
                    text=stable_text,
                    keep_text=True,
                    latency_ms=200.0 + 10 * (n % 7),
                    ttft_ms=40.0 + n % 5,
                    tokens_out=len(stable_text.split()),
                ),
                candidate=side(
                    outcome=candidate_outcome,
                    text=candidate_text,
                    keep_text=True,
                    latency_ms=230.0 + 12 * (n % 7),
                    ttft_ms=45.0 + n % 5,
                    tokens_out=len(candidate_text.split()),
                    refusal=candidate_outcome == "blocked",
                ),
            )
        )
    return records
