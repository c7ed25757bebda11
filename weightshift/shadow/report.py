"""The shadow report: every figure with its interval and the pairs it stands on.

:func:`build` asks an engine (embedded DuckDB or Athena) the aggregate queries of
``weightshift/shadow/queries``, computes each figure's interval with
``weightshift/shadow/stats.py`` and the text measures on a sample, and returns a
:class:`Report`, whose JSON (``report.json``) is what the page shows and what a gate reads:
each figure is ``{value, low, high, method, pairs}``; a bound is null where the data cannot
give one, and a figure is null (with a note) where no pair measures it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from weightshift.shadow import stats
from weightshift.shadow.text import (
    Embedder,
    Judge,
    TextMeasureError,
    cosine,
    edit_distance,
    rouge_l,
)

SCHEMA = "weightshift.shadow-report/v1"
QUANTILES = (0.5, 0.99)
NO_CANDIDATE = ""
"""Stands for 'no candidate answered yet' in the pairs filter (a bundle id is never empty)."""


MirrorMetrics = Callable[[str, str, datetime, datetime], tuple[int, int]]
"""(model, stable version, since, until) -> (copies sent, copies dropped), from the gateways'
metrics (weightshift/shadow/mirror_metrics.py)."""


class ShadowReportError(ValueError):
    """Records or options that cannot make a report; the message says what to change."""


class Engine(Protocol):
    """Runs one of the report's queries by name, with parameters; rows as dicts."""

    name: str

    def run(self, name: str, params: dict[str, object]) -> list[dict[str, Any]]: ...


class Figure(BaseModel):
    """An estimate, its interval at the report's confidence, how, and on how many pairs."""

    model_config = ConfigDict(frozen=True)

    value: float | None
    low: float | None
    high: float | None
    method: str
    pairs: int
    """The pairs the figure stands on."""
    count: int | None = None
    """For a rate: the pairs that had the event."""
    note: str | None = None

    @classmethod
    def of(
        cls,
        interval: stats.Interval,
        method: str,
        pairs: int,
        *,
        count: int | None = None,
        note: str | None = None,
    ) -> Figure:
        if interval.value is None and note is None:
            note = "no pairs to measure"
        return cls(
            value=_finite(interval.value),
            low=_finite(interval.low),
            high=_finite(interval.high),
            method=method,
            pairs=pairs,
            count=count,
            note=note,
        )


class Skipped(BaseModel):
    """A measure that was not taken, and why."""

    skipped: str


class Comparison(BaseModel):
    model: str
    stable_version: str
    candidate_version: str | None


class Window(BaseModel):
    since: str | None
    until: str | None
    first: str | None
    last: str | None


class MalformedLine(BaseModel):
    where: str
    reason: str


class Records(BaseModel):
    """What was read: the pairs the figures stand on, and what could not be read."""

    source: str
    engine: str
    files: int | None
    pairs: int
    text_pairs: int
    malformed: int
    malformed_named: list[MalformedLine]
    other_comparisons: list[dict[str, Any]]
    """Comparisons in the same window that this report does not cover."""


class Cell(BaseModel):
    stable: str
    candidate: str
    pairs: int


class Hour(BaseModel):
    hour: str
    pairs: int
    compared: int
    same_output: int
    exact_match: Figure
    answered: int
    stable_refusals: int
    candidate_refusals: int
    candidate_no_answer: int


class Bucket(BaseModel):
    low: float
    high: float
    pairs: int


class Divergent(BaseModel):
    request_id: str
    time: str
    prompt_text: str | None = None
    stable_outcome: str
    candidate_outcome: str
    stable_refusal: bool | None = None
    candidate_refusal: bool | None = None
    stable_tokens_out: int | None = None
    candidate_tokens_out: int | None = None
    stable_latency_ms: float | None = None
    candidate_latency_ms: float | None = None
    stable_output_hash: str | None = None
    candidate_output_hash: str | None = None
    stable_output_text: str | None = None
    candidate_output_text: str | None = None
    edit_distance: float | None = None
    rouge_l: float | None = None
    why: str


