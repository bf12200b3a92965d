"""The SELECT of an export, composed from typed psycopg pieces: pure, no I/O.

Column names come only from ``request.USER_COLUMNS`` (as ``sql.Identifier``) and filter
values travel as parameters, so no request text is ever spliced into SQL.
"""

from __future__ import annotations

from psycopg import sql

from exporter.request import USER_COLUMNS, ExportRequest

Params = dict[str, str]


def export_select(request: ExportRequest) -> tuple[sql.Composed, Params]:
    """The export's SELECT and its parameters.

    Rows come in ``id`` order: a stable order users expect, and the one the COPY oracle
    reproduces exactly (a plain sequential scan may start mid-table when another scan of
    the same table is running: ``synchronize_seqscans``).
    """
    for column in request.columns:
        if column not in USER_COLUMNS:  # validated already; this guards the SQL boundary
            raise ValueError(f"column {column!r} is not exportable")
    conditions: list[sql.Composable] = []
    params: Params = {}
    if request.country_code is not None:
        conditions.append(sql.SQL("country_code = %(country_code)s"))
        params["country_code"] = request.country_code
    if request.subscription_tier is not None:
        conditions.append(sql.SQL("subscription_tier = %(subscription_tier)s"))
        params["subscription_tier"] = request.subscription_tier
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    query = sql.SQL("SELECT {columns} FROM users{where} ORDER BY id").format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in request.columns),
        where=where,
    )
    return query, params


def copy_statement(request: ExportRequest) -> tuple[sql.Composed, Params]:
    """``COPY (<the export's SELECT>) TO STDOUT`` in the request's CSV dialect.

    What PostgreSQL itself writes for this statement is the byte-for-byte oracle of an
    export's file (SPEC §4); tests and the benchmarks' baseline use it.
    """
    select, params = export_select(request)
    statement = sql.SQL(
        "COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER true, DELIMITER {d}, QUOTE {q})"
    ).format(select=select, d=sql.Literal(request.delimiter), q=sql.Literal(request.quote_char))
    return statement, params
