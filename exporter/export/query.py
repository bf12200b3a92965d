"""The statements of an export, composed from typed psycopg pieces: no I/O.

Column names come only from the resolved dataset (as ``sql.Identifier``), types from the
catalog, and every value a request brings is a literal quoted by psycopg
(``sql.Literal``) and cast to its column's type: no request text is ever pasted into SQL
as it came. Values are literals rather than parameters so that one statement serves both
row sources (a cursor's query, and COPY, which takes no parameters).

An export reads its rows in key order, ``… WHERE <filters> AND key > after ORDER BY key``
(a row comparison for a key of several columns), so that a checkpoint can say "every row
up to this key is written" and a later attempt can continue after it: the cursor in one
statement, COPY in ranges, each with ``LIMIT n``; ``last_key_select`` finds where a
COPY range ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from exporter.core.datasets import Column, Dataset
from exporter.core.model import ExportRequest, Filter

__all__ = [
    "QUERY_ALIAS",
    "copy_of",
    "copy_statement",
    "export_select",
    "from_item",
    "last_key_select",
    "render_query",
]

# The alias of a saved query in the statements built around it.
QUERY_ALIAS = "q"
_COMPARISONS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def from_item(conn: psycopg.Connection[Any], dataset: Dataset, request: ExportRequest) -> sql.SQL:
    """The statement's FROM item: the table or view, or the saved query with the request's
    parameters written in as literals (psycopg's quoting; ``conn`` only lends its
    encoding, nothing is sent)."""
    if dataset.query is None:
        return sql.SQL(dataset.sql_source)
    text = render_query(conn, dataset.query, dict(request.params))
    return sql.SQL(f"({text}) AS {QUERY_ALIAS}")


def render_query(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> str:
    """A saved query with its parameters written in as literals (psycopg's own quoting),
    so that it runs where parameters cannot go (COPY) as it runs everywhere else."""
    return psycopg.ClientCursor(conn).mogrify(query, params)


def _typed(value: str, column: Column) -> sql.Composed:
    return sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(column.cast))


def _condition(f: Filter, column: Column) -> sql.Composable:
    name = sql.Identifier(f.column)
    if f.operator == "is":
        word = {"null": "NULL", "not_null": "NOT NULL", "true": "TRUE", "false": "FALSE"}
        condition: sql.Composable = sql.SQL("{} IS {}").format(name, sql.SQL(word[str(f.value)]))
    elif f.operator == "in":
        values = sql.SQL(", ").join(_typed(v, column) for v in f.value)
        condition = sql.SQL("{} IN ({})").format(name, values)
    elif f.operator in ("like", "ilike"):
        # PostgREST's * stands for %, as a query string makes % awkward to write.
        pattern = str(f.value).replace("*", "%")
        operator = sql.SQL("LIKE" if f.operator == "like" else "ILIKE")
        condition = sql.SQL("{} {} {}").format(name, operator, sql.Literal(pattern))
    else:
        operator = sql.SQL(_COMPARISONS[f.operator])
        condition = sql.SQL("{} {} {}").format(name, operator, _typed(str(f.value), column))
    return sql.SQL("NOT ({})").format(condition) if f.negated else condition


def _key_comparison(dataset: Dataset, operator: str, values: Sequence[str]) -> sql.Composable:
    """``key > value`` or, for a key of several columns, ``(k1, k2) > (v1, v2)``: the
    row comparison a B-tree index on the key answers directly."""
    names = [sql.Identifier(k) for k in dataset.key]
    typed = [_typed(v, c) for v, c in zip(values, dataset.key_columns, strict=True)]
    if len(names) == 1:
        return sql.SQL("{} {} {}").format(names[0], sql.SQL(operator), typed[0])
    return sql.SQL("({}) {} ({})").format(
        sql.SQL(", ").join(names), sql.SQL(operator), sql.SQL(", ").join(typed)
    )


def _where(dataset: Dataset, request: ExportRequest, after: Sequence[str] | None) -> sql.Composable:
    conditions: list[sql.Composable] = []
    for f in request.all_filters:
        column = dataset.column(f.column)
        if column is None:  # validated already; this guards the SQL boundary
            raise ValueError(f"column {f.column!r} is not exposed")
        conditions.append(_condition(f, column))
    if after is not None:
        conditions.append(_key_comparison(dataset, ">", after))
    if not conditions:
        return sql.SQL("")
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions)


def _order(dataset: Dataset) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(k) for k in dataset.key)


def export_select(
    dataset: Dataset,
    request: ExportRequest,
    source: sql.Composable,
    after: Sequence[str] | None = None,
    limit: int | None = None,
    *,
    extra: Sequence[str] = (),
) -> sql.Composed:
    """``SELECT <columns>[, <extra>] FROM <source> WHERE <filters> [AND key > after] ORDER BY
    <key> [LIMIT limit]``. ``extra``: columns read after the selected ones (a cursor's key
    columns that were not selected, for its checkpoints; never written).

    Rows come in key order: a stable order users expect, and the one the COPY oracle
    reproduces exactly (a plain sequential scan may start mid-table when another scan of
    the same table is running: ``synchronize_seqscans``).
    """
    # Validated already; this guards the SQL boundary.
    for name in (*request.columns, *extra):
        if dataset.column(name) is None and name not in dataset.key:
            raise ValueError(f"column {name!r} is not exposed")
    return sql.SQL("SELECT {columns} FROM {source}{where} ORDER BY {order}{limit}").format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in (*request.columns, *extra)),
        source=source,
        where=_where(dataset, request, after),
        order=_order(dataset),
        limit=sql.SQL("") if limit is None else sql.SQL(" LIMIT {}").format(sql.Literal(limit)),
    )


def last_key_select(
    dataset: Dataset,
    request: ExportRequest,
    source: sql.Composable,
    after: Sequence[str] | None,
    rows: int,
) -> sql.Composed:
    """The key of the ``rows``-th row of the export after ``after``: where a range of that
    many rows ended, when its rows do not hold the key (COPY's lines, or a selection
    without it)."""
    return sql.SQL("SELECT {key} FROM {source}{where} ORDER BY {key} OFFSET {skip} LIMIT 1").format(
        key=_order(dataset),
        source=source,
        where=_where(dataset, request, after),
        skip=sql.Literal(max(rows - 1, 0)),
    )


def copy_of(select: sql.Composable, request: ExportRequest, *, header: bool) -> sql.Composed:
    """``select`` wrapped in ``COPY … TO STDOUT`` with the request's CSV dialect: how the
    ``copy`` row source reads an export (without the header, which the pipeline writes)."""
    return sql.SQL(
        "COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER {h}, DELIMITER {d}, QUOTE {q})"
    ).format(
        select=select,
        h=sql.SQL("true" if header else "false"),
        d=sql.Literal(request.delimiter),
        q=sql.Literal(request.quote_char),
    )


def copy_statement(
    conn: psycopg.Connection[Any], dataset: Dataset, request: ExportRequest, *, header: bool = True
) -> sql.Composed:
    """``COPY (<the export's SELECT>) TO STDOUT`` in the request's CSV dialect, all of it.

    What PostgreSQL itself writes for this statement is the byte-for-byte oracle of an
    export's file; tests and the benchmarks' baseline use it.
    """
    select = export_select(dataset, request, from_item(conn, dataset, request))
    return copy_of(select, request, header=header)
