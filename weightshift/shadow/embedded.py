"""The embedded engine: DuckDB in this process over local ``.jsonl.gz`` files.

Reading is where a million records cost time, so it is DuckDB's, not Python's: each file's
lines are read as text, parsed once, checked by a strict SQL rule and stored in a table with
the columns of the Athena table (``docs/shadow-records.md``); the report's queries then run
on that table. The SQL rule accepts only what :class:`~weightshift.gateway.shadow.PairRecord`
accepts, and is stricter (exact JSON types, the writer's time format): a line it refuses is
validated again in Python with ``PairRecord``, which has the last word. A record Python
accepts joins the table in its canonical form; one it refuses is counted and named (file,
line, reason). A file DuckDB cannot read at all (not gzip, not UTF-8, a line over
``MAX_LINE_BYTES``) goes through Python line by line, the same way.

Memory is bounded: DuckDB holds its table in memory up to ``memory_limit`` and spills to a
temporary folder beyond it; Python holds one line at a time.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from pydantic import ValidationError

from weightshift.bundles.versioning import NAME_PATTERN
from weightshift.gateway.shadow import PairRecord
from weightshift.shadow import queries

MAX_LINE_BYTES = 16 * 1024 * 1024
"""A longer line is malformed (the gateway writes texts well below this)."""
CHUNK_BYTES = 32 * 1024 * 1024
"""Compressed bytes of files read by one statement (one step of the progress bar)."""
MAX_NAMED = 50
"""Malformed lines named one by one in the report; all of them are counted."""

_SIDE_FIELDS = (
    "status",
    "outcome",
    "latency_ms",
    "ttft_ms",
    "tokens_in",
    "tokens_out",
    "refusal",
    "output_hash",
    "output_text",
)
_TOP_FIELDS = (
    "schema_version",
    "request_id",
    "time",
    "model",
    "stable_version",
    "candidate_version",
    "endpoint",
    "prompt_hash",
    "prompt_text",
    "stable",
    "candidate",
)
_SIDE_TYPE = (
    "STRUCT(status INTEGER, outcome VARCHAR, latency_ms DOUBLE, ttft_ms DOUBLE, "
    "tokens_in BIGINT, tokens_out BIGINT, refusal BOOLEAN, output_hash VARCHAR, "
    "output_text VARCHAR)"
)
_SIDE_JSON = {
    "status": "INTEGER",
    "outcome": "VARCHAR",
    "latency_ms": "DOUBLE",
    "ttft_ms": "DOUBLE",
    "tokens_in": "BIGINT",
    "tokens_out": "BIGINT",
    "refusal": "BOOLEAN",
    "output_hash": "VARCHAR",
    "output_text": "VARCHAR",
}
_TRANSFORM = json.dumps(
    {
        "schema_version": "INTEGER",
        "request_id": "VARCHAR",
        "time": "VARCHAR",
        "model": "VARCHAR",
        "stable_version": "VARCHAR",
        "candidate_version": "VARCHAR",
        "endpoint": "VARCHAR",
        "prompt_hash": "VARCHAR",
        "prompt_text": "VARCHAR",
        "stable": _SIDE_JSON,
        "candidate": _SIDE_JSON,
    }
)

# JSON types each path may have (None: the key is absent). Stricter than PairRecord, never
# looser: what passes here PairRecord accepts; the rest is PairRecord's to decide.
_NUMBER = ("UBIGINT", "DOUBLE")
_SIDE_RULES: dict[str, tuple[str | None, ...]] = {
    "status": ("UBIGINT", "NULL"),
    "outcome": ("VARCHAR",),
    "latency_ms": (*_NUMBER, "NULL", None),
    "ttft_ms": (*_NUMBER, "NULL", None),
    "tokens_in": ("UBIGINT", "NULL", None),
    "tokens_out": ("UBIGINT", "NULL", None),
    "refusal": ("BOOLEAN", None),
    "output_hash": ("VARCHAR", "NULL", None),
    "output_text": ("VARCHAR", "NULL", None),
}
_TOP_RULES: dict[str, tuple[str | None, ...]] = {
    "$": ("OBJECT",),
    "$.schema_version": ("UBIGINT",),
    "$.request_id": ("VARCHAR",),
    "$.time": ("VARCHAR",),
    "$.model": ("VARCHAR",),
    "$.stable_version": ("VARCHAR",),
    "$.candidate_version": ("VARCHAR", "NULL"),
    "$.endpoint": ("VARCHAR",),
    "$.prompt_hash": ("VARCHAR",),
    "$.prompt_text": ("VARCHAR", "NULL", None),
    "$.stable": ("OBJECT",),
    "$.candidate": ("OBJECT",),
    **{
        f"$.{side}.{name}": rule
        for side in ("stable", "candidate")
        for name, rule in _SIDE_RULES.items()
    },
}
_NUMBER_RE = r"(0|[1-9][0-9]{0,8})"
_BUNDLE_RE = rf"^{NAME_PATTERN}/v{_NUMBER_RE}\.{_NUMBER_RE}\.{_NUMBER_RE}-[0-9a-f]{{12}}$"
_TIME_RE = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-[0-3][0-9]T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{3}Z$"
)
_SHA_RE = r"^[0-9a-f]{64}$"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _signature() -> str:
    """A regular expression over the row's JSON types, comma-joined (``-``: key absent)."""
    fields = []
    for allowed in _TOP_RULES.values():
        names = [name if name is not None else "-" for name in allowed]
        fields.append("(" + "|".join(names) + ")")
    return "^" + ",".join(fields) + "$"


