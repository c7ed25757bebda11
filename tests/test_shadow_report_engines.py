"""The shadow report's engines and services: one query text for DuckDB and Athena (moto,
with Athena's answers computed by running the received Trino text), records in S3 (moto),
embeddings from a local OpenAI-compatible server and from Bedrock (Stubber), a judge, and
the summary published to CloudWatch (moto)."""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlglot
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws
from moto.athena.models import QueryResults, athena_backends

from tests.conftest import offline_aws
from weightshift.shadow import queries
from weightshift.shadow.athena import AthenaEngine, AthenaError
from weightshift.shadow.embedded import EmbeddedEngine
from weightshift.shadow.pipeline import Options, report_from
from weightshift.shadow.publish import NAMESPACE, publish
from weightshift.shadow.report import Figure, Report, Skipped
from weightshift.shadow.synthetic import MODEL, START, record, side, text_records, write_jsonl_gz
from weightshift.shadow.text import (
    BedrockEmbeddings,
    OpenAIEmbeddings,
    Preference,
    PreferenceJudge,
)

BUCKET = "shadow-records"
PARAMS: dict[str, object] = {
    "model": MODEL,
    "since": "0000",
    "until": "9999",
    "since_date": "0000",
    "until_date": "9999",
    "stable_version": "s",
    "candidate_version": "c",
    "colour": "stable",
    "measure": "latency_ms",
    **{f"f{i}": 0.5 for i in range(1, 7)},
    "limit": 5,
}


def records_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "records"
    rows = text_records()
    by_hour: dict[str, list[dict[str, Any]]] = {}
    for data in rows:
        by_hour.setdefault(data["time"][:13], []).append(data)
    for hour, batch in by_hour.items():
        day, hh = hour.split("T")
        write_jsonl_gz(folder / f"model={MODEL}/date={day}/hour={hh}/b.jsonl.gz", batch)
    return folder


def comparable(report: Report) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(report.model_dump_json(by_alias=True))
    for key in ("generated",):
        data.pop(key)
    data["records"] = {k: v for k, v in data["records"].items() if k in ("pairs", "text_pairs")}
    return data


# --- one query text ------------------------------------------------------------------------


@pytest.mark.parametrize("name", queries.QUERIES)
def test_each_query_is_trino_and_transpiles_to_duckdb(name: str) -> None:
    trino = queries.build(name, PARAMS, dialect="trino", table="shadow.shadow_pairs")
    parsed = sqlglot.parse_one(trino, read="trino")  # Athena's text parses as Trino
    assert "shadow.shadow_pairs" in parsed.sql("trino")
    duck = queries.build(name, PARAMS, dialect="duckdb")
    assert "APPROX" not in duck.upper()  # DuckDB computes exact quantiles
    with EmbeddedEngine() as engine:  # and DuckDB runs it (on no records)
        engine.connection.execute(duck).fetchall()


def test_values_become_literals_never_sql() -> None:
    hostile = {**PARAMS, "model": "x' OR '1'='1"}
    sql = queries.build("totals", hostile, dialect="trino")
    assert "model = 'x'' OR ''1''=''1'" in sql
    with pytest.raises(queries.QueryError, match="needs values for limit"):
        queries.build(
            "divergent", {k: v for k, v in PARAMS.items() if k != "limit"}, dialect="trino"
        )


# --- S3 ------------------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    offline_aws(monkeypatch)
    with mock_aws():
        yield


def upload(folder: Path, prefix: str) -> Any:
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(folder.rglob("*.jsonl.gz")):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/README.txt", Body=b"not a record")
    return client


def test_s3_records_make_the_same_report_as_a_folder(aws: None, tmp_path: Path) -> None:
    folder = records_folder(tmp_path)
    client = upload(folder, "shadow")
    local = report_from(Options(records=str(folder)))
    remote = report_from(Options(records=f"s3://{BUCKET}/shadow"), s3=client)
    assert comparable(remote) == comparable(local)
    assert remote.records.source == f"s3://{BUCKET}/shadow"


def test_s3_window_skips_partitions_outside_it(aws: None, tmp_path: Path) -> None:
    folder = records_folder(tmp_path)  # 40 pairs 7 minutes apart from 12:00: hours 12-16
    client = upload(folder, "shadow")
    since = START + timedelta(hours=2)
    until = START + timedelta(hours=3)
    fetched: list[str] = []
    real = client.get_object

    def counting(**kwargs: Any) -> Any:
        fetched.append(kwargs["Key"])
        return real(**kwargs)

    client.get_object = counting
    report = report_from(
        Options(records=f"s3://{BUCKET}/shadow", model=MODEL, since=since, until=until), s3=client
    )
    assert [key.split("/")[3] for key in fetched] == ["hour=14"]
    times = [r["time"] for r in text_records()]
    assert report.records.pairs == sum(1 for t in times if "2025-06-01T14" <= t < "2025-06-01T15")