class Report(BaseModel):
    """Everything ``report.json`` holds (docs/shadow-report.md names every field)."""

    model_config = ConfigDict(populate_by_name=True)

    schema_: str = Field(default=SCHEMA, alias="schema")
    generated: str
    confidence: float
    comparison: Comparison
    window: Window
    records: Records
    figures: dict[str, Figure | Skipped]
    latency: dict[str, dict[str, dict[str, Figure]]]
    """measure (latency_ms, ttft_ms) -> colour -> p50/p99."""
    mirror: dict[str, Figure | Skipped]
    outcomes: list[Cell]
    timeline: list[Hour]
    latency_histogram: dict[str, dict[str, list[Bucket]]]
    similarity_histogram: dict[str, list[Bucket]]
    divergent: list[Divergent]
    """The pairs that differ most by outcome, refusal, hash and length."""
    divergent_text: list[Divergent]
    """The sampled text-bearing pairs with the largest edit distance."""
    notes: list[str]


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def iso_utc(value: datetime) -> str:
    """``value`` in the records' time format (UTC, milliseconds, Z)."""
    if value.tzinfo is None:
        raise ShadowReportError(f"time {value} has no timezone: give it in UTC, e.g. ...Z")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(option: str, text: str) -> datetime:
    """An ISO-8601 time from the command line; a date alone is midnight UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ShadowReportError(
            f"{option} {text!r} is not a time: give ISO 8601, e.g. 2025-06-01T12:00:00Z"
        ) from None
    if value.tzinfo is None:
        if len(text) > 10:
            raise ShadowReportError(f"{option} {text!r} has no timezone: add Z (UTC), e.g. {text}Z")
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def window_params(model: str, since: datetime | None, until: datetime | None) -> dict[str, object]:
    if since is not None and until is not None and since >= until:
        raise ShadowReportError(
            f"--since {iso_utc(since)} is not before --until {iso_utc(until)}: nothing to read"
        )
    low = iso_utc(since) if since else "0000"
    high = iso_utc(until) if until else "9999"
    return {
        "model": model,
        "since": low,
        "until": high,
        "since_date": low[:10],
        "until_date": high[:10],
    }


def choose_comparison(
    rows: Sequence[dict[str, Any]],
    model: str,
    *,
    stable: str | None,
    candidate: str | None,
) -> tuple[Comparison, list[dict[str, Any]]]:
    """The comparison to report on, and the others the window holds."""
    if not rows:
        raise ShadowReportError(
            f"no pair records of model {model} in the window: check --records, --model and "
            "--since/--until"
        )
    named = [
        row
        for row in rows
        if (stable is None or row["stable_version"] == stable)
        and (candidate is None or row["candidate_version"] == candidate)
    ]
    known = [row for row in named if row["candidate_version"] is not None]
    pairs = {(row["stable_version"], row["candidate_version"]) for row in known}
    if len(pairs) > 1:
        counts: dict[tuple[str, str], int] = {}
        for row in known:
            key = (row["stable_version"], row["candidate_version"])
            counts[key] = counts.get(key, 0) + int(row["pairs"])
        listing = "; ".join(f"{s} against {c} ({n} pairs)" for (s, c), n in sorted(counts.items()))
        raise ShadowReportError(
            f"the records hold {len(pairs)} comparisons: {listing}. Choose one with --stable "
            "and --candidate."
        )
    if pairs:
        chosen_stable, chosen_candidate = next(iter(pairs))
    elif named:
        chosen_stable, chosen_candidate = named[0]["stable_version"], None
    else:
        raise ShadowReportError(
            "no pair records of the --stable/--candidate given in the window; the records "
            "hold: "
            + "; ".join(f"{r['stable_version']} against {r['candidate_version']}" for r in rows)
        )
    others = [
        row
        for row in rows
        if row["stable_version"] != chosen_stable
        or (row["candidate_version"] not in (chosen_candidate, None))
    ]
    return Comparison(
        model=model, stable_version=chosen_stable, candidate_version=chosen_candidate
    ), others


def _int(row: dict[str, Any], key: str) -> int:
    value = row.get(key)
    return int(value) if value is not None else 0


def _float(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return float(value) if value is not None else 0.0


def _rate(count: int, pairs: int, confidence: float, *, note: str | None = None) -> Figure:
    return Figure.of(
        stats.wilson(count, pairs, confidence), "wilson", pairs, count=count, note=note
    )


def _paired(row: dict[str, Any], event: str, confidence: float) -> Figure:
    counts = stats.PairedCounts(
        both=_int(row, f"{event}_both"),
        stable_only=_int(row, f"{event}_stable_only"),
        candidate_only=_int(row, f"{event}_candidate_only"),
        neither=_int(row, "answered")
        - _int(row, f"{event}_both")
        - _int(row, f"{event}_stable_only")
        - _int(row, f"{event}_candidate_only"),
    )
    return Figure.of(
        stats.paired_difference(counts, confidence),
        "newcombe-paired",
        counts.pairs,
        count=counts.candidate - counts.stable,
    )


def _ratio(row: dict[str, Any], name: str, confidence: float, note: str) -> Figure:
    sums = stats.PairedSums(
        n=_int(row, f"{name}_pairs"),
        x=_float(row, f"{name}_x"),
        y=_float(row, f"{name}_y"),
        xx=_float(row, f"{name}_xx"),
        yy=_float(row, f"{name}_yy"),
        xy=_float(row, f"{name}_xy"),
    )
    interval = stats.ratio_of_means(sums, confidence)
    return Figure.of(
        interval, "delta-method", sums.n, note=None if interval.value is not None else note
    )


def quantile_figures(
    engine: Engine,
    params: dict[str, object],
    n: int,
    *,
    colour: str,
    measure: str,
    confidence: float,
) -> dict[str, stats.Interval]:
    """p50 and p99 of one colour's measure with their order-statistic intervals."""
    if n == 0:
        return {f"p{round(q * 100)}": stats.EMPTY for q in QUANTILES}
    ranks = [stats.quantile_ranks(n, q, confidence) for q in QUANTILES]
    fractions: dict[str, object] = {}
    slot = 1
    for low, point, high in ranks:
        for rank in (point, low or point, high or point):
            # (rank - 0.5) / n: DuckDB's quantile_disc picks X(ceil(f n)) = X(rank).
            fractions[f"f{slot}"] = (rank - 0.5) / n
            slot += 1
    row = engine.run("quantiles", {**params, **fractions, "colour": colour, "measure": measure})[0]
    result = {}
    for index, (q, (low, _point, high)) in enumerate(zip(QUANTILES, ranks, strict=True)):
        base = 1 + 3 * index
        result[f"p{round(q * 100)}"] = stats.Interval(
            _maybe(row[f"v{base}"]),
            _maybe(row[f"v{base + 1}"]) if low is not None else None,
            _maybe(row[f"v{base + 2}"]) if high is not None else None,
        )
    return result