def _side_checks(side: str, offset: int) -> list[str]:
    # offset: the index in t of the side's first field (status).
    s = f"r.{side}"
    status, tokens_in, tokens_out = offset, offset + 4, offset + 5
    return [
        f"(t[{status}] = 'NULL' OR {s}.status BETWEEN 100 AND 599)",
        f"{s}.outcome IN ('ok', 'refused', 'blocked', 'error', 'timeout', 'dropped')",
        f"coalesce({s}.latency_ms >= 0 AND isfinite({s}.latency_ms), true)",
        f"coalesce({s}.ttft_ms >= 0 AND isfinite({s}.ttft_ms), true)",
        # A number too large for the column converts to NULL: refuse it, do not drop it.
        f"(t[{tokens_in}] IS NULL OR t[{tokens_in}] = 'NULL' OR {s}.tokens_in >= 0)",
        f"(t[{tokens_out}] IS NULL OR t[{tokens_out}] = 'NULL' OR {s}.tokens_out >= 0)",
        f"coalesce(regexp_full_match({s}.output_hash, {_sql_string(_SHA_RE)}), true)",
        f"({s}.output_text IS NULL OR {s}.output_hash = sha256({s}.output_text))",
    ]


def _present(first: int, last: int) -> str:
    """How many of the JSON paths t[first..last] exist: with no unknown or repeated key,
    the object's own key count (json_keys lists a repeated key twice)."""
    return " + ".join(f"(t[{i}] IS NOT NULL)::INTEGER" for i in range(first, last + 1))


def _checks() -> list[str]:
    paths = list(_TOP_RULES)
    stable, candidate = paths.index("$.stable.status") + 1, paths.index("$.candidate.status") + 1
    return [
        f"regexp_full_match(array_to_string(list_transform(t, lambda x: coalesce(x, '-')), ','), "
        f"{_sql_string(_signature())})",
        f"len(k[1]) = {_present(2, len(_TOP_FIELDS) + 1)}",
        f"len(k[2]) = {_present(stable, stable + len(_SIDE_FIELDS) - 1)}",
        f"len(k[3]) = {_present(candidate, candidate + len(_SIDE_FIELDS) - 1)}",
        "r.schema_version = 1",
        "strlen(r.request_id) BETWEEN 1 AND 200",
        f"regexp_full_match(r.time, {_sql_string(_TIME_RE)})",
        "try_cast(r.time AS TIMESTAMPTZ) IS NOT NULL",
        "r.time >= '0001'",
        f"regexp_full_match(r.model, {_sql_string('^' + NAME_PATTERN + '$')})",
        f"regexp_full_match(r.stable_version, {_sql_string(_BUNDLE_RE)})",
        "split_part(r.stable_version, '/', 1) = r.model",
        "(r.candidate_version IS NULL OR "
        f"(regexp_full_match(r.candidate_version, {_sql_string(_BUNDLE_RE)}) "
        "AND split_part(r.candidate_version, '/', 1) = r.model))",
        "r.endpoint IN ('chat', 'completions')",
        f"regexp_full_match(r.prompt_hash, {_sql_string(_SHA_RE)})",
        "(r.prompt_text IS NULL OR sha256(r.prompt_text) = r.prompt_hash)",
        *_side_checks("stable", stable),
        *_side_checks("candidate", candidate),
    ]


_PATHS = "[" + ", ".join(_sql_string(path) for path in _TOP_RULES) + "]"
_VALID = " AND ".join(f"coalesce({check}, false)" for check in _checks())


def _side_select(side: str) -> str:
    # refusal defaults to false when absent, as in PairRecord.
    values = {name: f"r.{side}.{name}" for name in _SIDE_FIELDS}
    values["refusal"] = f"coalesce(r.{side}.refusal, false)"
    fields = ", ".join(f"{name} := {value}" for name, value in values.items())
    return f"struct_pack({fields})"