def test_s3_malformed_objects_are_named_by_their_key(aws: None, tmp_path: Path) -> None:
    client = upload(records_folder(tmp_path), "shadow")
    key = "shadow/model=support-assistant/date=2025-06-01/hour=12/zz-broken.jsonl.gz"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"not gzip at all")
    report = report_from(Options(records=f"s3://{BUCKET}/shadow"), s3=client)
    assert report.records.pairs == 40
    assert [m.where for m in report.records.malformed_named] == [f"s3://{BUCKET}/{key}:1"]


def test_a_bucket_that_is_not_there_is_one_clear_error(aws: None) -> None:
    from weightshift.shadow.source import SourceError

    client = boto3.client("s3", region_name="us-east-1")
    with pytest.raises(SourceError, match="cannot list it"):
        report_from(Options(records="s3://no-such-bucket/shadow"), s3=client)


# --- Athena ---------------------------------------------------------------------------------


def athena_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double"
    return "varchar"


@pytest.fixture
def athena_over(aws: None, tmp_path: Path) -> Iterator[tuple[Any, list[str]]]:
    """moto's Athena, answering each query by running the Trino text it received on DuckDB
    over the fixture's records, as Athena would over its table."""
    engine = EmbeddedEngine()
    engine.load(sorted(records_folder(tmp_path).rglob("*.jsonl.gz")))
    engine.connection.execute("CREATE SCHEMA shadowdb")
    engine.connection.execute(
        "CREATE VIEW shadowdb.shadow_pairs AS SELECT * FROM main.shadow_pairs"
    )
    received: list[str] = []
    backend = athena_backends["123456789012"]["us-east-1"]
    original = backend.start_query_execution

    def start(query: str, *args: Any, **kwargs: Any) -> str:
        received.append(query)
        duck = sqlglot.parse_one(query, read="trino").transform(
            lambda node: (
                sqlglot.exp.Anonymous(
                    this="quantile_disc", expressions=[node.this, node.args["quantile"]]
                )
                if isinstance(node, sqlglot.exp.ApproxQuantile)
                else node
            )
        )
        cursor = engine.connection.execute(duck.sql("duckdb"))
        names = [c[0] for c in cursor.description or []]
        rows = cursor.fetchall()
        kinds = [
            next((athena_type(r[i]) for r in rows if r[i] is not None), "varchar")
            for i in range(len(names))
        ]
        text = [
            {
                "Data": [
                    {}
                    if v is None
                    else {"VarCharValue": str(v).lower() if isinstance(v, bool) else str(v)}
                    for v in row
                ]
            }
            for row in rows
        ]
        header = {"Data": [{"VarCharValue": n} for n in names]}
        backend.query_results_queue.append(
            QueryResults(
                rows=[header, *text],
                column_info=[{"Name": n, "Type": k} for n, k in zip(names, kinds, strict=True)],
            )
        )
        return str(original(query, *args, **kwargs))

    backend.start_query_execution = start  # type: ignore[method-assign]
    client = boto3.client("athena", region_name="us-east-1")
    try:
        yield client, received
    finally:
        del backend.start_query_execution
        engine.close()


def test_athena_runs_the_same_queries_to_the_same_report(
    athena_over: tuple[Any, list[str]], tmp_path: Path
) -> None:
    client, received = athena_over
    progress = io.StringIO()
    athena = AthenaEngine(
        client, database="shadowdb", poll_seconds=0, stream=progress, sleep=lambda _: None
    )
    remote = report_from(Options(records=None, model=MODEL), athena=athena)
    local = report_from(Options(records=str(records_folder(tmp_path / "local"))))
    assert comparable(remote) == comparable(local)
    assert remote.records.engine == "athena"
    assert received
    assert all("shadowdb.shadow_pairs" in q for q in received)
    assert all("APPROX_PERCENTILE" in q for q in received if " AS v1" in q)
    assert "athena: totals succeeded" in progress.getvalue()


def test_athena_needs_the_model() -> None:
    from weightshift.shadow.report import ShadowReportError

    athena = AthenaEngine(object(), database="db")
    with pytest.raises(ShadowReportError, match="needs --model"):
        report_from(Options(records=None), athena=athena)


