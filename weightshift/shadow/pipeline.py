"""From a --records source to a :class:`~weightshift.shadow.report.Report`: choose the
files, read them with the engine, ask the figures. The CLI's ``shadow report`` calls
:func:`report_from`; tests and the benchmark do too."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from weightshift.shadow.embedded import EmbeddedEngine
from weightshift.shadow.report import (
    MirrorMetrics,
    Report,
    ShadowReportError,
    build,
    window_params,
)
from weightshift.shadow.source import download, local_files, parse_source, s3_keys
from weightshift.shadow.text import Embedder, Judge

ProgressFactory = Callable[[str, int], Callable[[int], None]]
"""(label, total bytes) -> a function to call with each step's bytes."""


@dataclass(frozen=True)
class Options:
    records: str | None
    model: str | None = None
    stable: str | None = None
    candidate: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    confidence: float = 0.95
    sample: int = 500
    divergent: int = 10
    memory_limit: str = "512MB"
    threads: int = 2


def report_from(
    options: Options,
    *,
    athena: Any = None,
    s3: Any = None,
    embedder: Embedder | None = None,
    judge: Judge | None = None,
    mirror_metrics: MirrorMetrics | None = None,
    progress: ProgressFactory | None = None,
    workdir: Path | None = None,
) -> Report:
    """The report for ``options``: in Athena when ``athena`` (an AthenaEngine) is given,
    else read from ``options.records`` (local folder, or S3 through ``s3``) embedded."""
    window_params(options.model or "", options.since, options.until)  # refuses an empty window
    common: dict[str, Any] = {
        "since": options.since,
        "until": options.until,
        "stable": options.stable,
        "candidate": options.candidate,
        "confidence": options.confidence,
        "sample": options.sample,
        "divergent": options.divergent,
        "embedder": embedder,
        "judge": judge,
        "mirror_metrics": mirror_metrics,
    }
    if athena is not None:
        if not options.model:
            raise ShadowReportError(
                "--engine athena needs --model: the table's model partition is injected, so "
                "every query names it"
            )
        return build(
            athena,
            source=options.records or f"athena:{athena.database}.{athena.table}",
            model=options.model,
            **common,
        )
    if not options.records:
        raise ShadowReportError("--records is required with the embedded engine")
    source = parse_source(options.records)
    with tempfile.TemporaryDirectory(prefix="weightshift-records-", dir=workdir) as scratch:
        names: dict[Path, str] = {}
        unreadable: list[tuple[str, str]] = []
        if source.is_s3:
            if s3 is None:
                import boto3  # noqa: PLC0415 (only for an S3 source)

                s3 = boto3.client("s3")
            keys = list(s3_keys(s3, source, options.model, options.since, options.until))
            step = (
                progress("downloading records", sum(size for _, size in keys)) if progress else None
            )
            paths, names, unreadable = download(s3, source, keys, Path(scratch), progress=step)
        else:
            assert source.folder is not None
            paths = local_files(source.folder, options.model, options.since, options.until)
        if not paths and not unreadable:
            raise ShadowReportError(
                f"--records {options.records}: no .jsonl.gz files"
                + (" in the window" if options.since or options.until else "")
            )
        with EmbeddedEngine(
            threads=options.threads, memory_limit=options.memory_limit, workdir=workdir
        ) as engine:
            total = sum(path.stat().st_size for path in paths)
            step = progress("reading records", total) if progress else None
            summary = engine.load(paths, names=names, progress=step)
            model = options.model
            if model is None:
                models = engine.models()
                if len(models) > 1:
                    raise ShadowReportError(
                        f"the records hold {len(models)} models ({', '.join(models)}): choose "
                        "one with --model"
                    )
                if not models:
                    raise ShadowReportError(
                        f"--records {options.records}: no valid pair record"
                        + (f" ({summary.malformed} malformed lines)" if summary.malformed else "")
                    )
                model = models[0]
            named = [(bad.where, bad.reason) for bad in summary.named]
            named = [*[(where, why) for where, why in unreadable], *named]
            return build(
                engine,
                source=options.records,
                model=model,
                files=summary.files + len(unreadable),
                malformed=summary.malformed + len(unreadable),
                malformed_named=named,
                **common,
            )