_READ = (
    "read_csv($files, columns = {'line': 'VARCHAR'}, delim = '\\x01', quote = '', "
    "escape = '', header = false, auto_detect = false, filename = true, "
    f"compression = 'gzip', strict_mode = false, null_padding = true, "
    f"max_line_size = {MAX_LINE_BYTES}, buffer_size = {MAX_LINE_BYTES})"
)
_INGEST = f"""
INSERT INTO records
SELECT
  _file,
  CASE WHEN NOT _valid THEN md5(line) END,
  _valid,
  r.schema_version, r.request_id, r.time, r.model, r.stable_version, r.candidate_version,
  r.endpoint, r.prompt_hash, r.prompt_text,
  {_side_select("stable")}, {_side_select("candidate")}
FROM (
  SELECT _file, line, r, coalesce(_json AND {_VALID}, false) AS _valid
  FROM (
    SELECT _file, line, _json,
           CASE WHEN _json THEN json_transform(line, {_sql_string(_TRANSFORM)}) END AS r,
           CASE WHEN _json THEN json_type(line, {_PATHS}) END AS t,
           CASE WHEN _json THEN json_keys(line, ['$', '$.stable', '$.candidate']) END AS k
    FROM (SELECT filename AS _file, line, json_valid(line) AS _json FROM {_READ}
          WHERE line IS NOT NULL)
  )
)
"""
_SCHEMA = f"""
CREATE TABLE records (
  _file VARCHAR, _digest VARCHAR, _valid BOOLEAN,
  schema_version INTEGER, request_id VARCHAR, "time" VARCHAR, model VARCHAR,
  stable_version VARCHAR, candidate_version VARCHAR, endpoint VARCHAR,
  prompt_hash VARCHAR, prompt_text VARCHAR,
  stable {_SIDE_TYPE}, candidate {_SIDE_TYPE}
);
CREATE VIEW shadow_pairs AS
SELECT schema_version, request_id, "time", model, stable_version, candidate_version,
       endpoint, prompt_hash, prompt_text, stable, candidate,
       substr("time", 1, 10) AS "date", substr("time", 12, 2) AS "hour"
FROM records WHERE _valid;
"""


@dataclass(frozen=True)
class Malformed:
    """A line (or a whole file, ``line`` None) that holds no pair record, and why."""

    file: str
    line: int | None
    reason: str

    @property
    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


@dataclass
class ReadSummary:
    """What reading found: files, lines that were records, and what was not."""

    files: int = 0
    bytes: int = 0
    records: int = 0
    malformed: int = 0
    named: list[Malformed] = field(default_factory=list)

    def add(self, bad: Malformed) -> None:
        self.malformed += 1
        if len(self.named) < MAX_NAMED:
            self.named.append(bad)


def reason_of(error: Exception) -> str:
    """One line saying why a line is not a pair record (pydantic's first error, named)."""
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def check_line(line: bytes) -> PairRecord:
    """``line`` validated as :func:`~weightshift.gateway.shadow.decode_batch` validates it."""
    return PairRecord.model_validate(json.loads(line.decode("utf-8")))


def lines_of(path: Path) -> Iterator[tuple[int, bytes | Exception]]:
    """Each line of a gzip file (number, bytes), or an error in place of what is unreadable.

    Lines end at ``\\n`` only (as DuckDB reads them); a line longer than ``MAX_LINE_BYTES``
    is an error and skipped. A stream that breaks off ends with its error.
    """
    number = 0
    try:
        with gzip.open(path, "rb") as stream:
            while True:
                line = stream.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                number += 1
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    while line and not line.endswith(b"\n"):
                        line = stream.readline(MAX_LINE_BYTES + 1)
                    yield number, ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
                    continue
                yield number, line.rstrip(b"\n").rstrip(b"\r")
    except (OSError, EOFError, zlib.error) as error:
        yield number + 1, ValueError(f"not a complete gzip stream ({error})")