def test_athena_names_are_checked() -> None:
    with pytest.raises(ValueError, match="--athena-table"):
        AthenaEngine(object(), database="db", table="x; DROP TABLE y")
    with pytest.raises(ValueError, match="--athena-output"):
        AthenaEngine(object(), database="db", output="/tmp/results")


def stubbed_athena() -> tuple[Any, Stubber]:
    client = boto3.client("athena", region_name="us-east-1")
    return client, Stubber(client)


def test_a_failed_athena_query_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    offline_aws(monkeypatch)
    client, stub = stubbed_athena()
    stub.add_response("start_query_execution", {"QueryExecutionId": "q-1"})
    stub.add_response(
        "get_query_execution",
        {
            "QueryExecution": {
                "QueryExecutionId": "q-1",
                "Status": {"State": "FAILED", "StateChangeReason": "TABLE_NOT_FOUND: shadow_pairs"},
            }
        },
    )
    stub.add_response("stop_query_execution", {}, {"QueryExecutionId": "q-1"})
    with stub:
        engine = AthenaEngine(client, database="db", stream=io.StringIO(), sleep=lambda _: None)
        with pytest.raises(AthenaError, match=r"comparisons \(q-1\) failed: TABLE_NOT_FOUND"):
            engine.run("comparisons", PARAMS)
    stub.assert_no_pending_responses()


def test_a_slow_athena_query_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    offline_aws(monkeypatch)
    client, stub = stubbed_athena()
    stub.add_response("start_query_execution", {"QueryExecutionId": "q-2"})
    running = {"QueryExecution": {"QueryExecutionId": "q-2", "Status": {"State": "RUNNING"}}}
    stub.add_response("get_query_execution", running)
    stub.add_response("get_query_execution", running)
    stub.add_response("stop_query_execution", {}, {"QueryExecutionId": "q-2"})
    clock = iter([0.0, 0.0, 5.0, 5.0, 5.0])
    monkeypatch.setattr("weightshift.shadow.athena.time.monotonic", lambda: next(clock))
    with stub:
        engine = AthenaEngine(
            client, database="db", timeout=1.0, stream=io.StringIO(), sleep=lambda _: None
        )
        with pytest.raises(AthenaError, match="still running after 1 s; stopped it"):
            engine.run("totals", PARAMS)
    stub.assert_no_pending_responses()


# --- embeddings and the judge ---------------------------------------------------------------


def vector(text: str) -> list[float]:
    """A deterministic embedding: letter counts a-e."""
    return [float(text.lower().count(letter)) + 0.01 for letter in "abcde"]


class Embeddings(BaseHTTPRequestHandler):
    fail = False
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), **body}
        )
        if type(self).fail:
            self.send_response(503)
            self.end_headers()
            return
        data = {
            "data": [
                {"index": i, "embedding": vector(text)}
                for i, text in reversed(list(enumerate(body["input"])))
            ]
        }
        payload = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def embeddings_url() -> Iterator[str]:
    Embeddings.fail = False
    Embeddings.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Embeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_semantic_similarity_from_an_openai_compatible_endpoint(
    embeddings_url: str, tmp_path: Path
) -> None:
    embedder = OpenAIEmbeddings(embeddings_url, "embed-small", api_key="k-1")
    report = report_from(Options(records=str(records_folder(tmp_path))), embedder=embedder)
    semantic = report.figures["semantic_similarity"]
    assert isinstance(semantic, Figure)
    expected = [
        cosine(vector(r["stable"]["output_text"]), vector(r["candidate"]["output_text"]))
        for r in text_records()
    ]
    assert semantic.pairs == 40
    assert semantic.value == pytest.approx(sum(expected) / 40)
    assert Embeddings.seen[0]["path"] == "/v1/embeddings"
    assert Embeddings.seen[0]["auth"] == "Bearer k-1"
    assert Embeddings.seen[0]["model"] == "embed-small"
    assert max(len(s["input"]) for s in Embeddings.seen) <= 32


def test_a_failing_embeddings_endpoint_skips_the_measure_with_its_reason(
    embeddings_url: str, tmp_path: Path
) -> None:
    Embeddings.fail = True
    embedder = OpenAIEmbeddings(embeddings_url, "embed-small")
    report = report_from(Options(records=str(records_folder(tmp_path))), embedder=embedder)
    semantic = report.figures["semantic_similarity"]
    assert isinstance(semantic, Skipped)
    assert "HTTP 503" in semantic.skipped
    assert isinstance(report.figures["edit_distance"], Figure)