def _maybe(value: Any) -> float | None:
    return None if value is None else float(value)


def _histogram(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[Bucket]]]:
    result: dict[str, dict[str, list[Bucket]]] = {}
    for row in rows:
        bucket = int(row["bucket"])
        result.setdefault(str(row["measure"]), {}).setdefault(str(row["colour"]), []).append(
            Bucket(low=math.exp(bucket / 10), high=math.exp((bucket + 1) / 10), pairs=int(row["n"]))
        )
    return result


def _why(row: dict[str, Any]) -> str:
    reasons = []
    if row["stable_outcome"] != row["candidate_outcome"]:
        reasons.append(f"outcome {row['stable_outcome']} -> {row['candidate_outcome']}")
    if row.get("stable_refusal") != row.get("candidate_refusal"):
        reasons.append(
            "refused by the candidate only"
            if row.get("candidate_refusal")
            else "refused by stable only"
        )
    if row.get("stable_output_hash") != row.get("candidate_output_hash"):
        reasons.append("different answer")
    return ", ".join(reasons) or "different answer"


def _divergent(row: dict[str, Any]) -> Divergent:
    fields = set(Divergent.model_fields)
    data = {key: value for key, value in row.items() if key in fields}
    for key in ("stable_refusal", "candidate_refusal"):
        if isinstance(data.get(key), str):
            data[key] = data[key].lower() == "true"
    return Divergent(**data, why=_why(row))


