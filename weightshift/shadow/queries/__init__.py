"""The report's aggregate queries: written once, in Trino's dialect (Athena's), in the
``.sql`` files beside this module, and transpiled with sqlglot for DuckDB.

Every query reads ``pairs`` (and ``answers``), which are common table expressions prepended
here: ``in_window`` (the records of one model between two times), ``pairs`` (one stable
bundle against one candidate) and ``answers`` (latency values in long form). Parameters are
named placeholders (``:since``) replaced by sqlglot with literals it quotes itself, so a
value never becomes SQL. For DuckDB, ``approx_percentile`` becomes the exact
``quantile_disc``; Athena keeps its approximation (``docs/shadow-report.md``).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Literal

import sqlglot
from sqlglot import exp

Dialect = Literal["trino", "duckdb"]
PRELUDE = ("in_window", "pairs", "answers")
"""The common table expressions every query may read, in the order they build on."""
QUERIES = (
    "comparisons",
    "totals",
    "outcomes",
    "quantiles",
    "histogram",
    "timeline",
    "divergent",
    "text_sample",
)
TABLE = "shadow_pairs"


class QueryError(ValueError):
    """A query text or parameter that cannot be used; the message names it."""


@cache
def text(name: str) -> str:
    """The Trino text of query (or prelude part) ``name`` as shipped in the package."""
    if name not in QUERIES and name not in PRELUDE:
        raise QueryError(f"no shadow report query named {name!r}")
    return files(__package__).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def parse(sql: str) -> exp.Expr:
    """``sql`` parsed as Trino; a text that does not parse raises :class:`QueryError`."""
    try:
        expression = sqlglot.parse_one(sql, read="trino")
    except sqlglot.errors.ParseError as error:
        raise QueryError(f"not a Trino query: {error}") from None
    return expression


def build(
    name: str,
    params: dict[str, object],
    *,
    dialect: Dialect,
    table: str = TABLE,
) -> str:
    """Query ``name`` with its prelude, ``params`` filled in, as SQL of ``dialect``.

    ``table`` is the records' table as the engine names it (``database.table`` in Athena).
    Every placeholder must be given a value: a missing one raises :class:`QueryError`.
    """
    query = parse(text(name))
    if not isinstance(query, exp.Query):
        raise QueryError(f"{name}.sql is not a query")
    # Only the prelude parts the query reads, directly or through another part.
    needed = _tables(query)
    parts = {part: parse(text(part)) for part in PRELUDE}
    for part in reversed(PRELUDE):
        if part in needed:
            needed |= _tables(parts[part])
    ctes = [
        exp.CTE(this=parts[part], alias=exp.TableAlias(this=exp.to_identifier(part)))
        for part in PRELUDE
        if part in needed
    ]
    own = query.args.get("with_") or query.args.get("with")
    if own is not None:
        ctes.extend(own.expressions)
    query.set("with_" if "with_" in query.arg_types else "with", exp.With(expressions=ctes))
    query = exp.replace_placeholders(query, **params)
    missing = sorted({str(node.name) for node in query.find_all(exp.Placeholder)})
    if missing:
        raise QueryError(f"{name}.sql needs values for {', '.join(missing)}")
    target = exp.to_table(table, dialect="trino")

    def rename(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Table) and node.name == TABLE and not node.args.get("db"):
            return target.copy()
        if dialect == "duckdb" and isinstance(node, exp.ApproxQuantile):
            # DuckDB's exact inverse-CDF quantile: X(ceil(f n)), as stats.quantile_ranks
            # expects; Athena's approx_percentile estimates the same.
            return exp.Anonymous(
                this="quantile_disc", expressions=[node.this, node.args["quantile"]]
            )
        return node

    query = query.transform(rename)
    return query.sql(dialect=dialect, pretty=True)


def _tables(expression: exp.Expr) -> set[str]:
    return {table.name for table in expression.find_all(exp.Table)}