def test_no_embeddings_configured_is_a_note() -> None:
    from weightshift.shadow.report import _semantic

    skipped = _semantic(None, [], 0.95, 0, {})
    assert isinstance(skipped, Skipped)
    assert "no embeddings endpoint configured" in skipped.skipped


def test_bedrock_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    offline_aws(monkeypatch)
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    stub = Stubber(client)
    for text in ("abc", "abd"):
        payload = json.dumps({"embedding": vector(text)}).encode()
        stub.add_response(
            "invoke_model",
            {
                "body": StreamingBody(io.BytesIO(payload), len(payload)),
                "contentType": "application/json",
            },
            {
                "modelId": "amazon.titan-embed-text-v2:0",
                "body": json.dumps({"inputText": text}),
                "contentType": "application/json",
                "accept": "application/json",
            },
        )
    stub.add_client_error("invoke_model", service_error_code="AccessDeniedException")
    with stub:
        bedrock = BedrockEmbeddings("amazon.titan-embed-text-v2:0", client=client)
        assert bedrock.embed(["abc", "abd"]) == [vector("abc"), vector("abd")]
        from weightshift.shadow.text import TextMeasureError

        with pytest.raises(TextMeasureError, match="AccessDeniedException"):
            bedrock.embed(["x"])


def always_first(prompt: str, first: str, second: str) -> Preference:
    return "first"


def prefers_candidate(prompt: str, first: str, second: str) -> Preference:
    if first == second:
        return "tie"
    return "first" if "<script>" in first or "Order" in first else "second"


def test_the_judge_sees_a_random_order_and_its_win_rate_has_an_interval(tmp_path: Path) -> None:
    folder = records_folder(tmp_path)
    biased = report_from(
        Options(records=str(folder)), judge=PreferenceJudge("always-first", always_first)
    )
    win = biased.figures["judge_win_rate"]
    assert isinstance(win, Figure)
    assert 0.25 < (win.value or 0) < 0.75  # a first-position bias hits both colours alike
    fair = report_from(
        Options(records=str(folder)), judge=PreferenceJudge("fair", prefers_candidate)
    )
    win = fair.figures["judge_win_rate"]
    assert isinstance(win, Figure)
    # 30 identical pairs tie (0.5); the 9 differing ok ones and the blocked one: the judge
    # prefers "Order ..." and the script text; "I can't help" loses.
    assert win.value == pytest.approx((30 * 0.5 + 9 * 1.0 + 0.0) / 40)
    assert win.low is not None
    assert win.value is not None
    assert win.high is not None
    assert win.low < win.value < win.high


class ChatJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that judges every pair a tie, but answers nonsense
    for the question about request 5 (twice, so that pair is a judge failure)."""

    asked: list[str] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        message = body["messages"][0]["content"]
        type(self).asked.append(message)
        verdict = "no verdict here" if "Where is 5?" in message else '{"verdict": "tie"}'
        payload = json.dumps({"choices": [{"message": {"content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


def test_eval_runs_judge_judges_the_sample(tmp_path: Path) -> None:
    from weightshift.evaluation.judge import OpenAIJudge
    from weightshift.evaluation.transport import Retry
    from weightshift.shadow.judging import EvaluationJudge

    ChatJudge.asked = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        judge = EvaluationJudge(
            lambda session: OpenAIJudge(session, base, "judge-1", api_key=None, retry=Retry()),
            "judge-1",
        )
        report = report_from(Options(records=str(records_folder(tmp_path))), judge=judge)
    finally:
        server.shutdown()
        server.server_close()
    win = report.figures["judge_win_rate"]
    assert isinstance(win, Figure)
    assert win.value == 0.5
    assert win.pairs == 39
    assert win.note == "1 pairs the judge failed on are left out"
    assert len(ChatJudge.asked) == 41  # 40 pairs, the malformed one asked twice
    assert any("&lt;script&gt;" not in m and "<script>" in m for m in ChatJudge.asked)


def test_no_judge_is_reported_as_not_configured(tmp_path: Path) -> None:
    report = report_from(Options(records=str(records_folder(tmp_path))))
    judged = report.figures["judge_win_rate"]
    assert isinstance(judged, Skipped)
    assert judged.skipped == "judge: not configured"


# --- CloudWatch --------------------------------------------------------------------------------


def test_publish_puts_the_figures_under_model_and_version(aws: None, tmp_path: Path) -> None:
    report = report_from(Options(records=str(records_folder(tmp_path))))
    client = boto3.client("cloudwatch", region_name="us-east-1")
    when = datetime(2025, 6, 1, 18, tzinfo=UTC)
    sent = publish(report, client, when)
    metrics = client.list_metrics(Namespace=NAMESPACE)["Metrics"]
    names = {m["MetricName"] for m in metrics}
    assert {
        "ShadowPairs",
        "ShadowExactMatch",
        "ShadowExactMatchLow",
        "ShadowExactMatchHigh",
    } <= names
    assert len(names) == sent
    assert all(
        {d["Name"]: d["Value"] for d in m["Dimensions"]}
        == {"Model": MODEL, "Version": report.comparison.candidate_version}
        for m in metrics
    )
    data = client.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "exact",
                "MetricStat": {
                    "Metric": {
                        "Namespace": NAMESPACE,
                        "MetricName": "ShadowExactMatch",
                        "Dimensions": [
                            {"Name": "Model", "Value": MODEL},
                            {"Name": "Version", "Value": str(report.comparison.candidate_version)},
                        ],
                    },
                    "Period": 60,
                    "Stat": "Average",
                },
            }
        ],
        StartTime=when - timedelta(minutes=5),
        EndTime=when + timedelta(minutes=5),
    )
    exact = report.figures["exact_match"]
    assert isinstance(exact, Figure)
    assert data["MetricDataResults"][0]["Values"] == [pytest.approx(exact.value)]


def test_publish_refuses_a_report_without_a_candidate_version(tmp_path: Path) -> None:
    from weightshift.shadow.publish import PublishError, metric_data

    lost = record(
        1,
        candidate_version=None,
        stable=side(text="a"),
        candidate=side(
            outcome="dropped", status=None, latency_ms=None, tokens_in=None, tokens_out=None
        ),
    )
    folder = tmp_path / "records"
    write_jsonl_gz(folder / "a.jsonl.gz", [lost])
    report = report_from(Options(records=str(folder)))
    with pytest.raises(PublishError, match="version is unknown"):
        metric_data(report, datetime(2025, 6, 1, tzinfo=UTC))


def test_the_gateways_mirror_dropped_is_read_from_cloudwatch(aws: None, tmp_path: Path) -> None:
    from weightshift.shadow.mirror_metrics import mirror_counts
    from weightshift.shadow.synthetic import STABLE

    client = boto3.client("cloudwatch", region_name="us-east-1")
    when = START + timedelta(hours=1)
    for colour, sent, dropped in (("blue", 300, 6), ("green", 100, 2)):
        dimensions: list[Any] = [
            {"Name": "Model", "Value": MODEL},
            {"Name": "Version", "Value": STABLE},
            {"Name": "Colour", "Value": colour},
        ]
        client.put_metric_data(
            Namespace="weightshift",
            MetricData=[
                {
                    "MetricName": "MirrorSent",
                    "Dimensions": dimensions,
                    "Timestamp": when,
                    "Value": sent,
                },
                {
                    "MetricName": "MirrorDropped",
                    "Dimensions": dimensions,
                    "Timestamp": when,
                    "Value": dropped,
                },
            ],
        )
    # Another version's drops are not this comparison's.
    client.put_metric_data(
        Namespace="weightshift",
        MetricData=[
            {
                "MetricName": "MirrorDropped",
                "Dimensions": [
                    {"Name": "Model", "Value": MODEL},
                    {"Name": "Version", "Value": "support-assistant/v0.9.0-aaaaaaaaaaaa"},
                    {"Name": "Colour", "Value": "blue"},
                ],
                "Timestamp": when,
                "Value": 50,
            }
        ],
    )
    report = report_from(
        Options(records=str(records_folder(tmp_path))),
        mirror_metrics=lambda model, version, since, until: mirror_counts(
            client, model, version, since, until
        ),
    )
    gateway = report.mirror["gateway_mirror_dropped"]
    assert isinstance(gateway, Figure)
    assert (gateway.count, gateway.pairs) == (8, 408)
    assert gateway.value == pytest.approx(8 / 408)


def test_cli_publish(aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from weightshift.cli import main

    assert main(["shadow", "report", "--records", str(records_folder(tmp_path)), "--publish"]) == 0
    assert "published" in capsys.readouterr().err
    client = boto3.client("cloudwatch", region_name="us-east-1")
    names = {m["MetricName"] for m in client.list_metrics(Namespace=NAMESPACE)["Metrics"]}
    assert "ShadowExactMatch" in names
