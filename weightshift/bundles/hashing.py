"""Hashing a bundle's files: sha256 in large chunks across threads (stopped at once by a
failure or Ctrl-C), progress meters, and the canonical JSON whose sha256 is a digest."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

CHUNK = 8 * 1024 * 1024


T = TypeVar("T")
R = TypeVar("R")


class Cancelled(Exception):
    """Raised in a worker whose batch was stopped (a failure elsewhere, or Ctrl-C)."""


def parallel(
    work: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    stop: threading.Event | None = None,
) -> list[R]:
    """``work`` on each of ``items`` over ``workers`` threads; the results in order.

    A failure, or Ctrl-C in the calling thread, stops the batch at once: items not started
    are dropped, ``stop`` is set so running ones end at their next check of it, and the
    error is raised once they have (``ThreadPoolExecutor``'s own exit would first run every
    queued item: minutes of hashing or uploading after a Ctrl-C).
    """
    stop = stop or threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futures = []
    try:
        futures = [pool.submit(work, item) for item in items]
        return [future.result() for future in futures]
    except BaseException:
        stop.set()
        for future in futures:
            future.cancel()
        while True:
            try:
                pool.shutdown(wait=True)
                break
            except KeyboardInterrupt:
                continue  # Ctrl-C again: the running items are ending already
        raise
    finally:
        pool.shutdown(wait=True)


def sha256_file(
    path: Path,
    on_bytes: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[str, int]:
    """Hash a file in large chunks into a reused buffer (hashlib releases the GIL for them)."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    size = 0
    with path.open("rb", buffering=0) as handle:
        while True:
            if stop is not None and stop.is_set():
                raise Cancelled(str(path))
            read = handle.readinto(buffer)
            if not read:
                break
            digest.update(view[:read])
            size += read
            if on_bytes is not None:
                on_bytes(read)
    return digest.hexdigest(), size


def hash_files(
    root: Path,
    paths: Iterable[str],
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, tuple[str, int]]:
    """sha256 and size of each path, files hashed in parallel across cores."""
    paths = list(paths)
    stop = threading.Event()
    hashed = parallel(
        lambda rel: sha256_file(root / rel, on_bytes, stop),
        paths,
        workers or min(32, (os.cpu_count() or 1)),
        stop,
    )
    return dict(zip(paths, hashed, strict=True))


class Meter(Protocol):
    """Progress of a long operation in bytes (``weightshift.console.Progress``)."""

    def add(self, amount: int) -> None: ...

    def close(self, *, completed: bool = True) -> None: ...


class Silent:
    """A meter that shows nothing."""

    def __init__(self, label: str, total: int) -> None:
        del label, total

    def add(self, amount: int) -> None:
        del amount

    def close(self, *, completed: bool = True) -> None:
        del completed


MeterFactory = Callable[[str, int], Meter]
"""Makes a meter from a label and a total of bytes (``console.Progress`` is one)."""


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