def _similarity_buckets(values: Sequence[float]) -> list[Bucket]:
    counts = [0] * 20
    for value in values:
        counts[min(19, max(0, int(value * 20)))] += 1
    return [Bucket(low=i / 20, high=(i + 1) / 20, pairs=c) for i, c in enumerate(counts)]


def build(
    engine: Engine,
    *,
    source: str,
    model: str,
    since: datetime | None = None,
    until: datetime | None = None,
    stable: str | None = None,
    candidate: str | None = None,
    confidence: float = stats.CONFIDENCE,
    sample: int = 500,
    divergent: int = 10,
    embedder: Embedder | None = None,
    judge: Judge | None = None,
    mirror_metrics: MirrorMetrics | None = None,
    files: int | None = None,
    malformed: int = 0,
    malformed_named: Sequence[tuple[str, str]] = (),
    seed: int = 0,
    now: datetime | None = None,
) -> Report:
    """The report on ``model``'s pairs between ``since`` and ``until`` (see module doc)."""
    stats.z_of(confidence)
    if sample < 0 or divergent < 0:
        raise ShadowReportError("--sample and --divergent must be 0 or more")
    base = window_params(model, since, until)
    comparison, others = choose_comparison(
        engine.run("comparisons", base), model, stable=stable, candidate=candidate
    )
    params = {
        **base,
        "stable_version": comparison.stable_version,
        "candidate_version": comparison.candidate_version or NO_CANDIDATE,
    }
    totals = engine.run("totals", params)[0]
    pairs = _int(totals, "pairs")
    notes: list[str] = []
    unreadable = _int(totals, "unreadable")
    if unreadable:
        notes.append(f"{unreadable} rows the engine read without a request id or a side")

    figures: dict[str, Figure | Skipped] = {
        "exact_match": _rate(_int(totals, "same_output"), _int(totals, "compared"), confidence),
        "refusal_delta": _paired(totals, "refusal", confidence),
        "block_delta": _paired(totals, "blocked", confidence),
        "token_ratio": _ratio(totals, "token", confidence, "no pair with both token counts"),
        "length_ratio": _ratio(totals, "length", confidence, "no pair keeps both texts"),
    }
    latency: dict[str, dict[str, dict[str, Figure]]] = {}
    for measure in ("latency_ms", "ttft_ms"):
        latency[measure] = {}
        for colour in ("stable", "candidate"):
            n = _int(totals, f"{colour}_{measure}_n")
            intervals = quantile_figures(
                engine, params, n, colour=colour, measure=measure, confidence=confidence
            )
            latency[measure][colour] = {
                name: Figure.of(interval, "order-statistic", n)
                for name, interval in intervals.items()
            }
    # The ratio's interval joins two intervals each at half the error rate (Bonferroni).
    half = 1 - (1 - confidence) / 2
    n_stable = _int(totals, "stable_latency_ms_n")
    n_candidate = _int(totals, "candidate_latency_ms_n")
    stable_p99 = quantile_figures(
        engine, params, n_stable, colour="stable", measure="latency_ms", confidence=half
    )["p99"]
    candidate_p99 = quantile_figures(
        engine, params, n_candidate, colour="candidate", measure="latency_ms", confidence=half
    )["p99"]
    figures["p99_latency_ratio"] = Figure.of(
        stats.ratio_of_intervals(candidate_p99, stable_p99),
        "order-statistic-ratio-bonferroni",
        min(n_stable, n_candidate),
    )

    mirror: dict[str, Figure | Skipped] = {
        name: _rate(_int(totals, f"candidate_{name}"), pairs, confidence)
        for name in ("dropped", "timeout", "error", "no_answer", "version_unknown")
    }
    mirror["gateway_mirror_dropped"] = _gateway_dropped(
        mirror_metrics,
        comparison,
        since=since,
        until=until,
        totals=totals,
        confidence=confidence,
    )

    outcomes = [
        Cell(
            stable=str(r["stable_outcome"]),
            candidate=str(r["candidate_outcome"]),
            pairs=int(r["pairs"]),
        )
        for r in engine.run("outcomes", params)
    ]
    timeline = [
        Hour(
            hour=str(r["hour"]),
            pairs=_int(r, "pairs"),
            compared=_int(r, "compared"),
            same_output=_int(r, "same_output"),
            exact_match=_rate(_int(r, "same_output"), _int(r, "compared"), confidence),
            answered=_int(r, "answered"),
            stable_refusals=_int(r, "stable_refusals"),
            candidate_refusals=_int(r, "candidate_refusals"),
            candidate_no_answer=_int(r, "candidate_no_answer"),
        )
        for r in engine.run("timeline", params)
    ]
    histogram = _histogram(engine.run("histogram", params))
    divergent_rows = (
        [_divergent(r) for r in engine.run("divergent", {**params, "limit": divergent})]
        if divergent
        else []
    )

    text_pairs = _int(totals, "text_pairs")
    similarity: dict[str, list[Bucket]] = {}
    divergent_text: list[Divergent] = []
    if text_pairs and sample:
        rows = engine.run("text_sample", {**params, "limit": sample})
        distances = [
            edit_distance(r["stable_output_text"], r["candidate_output_text"]) for r in rows
        ]
        rouges = [rouge_l(r["stable_output_text"], r["candidate_output_text"]) for r in rows]
        figures["edit_distance"] = Figure.of(
            stats.bootstrap_mean(distances, confidence, seed=seed), "bootstrap-mean", len(rows)
        )
        figures["rouge_l"] = Figure.of(
            stats.bootstrap_mean(rouges, confidence, seed=seed), "bootstrap-mean", len(rows)
        )
        similarity["edit_distance"] = _similarity_buckets(distances)
        similarity["rouge_l"] = _similarity_buckets(rouges)
        figures["semantic_similarity"] = _semantic(embedder, rows, confidence, seed, similarity)
        figures["judge_win_rate"] = _judged(judge, rows, confidence, seed)
        ranked = sorted(
            zip(rows, distances, rouges, strict=True),
            key=lambda item: (-item[1], item[0]["request_id"]),
        )
        for row, distance, rouge in ranked[:divergent]:
            if distance == 0:
                break
            item = _divergent({**row, "stable_output_hash": None, "candidate_output_hash": None})
            why = item.why.replace("different answer", "").rstrip(", ")
            divergent_text.append(
                item.model_copy(
                    update={
                        "edit_distance": distance,
                        "rouge_l": rouge,
                        "why": f"{why}, text differs" if why else "text differs",
                    }
                )
            )
        if text_pairs > len(rows):
            notes.append(
                f"text measures on a sample of {len(rows)} of {text_pairs} text-bearing pairs"
            )
    else:
        reason = "no pair keeps its text" if not text_pairs else "--sample 0"
        for name in ("edit_distance", "rouge_l", "semantic_similarity", "judge_win_rate"):
            figures[name] = Skipped(skipped=reason)

    if comparison.candidate_version is None:
        notes.append("the candidate answered no copy in this window: its version is unknown")
    when = now or datetime.now(UTC)
    return Report(
        generated=iso_utc(when),
        confidence=confidence,
        comparison=comparison,
        window=Window(
            since=iso_utc(since) if since else None,
            until=iso_utc(until) if until else None,
            first=totals.get("first_time"),
            last=totals.get("last_time"),
        ),
        records=Records(
            source=source,
            engine=engine.name,
            files=files,
            pairs=pairs,
            text_pairs=text_pairs,
            malformed=malformed,
            malformed_named=[MalformedLine(where=w, reason=r) for w, r in malformed_named],
            other_comparisons=others,
        ),
        figures=figures,
        latency=latency,
        mirror=mirror,
        outcomes=outcomes,
        timeline=timeline,
        latency_histogram=histogram,
        similarity_histogram=similarity,
        divergent=divergent_rows,
        divergent_text=divergent_text,
        notes=notes,
    )


