"""The report as one self-contained HTML page, and both files written into a new folder.

Plots are drawn with matplotlib (Agg) and embedded as base64 PNG; the page is a Jinja2
template with autoescaping on, since records hold user text; its Content-Security-Policy
allows no script at all, so even a text that escaped escaping could not run.
"""

from __future__ import annotations

import base64
import io
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jinja2

from weightshift.shadow.report import Figure, Report, Skipped

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
BLUE, ORANGE = "#1f77b4", "#ff7f0e"


class OutputError(ValueError):
    """An --out folder that cannot take the report; the message says what to do."""


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (matplotlib loads slowly: only to draw)

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 (only to draw)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (matplotlib loads slowly: only to draw)

    return plt


def latency_plot(report: Report) -> str | None:
    plt = _pyplot()
    measures = [m for m in ("latency_ms", "ttft_ms") if report.latency_histogram.get(m)]
    if not measures:
        return None
    figure, axes = plt.subplots(1, len(measures), figsize=(5.5 * len(measures), 3.2), squeeze=False)
    for axis, measure in zip(axes[0], measures, strict=True):
        for colour, tint in (("stable", BLUE), ("candidate", ORANGE)):
            buckets = report.latency_histogram[measure].get(colour, [])
            if not buckets:
                continue
            # Buckets are tenths of a natural-log unit; fill the empty ones between.
            shares = {round(math.log(b.low) * 10): b.pairs for b in buckets}
            total = sum(shares.values())
            first, last = min(shares), max(shares)
            edges = [math.exp(i / 10) for i in range(first, last + 2)]
            values = [shares.get(i, 0) / total for i in range(first, last + 1)]
            axis.stairs(values, edges, label=colour, color=tint, linewidth=1.6)
        axis.set_xscale("log")
        axis.set_xlabel(measure.replace("_ms", " (ms)").replace("ttft", "time to first token"))
        axis.set_ylabel("share of pairs")
        axis.legend()
    return _png(figure)


def similarity_plot(report: Report) -> str | None:
    plt = _pyplot()
    names = [
        n
        for n in ("edit_distance", "rouge_l", "semantic_similarity")
        if report.similarity_histogram.get(n)
    ]
    if not names:
        return None
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.0), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        buckets = report.similarity_histogram[name]
        axis.bar(
            [(b.low + b.high) / 2 for b in buckets],
            [b.pairs for b in buckets],
            width=[b.high - b.low for b in buckets],
            color=ORANGE,
            edgecolor="white",
        )
        axis.set_xlim(0, 1)
        axis.set_xlabel(name.replace("_", " "))
        axis.set_ylabel("pairs")
    return _png(figure)


def timeline_plot(report: Report) -> str | None:
    plt = _pyplot()
    hours = [h for h in report.timeline if h.compared]
    if not hours:
        return None
    figure, axis = plt.subplots(figsize=(11, 3.0))
    xs = list(range(len(hours)))
    values = [h.exact_match.value or 0 for h in hours]
    lows = [h.exact_match.low or 0 for h in hours]
    highs = [h.exact_match.high or 0 for h in hours]
    axis.fill_between(xs, lows, highs, color=BLUE, alpha=0.2, label="95 % interval")
    axis.plot(xs, values, color=BLUE, marker="o" if len(xs) < 50 else None, label="exact match")
    axis.set_ylim(0, 1.02)
    axis.set_ylabel("exact-match rate")
    step = max(1, len(hours) // 6)
    labels = [f"{h.hour[5:10]} {h.hour[11:13]}h" for h in hours]  # MM-DD HHh, UTC
    axis.set_xticks(xs[::step], labels[::step])
    axis.set_xlabel("hour (UTC)")
    axis.legend(loc="lower left")
    return _png(figure)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("weightshift.shadow", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = _number
    environment.filters["pct"] = _percent
    return environment


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def render(report: Report) -> str:
    """The report's HTML page."""
    figures = {k: v for k, v in report.figures.items() if isinstance(v, Figure)}
    skipped = {k: v.skipped for k, v in report.figures.items() if isinstance(v, Skipped)}
    mirror = {k: v for k, v in report.mirror.items() if isinstance(v, Figure)}
    mirror_skipped = {k: v.skipped for k, v in report.mirror.items() if isinstance(v, Skipped)}
    stable_outcomes = sorted({c.stable for c in report.outcomes})
    candidate_outcomes = sorted({c.candidate for c in report.outcomes})
    table = {(c.stable, c.candidate): c.pairs for c in report.outcomes}
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            report=report,
            figures=figures,
            skipped=skipped,
            mirror=mirror,
            mirror_skipped=mirror_skipped,
            stable_outcomes=stable_outcomes,
            candidate_outcomes=candidate_outcomes,
            table=table,
            plots={
                "latency": latency_plot(report),
                "similarity": similarity_plot(report),
                "timeline": timeline_plot(report),
            },
        )
    )


def check_out(folder: Path) -> None:
    """Refuse an --out folder that already holds something: a report is never overwritten."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OutputError(
            f"--out {folder} already exists and is not an empty folder: reports are never "
            "overwritten. Give a new folder."
        )
    if not folder.parent.is_dir():
        raise OutputError(
            f"--out {folder}: the folder {folder.parent} does not exist; create it first."
        )


def write(report: Report, folder: Path, *, html: str | None = None) -> None:
    """``report.json`` and ``report.html`` into ``folder``, all or nothing: both are
    written into a temporary folder beside it, which then takes its name."""
    check_out(folder)
    page = html if html is not None else render(report)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        (staging / REPORT_JSON).write_text(
            report.model_dump_json(by_alias=True, indent=2) + "\n", encoding="utf-8"
        )
        (staging / REPORT_HTML).write_text(page, encoding="utf-8")
        staging.chmod(0o755)
        if folder.exists():
            folder.rmdir()  # empty (checked): rename needs the name free
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
