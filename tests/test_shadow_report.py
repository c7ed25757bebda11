"""``weightshift shadow report`` on the embedded engine: fixtures whose divergence is known,
every figure of the JSON against a value computed here by hand, malformed lines, the window,
the choice of comparison, the CLI and the files it writes."""

from __future__ import annotations

import gzip
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rapidfuzz.distance import Levenshtein
from scipy import stats as scipy_stats

from weightshift.cli import main
from weightshift.gateway.shadow import PairRecord
from weightshift.shadow import synthetic
from weightshift.shadow.pipeline import Options, report_from
from weightshift.shadow.report import Figure, Report, ShadowReportError, Skipped
from weightshift.shadow.synthetic import (
    CANDIDATE,
    MODEL,
    STABLE,
    START,
    record,
    side,
    text_records,
    write_jsonl_gz,
)

OTHER = "support-assistant/v1.6.0-abcdefabcdef"


def folder_with(tmp_path: Path, records: list[Any], name: str = "batch") -> Path:
    folder = tmp_path / "records"
    write_jsonl_gz(folder / f"model={MODEL}/date=2025-06-01/hour=12/{name}.jsonl.gz", records)
    return folder


def partitioned(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    """``records`` laid out as the gateway writes them: one file per hour of ``time``."""
    folder = tmp_path / "records"
    hours: dict[str, list[dict[str, Any]]] = {}
    for data in records:
        hours.setdefault(data["time"][:13], []).append(data)
    for hour, batch in hours.items():
        day, hh = hour.split("T")
        write_jsonl_gz(folder / f"model={MODEL}/date={day}/hour={hh}/batch.jsonl.gz", batch)
    return folder


def report_of(folder: Path, **options: Any) -> Report:
    return report_from(Options(records=str(folder), **options))


def figure(report: Report, name: str) -> Figure:
    value = report.figures[name]
    assert isinstance(value, Figure), value
    return value


def identical(n: int, *, keep_text: bool = False) -> list[dict[str, Any]]:
    return [
        record(
            i,
            keep_text=keep_text,
            stable=side(text=f"answer {i} is here", keep_text=keep_text, tokens_out=4),
            candidate=side(text=f"answer {i} is here", keep_text=keep_text, tokens_out=4),
        )
        for i in range(n)
    ]


def different(n: int, *, keep_text: bool = False) -> list[dict[str, Any]]:
    return [
        record(
            i,
            keep_text=keep_text,
            stable=side(text=f"alpha beta {i}", keep_text=keep_text, tokens_out=3),
            candidate=side(text=f"zzz{i}", keep_text=keep_text, tokens_out=1),
        )
        for i in range(n)
    ]


def test_every_synthetic_record_is_a_valid_pair_record() -> None:
    for line in synthetic.random_records(300, seed=3):
        PairRecord.model_validate(json.loads(line))
    for data in text_records():
        PairRecord.model_validate(data)


# --- fixtures whose divergence is known -----------------------------------------------


@pytest.mark.parametrize("keep_text", [False, True])
def test_identical_pairs_do_not_diverge(tmp_path: Path, keep_text: bool) -> None:
    report = report_of(folder_with(tmp_path, identical(20, keep_text=keep_text)))
    assert figure(report, "exact_match").value == 1.0
    assert figure(report, "exact_match").pairs == 20
    assert figure(report, "exact_match").high == 1.0
    assert figure(report, "refusal_delta").value == 0.0
    assert figure(report, "token_ratio").value == 1.0
    assert report.outcomes[0].model_dump() == {"stable": "ok", "candidate": "ok", "pairs": 20}
    assert report.divergent == []
    if keep_text:
        assert figure(report, "edit_distance").value == 0.0
        assert figure(report, "rouge_l").value == 1.0
        assert figure(report, "length_ratio").value == 1.0
        assert report.records.text_pairs == 20
    else:
        assert isinstance(report.figures["edit_distance"], Skipped)
        assert report.records.text_pairs == 0


@pytest.mark.parametrize("keep_text", [False, True])
def test_fully_different_pairs_diverge(tmp_path: Path, keep_text: bool) -> None:
    report = report_of(folder_with(tmp_path, different(12, keep_text=keep_text)))
    assert figure(report, "exact_match").value == 0.0
    assert figure(report, "exact_match").low == 0.0
    assert figure(report, "token_ratio").value == pytest.approx(1 / 3)
    assert len(report.divergent) == 10
    assert {d.why for d in report.divergent} == {"different answer"}
    if keep_text:
        assert figure(report, "rouge_l").value == 0.0
        expected = sum(
            Levenshtein.normalized_distance(f"alpha beta {i}", f"zzz{i}") for i in range(12)
        )
        assert figure(report, "edit_distance").value == pytest.approx(expected / 12)
        assert report.divergent_text[0].stable_output_text is not None


# --- a known mix: every figure against a hand-computed value ---------------------------


def mix() -> list[dict[str, Any]]:
    """20 pairs: 0-9 alike; 10-14 differ; 15-16 the candidate refuses; 17 both refuse;
    18 the candidate's copy was dropped; 19 the stable colour blocked, the candidate not."""
    rows = []
    for i in range(20):
        stable_kwargs: dict[str, Any] = {
            "text": f"same {i}",
            "latency_ms": 100.0 + i,
            "ttft_ms": 10.0 + i,
            "tokens_out": 10 + i,
        }
        candidate_kwargs: dict[str, Any] = {
            "text": f"same {i}",
            "latency_ms": 150.0 + 2 * i,
            "ttft_ms": 12.0 + i,
            "tokens_out": 12 + i,
        }
        if 10 <= i <= 14:
            candidate_kwargs["text"] = f"other {i}"
        if i in (15, 16):
            candidate_kwargs.update(text="I cannot help", refusal=True)
        if i == 17:
            stable_kwargs.update(text="no", refusal=True)
            candidate_kwargs.update(text="no", refusal=True)
        if i == 18:
            candidate_kwargs = {
                "outcome": "dropped",
                "status": None,
                "latency_ms": None,
                "ttft_ms": None,
                "tokens_in": None,
                "tokens_out": None,
            }
        if i == 19:
            stable_kwargs.update(outcome="blocked", text="blocked", refusal=True)
        rows.append(
            record(
                i,
                when=START + timedelta(minutes=5 * i),
                stable=side(**stable_kwargs),
                candidate=side(**candidate_kwargs),
            )
        )
    return rows


def wilson(k: int, n: int) -> tuple[float, float]:
    interval = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    return interval.low, interval.high


def test_a_known_mix_every_figure_by_hand(tmp_path: Path) -> None:
    report = report_of(folder_with(tmp_path, mix()))
    data = json.loads(report.model_dump_json(by_alias=True))
    figures = data["figures"]
    assert data["schema"] == "weightshift.shadow-report/v1"
    assert data["comparison"] == {
        "model": MODEL,
        "stable_version": STABLE,
        "candidate_version": CANDIDATE,
    }
    assert data["records"]["pairs"] == 20
    # Exact match: 19 pairs answered on both sides (18 dropped); alike: 0-9 and 17 = 11.
    exact = figures["exact_match"]
    assert (exact["count"], exact["pairs"]) == (11, 19)
    assert exact["value"] == pytest.approx(11 / 19)
    assert (exact["low"], exact["high"]) == pytest.approx(wilson(11, 19))
    # Refusals on the 19 pairs both answered: both 17 and 19? 19: stable blocked with a
    # refusal, the candidate answered ok without one. Candidate refuses 15, 16, 17 (3);
    # stable 17, 19 (2): delta 1/19.
    refusal = figures["refusal_delta"]
    assert refusal["pairs"] == 19
    assert refusal["value"] == pytest.approx(1 / 19)
    assert refusal["count"] == 1
    assert refusal["low"] < refusal["value"] < refusal["high"]
    # Blocks: stable only on 19: delta -1/19.
    assert figures["block_delta"]["value"] == pytest.approx(-1 / 19)
    # Tokens on the 18 pairs both answered ok (not 18, not 19).
    ok = [i for i in range(20) if i not in (18, 19)]
    stable_tokens = [10 + i for i in ok]
    candidate_tokens = [12 + i for i in ok]
    assert figures["token_ratio"]["pairs"] == 18
    assert figures["token_ratio"]["value"] == pytest.approx(
        sum(candidate_tokens) / sum(stable_tokens)
    )
    # Latency p50 and p99 over the same 18 pairs, inverse-CDF quantiles.
    stable_latency = sorted(100.0 + i for i in ok)
    candidate_latency = sorted(150.0 + 2 * i for i in ok)
    latency = data["latency"]["latency_ms"]
    assert latency["stable"]["p50"]["value"] == stable_latency[math.ceil(0.5 * 18) - 1]
    assert latency["candidate"]["p50"]["value"] == candidate_latency[8]
    assert latency["stable"]["p99"]["value"] == stable_latency[17]
    assert latency["stable"]["p99"]["high"] is None  # 18 values cannot bound a p99 above
    assert latency["stable"]["p50"]["pairs"] == 18
    low, high = latency["stable"]["p50"]["low"], latency["stable"]["p50"]["high"]
    # The order-statistic interval: ranks whose binomial mass covers 95 %.
    ranks = (stable_latency.index(low) + 1, stable_latency.index(high) + 1)
    coverage = scipy_stats.binom.cdf(ranks[1] - 1, 18, 0.5) - scipy_stats.binom.cdf(
        ranks[0] - 1, 18, 0.5
    )
    assert coverage >= 0.95
    assert (
        data["latency"]["ttft_ms"]["candidate"]["p50"]["value"] == sorted(12.0 + i for i in ok)[8]
    )
    # The p99 ratio: max candidate / max stable.
    assert figures["p99_latency_ratio"]["value"] == pytest.approx(
        candidate_latency[17] / stable_latency[17]
    )
    # Mirror losses over all 20 pairs.
    assert data["mirror"]["dropped"]["count"] == 1
    assert data["mirror"]["dropped"]["value"] == pytest.approx(1 / 20)
    assert data["mirror"]["no_answer"]["count"] == 1
    assert data["mirror"]["timeout"]["count"] == 0
    assert data["mirror"]["gateway_mirror_dropped"]["skipped"]
    # The outcome table.
    table = {(c["stable"], c["candidate"]): c["pairs"] for c in data["outcomes"]}
    assert table == {("ok", "ok"): 18, ("ok", "dropped"): 1, ("blocked", "ok"): 1}
    # Divergence over time: 20 pairs five minutes apart from 12:00 -> hours 12 and 13.
    hours = {h["hour"]: h for h in data["timeline"]}
    assert hours["2025-06-01T12"]["pairs"] == 12
    assert hours["2025-06-01T13"]["pairs"] == 8
    assert hours["2025-06-01T12"]["same_output"] == 10
    # The most divergent first: an outcome that differs, then a refusal on one side only.
    first = data["divergent"][0]
    assert first["why"].startswith("outcome")
    assert {d["request_id"] for d in data["divergent"][:2]} == {"req-18", "req-19"}
    assert data["divergent"][2]["why"] == "refused by the candidate only, different answer"


def test_text_measures_by_hand(tmp_path: Path) -> None:
    pairs = [
        ("a b c d", "a c d e"),  # LCS 3 of 4 and 4: ROUGE-L 0.75
        ("one two", "one two"),  # 1.0
        ("x", "y"),  # 0.0
    ]
    rows = [
        record(
            i,
            keep_text=True,
            stable=side(text=s, keep_text=True),
            candidate=side(text=c, keep_text=True),
        )
        for i, (s, c) in enumerate(pairs)
    ]
    report = report_of(folder_with(tmp_path, rows))
    assert figure(report, "rouge_l").value == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    distances = [3 / 7, 0.0, 1.0]  # 'a b c d' -> 'a c d e': b->c, c->d, d->e
    assert figure(report, "edit_distance").value == pytest.approx(sum(distances) / 3)
    assert figure(report, "edit_distance").method == "bootstrap-mean"
    lengths = sum(len(c) for _, c in pairs) / sum(len(s) for s, _ in pairs)
    assert figure(report, "length_ratio").value == pytest.approx(lengths)
    assert [d.request_id for d in report.divergent_text] == ["req-2", "req-0"]
    assert report.similarity_histogram["rouge_l"][15].pairs == 1  # 0.75 in [0.75, 0.8)


def test_the_sample_bounds_the_text_measures_and_says_so(tmp_path: Path) -> None:
    report = report_of(folder_with(tmp_path, identical(30, keep_text=True)), sample=7)
    assert figure(report, "edit_distance").pairs == 7
    assert any("sample of 7 of 30" in note for note in report.notes)
    again = report_of(folder_with(tmp_path / "again", identical(30, keep_text=True)), sample=7)
    assert again.figures == report.figures


# --- bad input -------------------------------------------------------------------------


def test_malformed_lines_are_counted_and_named_never_fatal(tmp_path: Path) -> None:
    good = identical(3)
    lines = [
        json.dumps(good[0]),
        "{not json",
        json.dumps({**good[1], "schema_version": 2}),
        json.dumps({**good[1], "time": "2025-06-01T12:00:00"}),
        json.dumps(good[2]),
    ]
    folder = folder_with(tmp_path, lines)
    broken = folder / f"model={MODEL}/date=2025-06-01/hour=12/broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"a": 1}\n' * 50)[:-10])
    report = report_of(folder)
    assert report.records.pairs == 2
    named = {(m.where.rsplit("/", 1)[1], m.reason) for m in report.records.malformed_named}
    assert (
        "batch.jsonl.gz:2",
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    ) in named
    assert ("batch.jsonl.gz:3", "schema_version: Input should be 1") in named
    assert any(where == "batch.jsonl.gz:4" and "timezone" in why for where, why in named)
    broken_lines = sorted(
        (int(where.split(":")[1]), why)
        for where, why in named
        if where.startswith("broken.jsonl.gz:")
    )
    # The lines before the cut are read (and are not records); the cut itself is named.
    assert "not a complete gzip stream" in broken_lines[-1][1]
    assert all("Field required" in why for _, why in broken_lines[:-1])
    assert report.records.malformed == 3 + len(broken_lines)


def test_a_lax_but_valid_record_counts_as_pair_record_accepts_it(tmp_path: Path) -> None:
    data = identical(2)
    lax = json.loads(json.dumps(data[1]))
    lax["stable"]["status"] = "200"  # PairRecord (lax) accepts a numeric string
    lax["time"] = "2025-06-01T14:00:00+02:00"
    report = report_of(folder_with(tmp_path, [data[0], lax]))
    assert report.records.pairs == 2
    assert report.records.malformed == 0
    assert report.window.first == "2025-06-01T12:00:00.000Z"


def test_since_and_until_select_by_each_records_time(tmp_path: Path) -> None:
    rows = [
        record(
            i,
            when=START + timedelta(minutes=30 * i),
            stable=side(text="a"),
            candidate=side(text="b" if i % 2 else "a"),
        )
        for i in range(8)
    ]
    folder = partitioned(tmp_path, rows)
    since = START + timedelta(hours=1)
    until = START + timedelta(hours=3)
    report = report_of(folder, since=since, until=until)
    assert report.records.pairs == 4  # 13:00, 13:30, 14:00, 14:30
    assert report.window.first == "2025-06-01T13:00:00.000Z"
    assert report.window.last == "2025-06-01T14:30:00.000Z"
    assert figure(report, "exact_match").count == 2
    with pytest.raises(ShadowReportError, match="not before"):
        report_of(folder, since=until, until=since)
    with pytest.raises(ShadowReportError, match=r"no \.jsonl\.gz files in the window"):
        report_of(folder, since=START + timedelta(days=2))
    # A file outside its partition is read and its records filtered by their own time.
    loose = tmp_path / "loose"
    write_jsonl_gz(loose / "all-hours.jsonl.gz", rows)
    assert report_of(loose, since=since, until=until).records.pairs == 4


def test_several_comparisons_need_a_choice(tmp_path: Path) -> None:
    rows = identical(3) + [
        {**r, "request_id": f"other-{n}", "candidate_version": OTHER}
        for n, r in enumerate(different(2))
    ]
    folder = folder_with(tmp_path, rows)
    with pytest.raises(ShadowReportError, match="2 comparisons") as error:
        report_of(folder)
    assert CANDIDATE in str(error.value)
    assert OTHER in str(error.value)
    chosen = report_of(folder, candidate=OTHER)
    assert chosen.records.pairs == 2
    assert figure(chosen, "exact_match").value == 0.0
    assert chosen.records.other_comparisons[0]["candidate_version"] == CANDIDATE


def test_copies_no_candidate_answered_count_against_it(tmp_path: Path) -> None:
    lost = record(
        9,
        candidate_version=None,
        stable=side(text="a"),
        candidate=side(
            outcome="dropped", status=None, latency_ms=None, tokens_in=None, tokens_out=None
        ),
    )
    report = report_of(folder_with(tmp_path, [*identical(3), lost]))
    assert report.records.pairs == 4
    version_unknown = report.mirror["version_unknown"]
    assert isinstance(version_unknown, Figure)
    assert version_unknown.count == 1


# --- the command -------------------------------------------------------------------------


def test_cli_json_and_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = folder_with(tmp_path, mix())
    out = tmp_path / "report"
    code = main(["shadow", "report", "--records", str(folder), "--json", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["figures"]["exact_match"]["count"] == 11
    assert json.loads((out / "report.json").read_text()) == printed
    assert "<html" in (out / "report.html").read_text()


def test_cli_never_overwrites_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = folder_with(tmp_path, mix())
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text("{}")
    code = main(["shadow", "report", "--records", str(folder), "--out", str(out)])
    assert code == 2
    assert "never overwritten" in capsys.readouterr().err
    assert (out / "report.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday' is not a time"),
        (["--until", "2025-06-01T12:00:00"], "has no timezone"),
        (["--confidence", "1.5"], "--confidence"),
        (["--engine", "athena"], "--athena-database"),
    ],
)
def test_cli_bad_options_get_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    folder = folder_with(tmp_path, mix())
    out = tmp_path / "never"
    code = main(["shadow", "report", "--records", str(folder), "--out", str(out), *args])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error
    assert not out.exists()


def test_cli_records_that_are_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shadow", "report", "--records", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["shadow", "report", "--records", str(tmp_path / "empty")]) == 2
    assert "no .jsonl.gz files" in capsys.readouterr().err


def test_time_options_take_dates_and_offsets(tmp_path: Path) -> None:
    from weightshift.shadow.report import parse_time

    assert parse_time("--since", "2025-06-01") == datetime(2025, 6, 1, tzinfo=UTC)
    assert parse_time("--since", "2025-06-01T14:00:00+02:00") == datetime(
        2025, 6, 1, 12, tzinfo=UTC
    )


def variant(changes: dict[str, Any]) -> str:
    data = json.loads(json.dumps(identical(1, keep_text=True)[0]))
    for path, value in changes.items():
        target = data
        *parents, key = path.split(".")
        for parent in parents:
            target = target[parent]
        if value is ...:
            del target[key]
        else:
            target[key] = value
    return json.dumps(data)


VARIANTS: list[tuple[str, str]] = [
    ("status as text", variant({"stable.status": "abc"})),
    ("status as a numeric string", variant({"stable.status": "200"})),
    ("status out of range", variant({"candidate.status": 600})),
    ("tokens negative", variant({"stable.tokens_out": -1})),
    ("tokens fractional", variant({"stable.tokens_out": 2.5})),
    ("tokens whole float", variant({"stable.tokens_out": 2.0})),
    ("tokens huge", variant({"stable.tokens_out": 2**70})),
    ("latency negative", variant({"stable.latency_ms": -3})),
    ("latency as int", variant({"stable.latency_ms": 3})),
    ("refusal null", variant({"stable.refusal": None})),
    ("refusal absent", variant({"stable.refusal": ...})),
    ("refusal as text", variant({"stable.refusal": "yes"})),
    ("outcome unknown", variant({"candidate.outcome": "great"})),
    ("hash not hex", variant({"stable.output_hash": "z" * 64})),
    ("text not its hash", variant({"candidate.output_text": "forged"})),
    ("prompt not its hash", variant({"prompt_text": "forged"})),
    ("extra key", variant({"extra": 1})),
    ("extra side key", variant({"stable.extra": 1})),
    ("status absent", variant({"stable.status": ...})),
    ("candidate_version absent", variant({"candidate_version": ...})),
    ("candidate of another model", variant({"candidate_version": "other/v1.0.0-0123456789ab"})),
    ("schema_version absent", variant({"schema_version": ...})),
    ("request id empty", variant({"request_id": ""})),
    ("request id long", variant({"request_id": "r" * 201})),
    ("time naive", variant({"time": "2025-06-01T12:00:00"})),
    ("time with offset", variant({"time": "2025-06-01T14:00:00+02:00"})),
    ("time impossible", variant({"time": "2025-02-30T12:00:00.000Z"})),
    ("endpoint unknown", variant({"endpoint": "embeddings"})),
    ("stable not an object", variant({"stable": [1]})),
    ("not an object", "[1, 2]"),
    ("duplicate key", variant({})[:-1] + ', "request_id": "second"}'),
    ("NaN latency", variant({}).replace('"latency_ms": 100.0', '"latency_ms": NaN', 1)),
]


@pytest.mark.parametrize(("what", "line"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_the_engine_accepts_exactly_what_pair_record_accepts(
    tmp_path: Path, what: str, line: str
) -> None:
    from weightshift.shadow.embedded import EmbeddedEngine, check_line

    try:
        expected: PairRecord | None = check_line(line.encode())
    except ValueError:
        expected = None
    path = write_jsonl_gz(tmp_path / "v.jsonl.gz", [line])
    with EmbeddedEngine() as engine:
        summary = engine.load([path])
        rows = engine.connection.execute(
            "SELECT request_id, stable.status, stable.tokens_out, stable.refusal FROM shadow_pairs"
        ).fetchall()
    if what == "tokens huge":  # PairRecord takes any int; the engine's columns hold 2^63
        assert (summary.records, summary.malformed) == (0, 1)
        assert "beyond the embedded engine's limits" in summary.named[0].reason
        assert summary.named[0].where.endswith("v.jsonl.gz:1")
        return
    assert (summary.records, summary.malformed) == ((1, 0) if expected else (0, 1)), what
    if expected is not None:  # and with PairRecord's values, not another reading of the line
        assert rows == [
            (
                expected.request_id,
                expected.stable.status,
                expected.stable.tokens_out,
                expected.stable.refusal,
            )
        ]


def test_a_text_with_a_unicode_line_separator_is_one_record(tmp_path: Path) -> None:
    # JSON leaves U+2028 and U+0085 unescaped; lines end at "\n" only.
    text = "first\u2028second\u0085third"
    rows = [
        record(
            0,
            keep_text=True,
            stable=side(text=text, keep_text=True),
            candidate=side(text=text, keep_text=True),
        )
    ]
    folder = tmp_path / "records"
    path = folder / "a.jsonl.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(
        gzip.compress((PairRecord.model_validate(rows[0]).model_dump_json() + "\n").encode())
    )
    report = report_of(folder)
    assert (report.records.pairs, report.records.malformed) == (1, 0)
    assert figure(report, "edit_distance").value == 0.0
