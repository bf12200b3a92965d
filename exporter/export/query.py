"""The SELECT of an export, composed from typed psycopg pieces: pure, no I/O.

Column names come only from ``model.USER_COLUMNS`` (as ``sql.Identifier``) and filter
values travel as parameters, or, where a statement cannot take any (COPY), as literals
quoted by psycopg (``sql.Literal``): no request text is ever pasted into SQL as it came.
"""

from __future__ import annotations

import dataclasses

from psycopg import sql

from exporter.core.model import USER_COLUMNS, ExportRequest

__all__ = ["IdRange", "Select", "copy_of", "copy_statement", "export_select"]

Params = dict[str, str | int]
# A statement and the values of its placeholders.
Select = tuple[sql.Composed, Params]


@dataclasses.dataclass(frozen=True, slots=True)
class IdRange:
    """The users with ``after < id <= up_to``."""

    after: int
    up_to: int


def export_select(
    request: ExportRequest, *, inline: bool = False, ids: IdRange | None = None
) -> Select:
    """The export's SELECT and its parameters.

    ``inline``: filter values as quoted literals (``sql.Literal``, psycopg's own quoting)
    instead of parameters, for a statement sent where parameters cannot go (COPY through
    libpq directly); the parameters returned are then empty.

    ``ids``: only rows with ``after < id <= up_to``. An export reads its rows in such
    ranges, one after another, so that it can say "every row up to this id is written"
    (its checkpoints) and a later attempt can continue after it.

    Rows come in ``id`` order: a stable order users expect, and the one the COPY oracle
    reproduces exactly (a plain sequential scan may start mid-table when another scan of
    the same table is running: ``synchronize_seqscans``).
    """
    for column in request.columns:
        if column not in USER_COLUMNS:  # validated already; this guards the SQL boundary
            raise ValueError(f"column {column!r} is not exportable")
    conditions: list[sql.Composable] = []
    params: Params = {}
    filters: list[tuple[str, str, str | int | None]] = [
        ("country_code", "=", request.country_code),
        ("subscription_tier", "=", request.subscription_tier),
    ]
    if ids is not None:
        filters += [("id", ">", ids.after), ("id", "<=", ids.up_to)]
    for number, (column, operator, value) in enumerate(filters):
        if value is None:
            continue
        name = f"p{number}"
        condition = sql.SQL(f"{{}} {operator} {{}}")
        if inline:
            conditions.append(condition.format(sql.Identifier(column), sql.Literal(value)))
        else:
            conditions.append(condition.format(sql.Identifier(column), sql.Placeholder(name)))
            params[name] = value
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    query = sql.SQL("SELECT {columns} FROM users{where} ORDER BY id").format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in request.columns),
        where=where,
    )
    return query, params


def copy_statement(request: ExportRequest, *, header: bool = True, inline: bool = False) -> Select:
    """``COPY (<the export's SELECT>) TO STDOUT`` in the request's CSV dialect.

    What PostgreSQL itself writes for this statement is the byte-for-byte oracle of an
    export's file; tests and the benchmarks' baseline use it.
    """
    select, params = export_select(request, inline=inline)
    return copy_of(select, request, header=header), params


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