class EmbeddedEngine:
    """DuckDB over local record files: :meth:`load` them, then :meth:`run` queries."""

    name = "embedded"

    def __init__(
        self, *, threads: int = 2, memory_limit: str = "512MB", workdir: Path | None = None
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="weightshift-shadow-", dir=workdir)
        folder = Path(self._tmp.name)
        self.connection = duckdb.connect(":memory:")
        self.connection.execute(f"SET threads = {int(threads)}")
        self.connection.execute(f"SET memory_limit = {_sql_string(memory_limit)}")
        self.connection.execute(f"SET temp_directory = {_sql_string(str(folder / 'spill'))}")
        self.connection.execute("SET preserve_insertion_order = false")
        self.connection.execute(_SCHEMA)
        self._fixups = folder / "fixups"
        self._fixups.mkdir()
        self.summary = ReadSummary()
        self._origins: dict[str, tuple[str, int]] = {}
        """md5 of a canonical line Python accepted -> where it came from."""

    def close(self) -> None:
        self.connection.close()
        self._tmp.cleanup()

    def __enter__(self) -> EmbeddedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------

    def load(
        self,
        paths: Sequence[Path],
        *,
        names: dict[Path, str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ReadSummary:
        """Read ``paths`` (gzip JSON Lines); ``names`` says how to name a file in the report
        (its S3 key, say); ``progress`` is called with each chunk's compressed bytes."""
        names = names or {}
        summary = self.summary
        for chunk in _chunks(paths):
            size = sum(path.stat().st_size for path in chunk)
            try:
                self._ingest(chunk)
            except duckdb.Error:
                for path in chunk:
                    try:
                        self._ingest([path])
                    except duckdb.Error:
                        self._check_in_python(path, names.get(path, str(path)), None)
            summary.files += len(chunk)
            summary.bytes += size
            if progress is not None:
                progress(size)
        flagged: dict[str, set[str]] = {}
        for file, digest in self.connection.execute(
            "SELECT _file, _digest FROM records WHERE NOT _valid"
        ).fetchall():
            flagged.setdefault(file, set()).add(digest)
        self.connection.execute("DELETE FROM records WHERE NOT _valid")
        by_name = {str(path): path for path in paths}
        for file, digests in sorted(flagged.items()):
            path = by_name.get(file, Path(file))
            self._check_in_python(path, names.get(path, file), digests)
        fixups = sorted(self._fixups.glob("*.jsonl.gz"))
        if fixups:
            self._ingest(fixups)
            for (digest,) in self.connection.execute(
                "SELECT _digest FROM records WHERE NOT _valid ORDER BY _digest"
            ).fetchall():
                file, line = self._origins.get(digest, ("(unknown)", None))
                summary.add(
                    Malformed(
                        file,
                        line,
                        "a valid record beyond the embedded engine's limits (a number over 2^63?)",
                    )
                )
            self.connection.execute("DELETE FROM records WHERE NOT _valid")
        summary.records = self._count()
        return summary

    def _count(self) -> int:
        row = self.connection.execute("SELECT count(*) FROM records").fetchone()
        return int(row[0]) if row else 0

    def _ingest(self, paths: Sequence[Path]) -> None:
        self.connection.execute(_INGEST, {"files": [str(path) for path in paths]})

    def _check_in_python(self, path: Path, name: str, digests: set[str] | None) -> None:
        """Validate a file's flagged lines (``digests``; every line when None) with
        ``PairRecord``: valid ones are queued in canonical form, the rest named."""
        summary = self.summary
        valid: list[str] = []
        located = 0
        for number, line in lines_of(path):
            if isinstance(line, Exception):
                summary.add(Malformed(name, number, reason_of(line)))
                continue
            if digests is not None:
                if hashlib.md5(line, usedforsecurity=False).hexdigest() not in digests:
                    continue
                located += 1
            if not line.strip():
                continue
            try:
                canonical = check_line(line).model_dump_json()
            except (ValueError, UnicodeDecodeError, ValidationError) as bad:
                summary.add(Malformed(name, number, reason_of(bad)))
                continue
            valid.append(canonical)
            digest = hashlib.md5(canonical.encode("utf-8"), usedforsecurity=False).hexdigest()
            self._origins[digest] = (name, number)
        if digests is not None and located < len(digests):
            # DuckDB saw lines Python cannot find again: count them rather than lose them.
            for _ in range(len(digests) - located):
                summary.add(Malformed(name, None, "a line the engines split differently"))
        if valid:
            target = self._fixups / f"{len(list(self._fixups.iterdir())):06d}.jsonl.gz"
            target.write_bytes(gzip.compress(("\n".join(valid) + "\n").encode("utf-8")))

    # --- queries ---------------------------------------------------------------------

    def run(self, name: str, params: dict[str, object]) -> list[dict[str, Any]]:
        """Query ``name`` (``weightshift/shadow/queries``) with ``params``: rows as dicts."""
        sql = queries.build(name, params, dialect="duckdb")
        cursor = self.connection.execute(sql)
        columns = [column[0] for column in cursor.description or []]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def models(self) -> list[str]:
        """The models the loaded records name (the embedded engine can list them)."""
        rows = self.connection.execute(
            "SELECT model FROM records GROUP BY model ORDER BY count(*) DESC, model"
        ).fetchall()
        return [str(row[0]) for row in rows]


def _chunks(paths: Sequence[Path]) -> Iterator[list[Path]]:
    chunk: list[Path] = []
    size = 0
    for path in paths:
        chunk.append(path)
        size += path.stat().st_size
        if size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
