"""The Athena engine: the report's aggregate queries run as they are written (Trino's
dialect) over the records' Athena table (``docs/shadow-records.md``), through boto3.

Each query is started, polled (a progress line on standard error: state, data scanned,
seconds) and its rows read page by page. Athena answers every value as text; the column
types it reports turn them back into numbers and booleans. A query that fails, is
cancelled or runs past ``timeout`` raises :class:`AthenaError` naming the query and
Athena's reason (and a query still running is stopped, so it costs no more).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from weightshift.shadow import queries

NAME_RE = re.compile(r"^[a-z0-9_]{1,255}$")
_INTEGER = {"tinyint", "smallint", "integer", "int", "bigint"}
_FLOAT = {"double", "float", "real", "decimal"}


class AthenaError(RuntimeError):
    """A query Athena did not answer; the message names it and says why."""


def _value(text: str | None, kind: str) -> Any:
    if text is None:
        return None
    kind = kind.lower().split("(")[0]
    if kind in _INTEGER:
        return int(text)
    if kind in _FLOAT:
        return float(text)
    if kind == "boolean":
        return text.lower() == "true"
    return text


class AthenaEngine:
    """Runs the report's queries in Athena over ``database.table``."""

    name = "athena"

    def __init__(
        self,
        client: Any,
        *,
        database: str,
        table: str = queries.TABLE,
        workgroup: str = "primary",
        output: str | None = None,
        poll_seconds: float = 1.0,
        timeout: float = 1800.0,
        stream: TextIO | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        for option, value in (("--athena-database", database), ("--athena-table", table)):
            if not NAME_RE.match(value):
                raise ValueError(
                    f"{option} {value!r}: Athena names are lowercase letters, digits and _"
                )
        if output is not None and not output.startswith("s3://"):
            raise ValueError(f"--athena-output {output!r}: give an s3:// location")
        self.client = client
        self.database = database
        self.table = table
        self.workgroup = workgroup
        self.output = output
        self.poll_seconds = poll_seconds
        self.timeout = timeout
        self.stream = stream if stream is not None else sys.stderr
        self.sleep = sleep
        self.scanned_bytes = 0
        self.executions: list[str] = []

    def sql(self, name: str, params: dict[str, object]) -> str:
        return queries.build(name, params, dialect="trino", table=f"{self.database}.{self.table}")

    def run(self, name: str, params: dict[str, object]) -> list[dict[str, Any]]:
        sql = self.sql(name, params)
        request: dict[str, Any] = {
            "QueryString": sql,
            "QueryExecutionContext": {"Database": self.database},
            "WorkGroup": self.workgroup,
        }
        if self.output:
            request["ResultConfiguration"] = {"OutputLocation": self.output}
        try:
            execution = self.client.start_query_execution(**request)["QueryExecutionId"]
        except (ClientError, BotoCoreError) as error:
            raise AthenaError(f"Athena did not start query {name}: {_describe(error)}") from None
        self.executions.append(execution)
        try:
            self._wait(name, execution)
        except BaseException:
            self._stop(execution)
            raise
        return self._rows(name, execution)

    def _wait(self, name: str, execution: str) -> None:
        started = time.monotonic()
        while True:
            try:
                status = self.client.get_query_execution(QueryExecutionId=execution)
            except (ClientError, BotoCoreError) as error:
                raise AthenaError(
                    f"Athena query {name} ({execution}): {_describe(error)}"
                ) from None
            details = status["QueryExecution"]
            state = details["Status"]["State"]
            scanned = int(details.get("Statistics", {}).get("DataScannedInBytes", 0) or 0)
            elapsed = time.monotonic() - started
            self.stream.write(
                f"athena: {name} {state.lower()}, {scanned:,} bytes scanned, {elapsed:.0f} s\n"
            )
            self.stream.flush()
            if state == "SUCCEEDED":
                self.scanned_bytes += scanned
                return
            if state in ("FAILED", "CANCELLED"):
                reason = details["Status"].get("StateChangeReason", "no reason given")
                raise AthenaError(f"Athena query {name} ({execution}) {state.lower()}: {reason}")
            if elapsed > self.timeout:
                raise AthenaError(
                    f"Athena query {name} ({execution}) still {state.lower()} after "
                    f"{self.timeout:.0f} s; stopped it. Narrow --since/--until."
                )
            self.sleep(self.poll_seconds)

    def _stop(self, execution: str) -> None:
        with contextlib.suppress(ClientError, BotoCoreError):
            self.client.stop_query_execution(QueryExecutionId=execution)

    def _rows(self, name: str, execution: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        columns: list[tuple[str, str]] | None = None
        header_pending = True
        try:
            pages = self.client.get_paginator("get_query_results").paginate(
                QueryExecutionId=execution
            )
            for page in pages:
                result = page["ResultSet"]
                if columns is None:
                    columns = [
                        (column["Name"], column["Type"])
                        for column in result["ResultSetMetadata"]["ColumnInfo"]
                    ]
                for row in result["Rows"]:
                    texts = [cell.get("VarCharValue") for cell in row["Data"]]
                    if header_pending:
                        # A SELECT's first row repeats the column names.
                        header_pending = False
                        if texts == [column for column, _ in columns]:
                            continue
                    rows.append(
                        {
                            column: _value(text, kind)
                            for (column, kind), text in zip(columns, texts, strict=True)
                        }
                    )
        except (ClientError, BotoCoreError) as error:
            raise AthenaError(
                f"Athena query {name} ({execution}): results unreadable: {_describe(error)}"
            ) from None
        return rows


def _describe(error: ClientError | BotoCoreError) -> str:
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return f"{details.get('Code', 'error')}: {details.get('Message', error)}"
    return str(error)
