"""Where the pair records come from: ``s3://bucket/prefix`` (as the gateways write them)
or a local folder of the same ``.jsonl.gz`` files.

Files in partitions (``model=``, ``date=``, ``hour=``) outside the window are skipped
without being read; the queries filter each record by its own time as well. S3 objects are
downloaded into a temporary folder for the embedded engine, several at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

SUFFIX = ".jsonl.gz"
MAX_OBJECT_BYTES = 1024 * 1024 * 1024
"""An object larger than this is not downloaded (the gateway writes far smaller batches)."""
_DATE = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})(?:/|$)")
_HOUR = re.compile(r"(?:^|/)hour=(\d{2})(?:/|$)")
_MODEL = re.compile(r"(?:^|/)model=([^/]+)(?:/|$)")


class SourceError(ValueError):
    """A --records value that cannot be read; the message says what to give instead."""


@dataclass(frozen=True)
class Source:
    text: str
    folder: Path | None = None
    bucket: str | None = None
    prefix: str = ""

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None


def parse_source(text: str) -> Source:
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        if not bucket:
            raise SourceError(f"--records {text!r}: name the bucket, e.g. s3://bucket/shadow")
        return Source(text=text, bucket=bucket, prefix=prefix.strip("/"))
    if "://" in text:
        raise SourceError(f"--records {text!r}: give s3://bucket/prefix or a local folder")
    folder = Path(text)
    if not folder.is_dir():
        raise SourceError(
            f"--records {text}: no such folder. Give the folder that holds the .jsonl.gz "
            "files, or s3://bucket/prefix."
        )
    return Source(text=text, folder=folder)


def in_window(key: str, model: str | None, since: datetime | None, until: datetime | None) -> bool:
    """Whether the file at ``key`` may hold records of ``model`` in [since, until), judged
    by its partition folders alone (a file outside partitions may hold anything)."""
    if model is not None:
        found = _MODEL.search(key)
        if found and found.group(1) != model:
            return False
    date = _DATE.search(key)
    if date is None:
        return True
    try:
        day = datetime.strptime(date.group(1), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return True
    hour = _HOUR.search(key)
    if hour is not None and 0 <= int(hour.group(1)) <= 23:
        start, end = day + timedelta(hours=int(hour.group(1))), timedelta(hours=1)
    else:
        start, end = day, timedelta(days=1)
    if since is not None and start + end <= since:
        return False
    return not (until is not None and start >= until)


def local_files(
    folder: Path, model: str | None, since: datetime | None, until: datetime | None
) -> list[Path]:
    """Every ``.jsonl.gz`` under ``folder`` whose partitions may hold the window, sorted."""
    return sorted(
        path
        for path in folder.rglob(f"*{SUFFIX}")
        if path.is_file() and in_window(path.relative_to(folder).as_posix(), model, since, until)
    )


def s3_keys(
    client: Any,
    source: Source,
    model: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Iterator[tuple[str, int]]:
    """(key, size) of every record object under the source whose partitions may hold the
    window; a model narrows the listing to its ``model=`` folder."""
    assert source.bucket is not None
    prefix = f"{source.prefix}/" if source.prefix else ""
    if model is not None:
        prefix += f"model={model}/"
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=source.bucket, Prefix=prefix
        )
        for page in pages:
            for entry in page.get("Contents", []):
                key = entry["Key"]
                if key.endswith(SUFFIX) and in_window(key[len(prefix) :], model, since, until):
                    yield key, int(entry.get("Size", 0))
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "error")
        raise SourceError(
            f"--records {source.text}: cannot list it ({code}). Check the bucket name and that "
            "you may s3:ListBucket there."
        ) from None


def download(
    client: Any,
    source: Source,
    keys: list[tuple[str, int]],
    into: Path,
    *,
    workers: int = 8,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Path], dict[Path, str], list[tuple[str, str]]]:
    """Download ``keys`` into ``into``; (paths, path -> s3:// name, unreadable objects)."""
    assert source.bucket is not None
    bucket = source.bucket
    failed: list[tuple[str, str]] = []
    names: dict[Path, str] = {}

    def fetch(item: tuple[int, tuple[str, int]]) -> Path | None:
        index, (key, size) = item
        name = f"s3://{bucket}/{key}"
        if size > MAX_OBJECT_BYTES:
            failed.append((name, f"object of {size:,} bytes, over the {MAX_OBJECT_BYTES:,} limit"))
            return None
        target = into / f"{index:08d}{SUFFIX}"
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            written = 0
            with target.open("wb") as out:
                for block in iter(lambda: body.read(1024 * 1024), b""):
                    written += len(block)
                    if written > MAX_OBJECT_BYTES:
                        raise ValueError(f"object over the {MAX_OBJECT_BYTES:,} byte limit")
                    out.write(block)
        except (ClientError, BotoCoreError, ValueError, OSError) as error:
            target.unlink(missing_ok=True)
            failed.append((name, f"not downloaded: {error}"))
            return None
        finally:
            if progress is not None:
                progress(size)
        names[target] = name
        return target

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        paths = [path for path in pool.map(fetch, enumerate(keys)) if path is not None]
    return paths, names, sorted(failed)