def _gateway_dropped(
    mirror_metrics: MirrorMetrics | None,
    comparison: Comparison,
    *,
    since: datetime | None,
    until: datetime | None,
    totals: dict[str, Any],
    confidence: float,
) -> Figure | Skipped:
    if mirror_metrics is None:
        return Skipped(
            skipped="not read: the gateways' MirrorDropped metric (copies dropped before they "
            "were sent, so never recorded) is read from CloudWatch with --mirror-metrics"
        )
    first, last = totals.get("first_time"), totals.get("last_time")
    start = since or (parse_time("first", first) if first else None)
    end = until or (parse_time("last", last) + timedelta(milliseconds=1) if last else None)
    if start is None or end is None:
        return Skipped(skipped="not read: no records give the window to read the metrics over")
    sent, dropped = mirror_metrics(comparison.model, comparison.stable_version, start, end)
    return _rate(
        dropped,
        sent + dropped,
        confidence,
        note=f"of the copies the stable gateways counted from {iso_utc(start)} to {iso_utc(end)}",
    )


def _semantic(
    embedder: Embedder | None,
    rows: Sequence[dict[str, Any]],
    confidence: float,
    seed: int,
    similarity: dict[str, list[Bucket]],
) -> Figure | Skipped:
    if embedder is None:
        return Skipped(
            skipped="no embeddings endpoint configured (--embeddings-url or --embeddings-bedrock)"
        )
    texts = [t for r in rows for t in (r["stable_output_text"], r["candidate_output_text"])]
    try:
        vectors = embedder.embed(texts)
        if len(vectors) != len(texts):
            raise TextMeasureError(f"{len(vectors)} embeddings for {len(texts)} texts")
        values = [cosine(vectors[2 * i], vectors[2 * i + 1]) for i in range(len(rows))]
    except TextMeasureError as error:
        return Skipped(skipped=f"not measured: {embedder.name}: {error}")
    similarity["semantic_similarity"] = _similarity_buckets([max(0.0, v) for v in values])
    return Figure.of(
        stats.bootstrap_mean(values, confidence, seed=seed),
        f"bootstrap-mean (cosine, {embedder.name})",
        len(values),
    )


def _judged(
    judge: Judge | None, rows: Sequence[dict[str, Any]], confidence: float, seed: int
) -> Figure | Skipped:
    if judge is None:
        return Skipped(skipped="judge: not configured")
    items = [
        (
            str(r["request_id"]),
            r.get("prompt_text") or "",
            r["stable_output_text"],
            r["candidate_output_text"],
        )
        for r in rows
    ]
    try:
        scores = judge.judge(items, seed=seed)
    except TextMeasureError as error:
        return Skipped(skipped=f"not judged: {judge.name}: {error}")
    judged = [score for score in scores if score is not None]
    failed = len(scores) - len(judged)
    return Figure.of(
        stats.bootstrap_mean(judged, confidence, seed=seed),
        f"bootstrap-mean (win 1, tie 0.5; {judge.name}, order randomized)",
        len(judged),
        note=f"{failed} pairs the judge failed on are left out" if failed else None,
    )
