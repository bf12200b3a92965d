"""Datasets resolved against the database: types, keys and plans from PostgreSQL itself.

``resolve_datasets`` checks every declared dataset and returns them resolved, or raises
``DatasetError`` with every problem found, each naming the file, the dataset and the key:

- a table or view that does not exist, a column that it does not have;
- a table's key that is not unique (no unique index on exactly its columns) or not
  NOT NULL; a key whose type cannot order rows;
- a filter on a column that is not exposed, an operator that makes no sense for the type;
- a saved query that PostgreSQL cannot plan (it is described by PostgreSQL, never
  checked by looking at its text), a parameter type it does not know;
- a view that would bypass row-level security: it runs as its owner
  (``security_invoker`` off) while a table under it has policies.

It also asks the planner whether the key's order comes from an index: if it does, COPY
reads the rows in ranges of the key and can resume; if it does not (a saved query that
must sort all its rows), each range would sort everything again, so COPY reads it all in
one statement, without checkpoints. (The cursor reads every dataset in one statement and
checkpoints by its rows' keys.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.jobs.postgres_queue)
import psycopg
from psycopg import sql
from psycopg.adapt import Dumper

from exporter.core.datasets import (
    Column,
    Dataset,
    DatasetError,
    DatasetProblem,
    Datasets,
    DatasetSpec,
    operators_for,
)
from exporter.export.connection import libpq_options
from exporter.export.query import QUERY_ALIAS, render_query

__all__ = ["DatasetCatalog", "resolve_datasets"]

# Base types (as format_type writes them without modifiers) and what their values are.
_KINDS = {
    "smallint": "integer",
    "integer": "integer",
    "bigint": "integer",
    "numeric": "numeric",
    "real": "float",
    "double precision": "float",
    "text": "text",
    "character varying": "text",
    "bpchar": "text",
    "name": "text",
    "citext": "text",
    "boolean": "boolean",
    "uuid": "uuid",
    "date": "date",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "time without time zone": "time",
}

# Every column of a relation, with what a filter needs of its type.
_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attnum,
       coalesce(nullif(t.typbasetype, 0), a.atttypid) AS base
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
# A base type: its name without modifiers (what a value is cast to: "bpchar", as
# "character" alone would mean char(1)), whether it is an enum, its labels.
_BASE_TYPE = """
SELECT CASE WHEN t.oid = 'bpchar'::regtype THEN 'bpchar' ELSE format_type(t.oid, NULL) END,
       t.typtype = 'e',
       coalesce(array(SELECT e.enumlabel FROM pg_enum e WHERE e.enumtypid = t.oid
                      ORDER BY e.enumsortorder), '{}')
FROM pg_type t WHERE t.oid = %s
"""
_RELATION = """
SELECT c.oid, n.nspname, c.relname, c.relkind,
       coalesce(c.reloptions, '{}') AS options
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)
"""
# Unique indexes over plain columns, valid and not partial: what makes a key unique.
_UNIQUE_INDEXES = """
SELECT indkey::int2[] FROM pg_index
WHERE indrelid = %s AND indisunique AND indisvalid AND indpred IS NULL AND indexprs IS NULL
ORDER BY indisprimary DESC
"""
# The tables a view reads, through views on views, that have row-level security on.
_POLICED_TABLES = """
WITH RECURSIVE under(oid) AS (
    SELECT %(view)s::oid
    UNION
    SELECT d.refobjid FROM under
    JOIN pg_rewrite r ON r.ev_class = under.oid
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                    AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> under.oid
)
SELECT c.oid::regclass::text FROM under JOIN pg_class c ON c.oid = under.oid
WHERE c.relrowsecurity ORDER BY 1
"""
# B-tree indexes whose leading columns are these, in this order: the key's order for free.
_ORDERING_INDEX = """
SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_am am ON am.oid = c.relam
WHERE i.indrelid = %s AND i.indisvalid AND am.amname = 'btree' AND i.indpred IS NULL
  AND (i.indkey::int2[])[0:%s] = %s::int2[]
"""
_TRUE = ("true", "on", "yes", "1")
# The names an export's own parameters have: a saved query's may not take them.
_RESERVED = frozenset({"select", "delimiter", "quoteChar", "neutralizeFormulas"})


class _Unknown:
    """A saved query's parameter whose value the planner must not see: planned with
    ``NULL`` a comparison folds to false and the plan says nothing of the real one."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


class _UnknownDumper(Dumper):
    """Writes an ``_Unknown`` as ``(SELECT NULL::type)``: a value the planner cannot fold,
    so it plans as for any value (psycopg's quoting hook, only for the plan's check)."""

    def dump(self, obj: Any) -> bytes:
        raise TypeError("an unknown parameter is only written into a statement")

    def quote(self, obj: Any) -> bytes:
        return f"(SELECT NULL::{obj.type_name})".encode()


def _generic_query(conn: psycopg.Connection[Any], query: str, params: Mapping[str, Column]) -> str:
    """A saved query with each parameter a value unknown to the planner."""
    cursor = psycopg.ClientCursor(conn)
    cursor.adapters.register_dumper(_Unknown, _UnknownDumper)
    return cursor.mogrify(query, {name: _Unknown(p.cast) for name, p in params.items()})


class _Resolver:
    """Resolves one dataset, noting its problems instead of stopping at the first."""

    def __init__(self, conn: psycopg.Connection[Any], spec: DatasetSpec) -> None:
        self.conn, self.spec = conn, spec
        self.problems: list[DatasetProblem] = []

    def problem(self, key: str | None, message: str) -> None:
        self.problems.append(DatasetProblem(self.spec.file, self.spec.name, key, message))

    def _column(self, name: str, type_name: str, base: int) -> Column:
        row = self.conn.execute(_BASE_TYPE, (base,)).fetchone()
        assert row is not None
        cast, is_enum, labels = row
        kind = "enum" if is_enum else _KINDS.get(cast, "other")
        max_length = None
        if kind == "text" and "(" in type_name and cast in ("character varying", "bpchar"):
            max_length = int(type_name[type_name.index("(") + 1 : -1])
        return Column(name, type_name, cast, kind, tuple(labels), max_length)

    def relation(self) -> tuple[str, list[Column], dict[str, bool], int] | None:
        """A table's or view's qualified name, columns, NOT NULLs and oid."""
        spec = self.spec
        row = self.conn.execute(_RELATION, (spec.relation,)).fetchone()
        if row is None:
            self.problem(spec.source, f"no {spec.source} {spec.relation!r} in the database")
            return None
        oid, schema, name, relkind, options = row
        tables, views = ("r", "p", "m", "f"), ("v", "m")
        if relkind not in (tables if spec.source == "table" else views):
            what = "a view" if relkind == "v" else "not a view"
            self.problem(spec.source, f"{spec.relation!r} is {what}; declare it as what it is")
            return None
        if spec.source == "view" and not any(
            o.split("=", 1)[0] == "security_invoker" and o.split("=", 1)[1].lower() in _TRUE
            for o in options
        ):
            policed = [r[0] for r in self.conn.execute(_POLICED_TABLES, {"view": oid})]
            if policed:
                self.problem(
                    "view",
                    f"{spec.relation!r} reads {', '.join(policed)}, which have row-level "
                    "security, as the view's owner; make it security_invoker "
                    "(ALTER VIEW … SET (security_invoker = true))",
                )
        columns, not_null = [], {}
        for attname, type_name, attnotnull, _, base in self.conn.execute(_COLUMNS, (oid,)):
            columns.append(self._column(attname, type_name, base))
            not_null[attname] = attnotnull
        qualified = sql.Identifier(schema, name).as_string(self.conn)
        return qualified, columns, not_null, oid

    def query(self) -> tuple[str, list[Column], dict[str, Column]] | None:
        """A saved query's text, its result's columns (PostgreSQL describes them) and its
        parameters' types."""
        spec, params = self.spec, {}
        for name, type_text in spec.params.items():
            row = self.conn.execute("SELECT to_regtype(%s)::oid", (type_text,)).fetchone()
            if row is None or row[0] is None:
                self.problem("params", f"{name}: PostgreSQL has no type {type_text!r}")
                continue
            type_row = self.conn.execute("SELECT format_type(%s, NULL)", (row[0],)).fetchone()
            assert type_row is not None
            params[name] = self._column(name, type_row[0], row[0])
        if len(params) != len(spec.params):
            return None
        nulls = {name: None for name in spec.params}
        try:
            with self.conn.transaction():
                text = render_query(self.conn, spec.relation, nulls)
                cursor = self.conn.execute(f"SELECT * FROM ({text}) AS {QUERY_ALIAS} LIMIT 0")
        except (psycopg.Error, KeyError, TypeError, ValueError) as error:
            self.problem("query", f"PostgreSQL cannot run it: {_message(error)}")
            return None
        assert cursor.description is not None and cursor.pgresult is not None
        columns, seen = [], set()
        for index, described in enumerate(cursor.description):
            if described.name in seen:
                self.problem("query", f"its result has two columns named {described.name!r}")
            seen.add(described.name)
            row = self.conn.execute(
                "SELECT format_type(%s, %s), coalesce(nullif(typbasetype, 0), oid)"
                " FROM pg_type WHERE oid = %s",
                (described.type_code, cursor.pgresult.fmod(index), described.type_code),
            ).fetchone()
            assert row is not None
            columns.append(self._column(described.name, row[0], row[1]))
        # For the plan's check, its parameters unknown; an export writes in the request's.
        generic = _generic_query(self.conn, spec.relation, params)
        return f"({generic}) AS {QUERY_ALIAS}", columns, params

    def key(self, columns: Sequence[Column], not_null: dict[str, bool], oid: int | None) -> None:
        """A table's key: NOT NULL, and unique by an index on exactly its columns."""
        spec, names = self.spec, [c.name for c in columns]
        if oid is None or spec.key is None:
            return
        for name in spec.key:
            if name not in names:
                self.problem("key", f"no column {name!r}; the {spec.source} has {', '.join(names)}")
            elif spec.source == "table" and not not_null.get(name):
                self.problem("key", f"{name!r} may be NULL; a key must be NOT NULL")
        if spec.source != "table" or not set(spec.key) <= set(names):
            return
        attnums = self.attnums(oid)
        wanted = {attnums[name] for name in spec.key}
        indexes = [set(r[0]) for r in self.conn.execute(_UNIQUE_INDEXES, (oid,))]
        if wanted not in indexes:
            self.problem(
                "key",
                f"({', '.join(spec.key)}) is not unique: no unique index is on exactly "
                "these columns, so rows could repeat or go missing between ranges",
            )

    def attnums(self, oid: int) -> dict[str, int]:
        """A relation's column numbers by name."""
        rows = self.conn.execute(
            "SELECT attname, attnum FROM pg_attribute WHERE attrelid = %s AND attnum > 0",
            (oid,),
        ).fetchall()
        return {name: number for name, number in rows}

    def primary_key(self, oid: int) -> tuple[str, ...] | None:
        row = self.conn.execute(
            "SELECT array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o)"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)"
            " FROM pg_index i WHERE i.indrelid = %s AND i.indisprimary",
            (oid,),
        ).fetchone()
        if row is None:
            self.problem("key", "the table has no primary key: declare its key")
            return None
        return tuple(row[0])

    def exposed(self, columns: list[Column]) -> list[Column]:
        """The columns the dataset exposes, in the file's order (default: all)."""
        spec = self.spec
        by_name = {c.name: c for c in columns}
        if spec.columns is None:
            return columns
        missing = [n for n in spec.columns if n not in by_name]
        if missing:
            self.problem(
                "columns",
                f"no column {', '.join(map(repr, missing))}; it has {', '.join(by_name)}",
            )
        return [by_name[n] for n in spec.columns if n in by_name]

    def filters(self, exposed: list[Column]) -> None:
        by_name = {c.name: c for c in exposed}
        for name, ops in self.spec.filters.items():
            column = by_name.get(name)
            if column is None:
                self.problem("filters", f"{name!r} is not an exposed column")
                continue
            wrong = [op for op in ops if op not in operators_for(column.kind)]
            if wrong:
                allowed = ", ".join(operators_for(column.kind))
                self.problem(
                    "filters",
                    f"{name}: {', '.join(wrong)} make no sense for {column.type}; "
                    f"its operators: {allowed}",
                )

    def ranged(self, source: str, key: Sequence[str], oid: int | None) -> bool:
        """Whether the key's order comes without sorting everything (an index gives it).

        For a table the catalog says (a B-tree index led by the key), which takes no lock
        on it; for a view or a query the planner, asked for the first key.
        """
        if self.spec.source == "table" and oid is not None:
            numbers = [self.attnums(oid)[name] for name in key]
            found = self.conn.execute(_ORDERING_INDEX, (oid, len(key) - 1, numbers)).fetchone()
            return found is not None
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in key)
        statement = sql.SQL("EXPLAIN (FORMAT JSON) SELECT {k} FROM {s} ORDER BY {k} LIMIT 1")
        try:
            with self.conn.transaction():
                row = self.conn.execute(statement.format(k=keys, s=sql.SQL(source))).fetchone()
        except psycopg.Error as error:
            self.problem("key", f"cannot order the rows by it: {_message(error)}")
            return False
        assert row is not None
        plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
        return "Sort" not in set(_node_types(plan[0]["Plan"]))

    def resolve(self) -> Dataset | None:
        spec = self.spec
        not_null: dict[str, bool] = {}
        params: dict[str, Column] = {}
        oid = None
        if spec.source == "query":
            found = self.query()
            if found is None:
                return None
            source, columns, params = found
        else:
            relation = self.relation()
            if relation is None:
                return None
            source, columns, not_null, oid = relation
        key = spec.key
        if key is None and oid is not None and spec.source == "table":
            key = self.primary_key(oid)
        if key is None:
            return None
        self.key(columns, not_null, oid)
        if spec.source != "table":
            names = [c.name for c in columns]
            for name in key:
                if name not in names:
                    self.problem("key", f"no column {name!r}; it has {', '.join(names)}")
        exposed = self.exposed(columns)
        self.filters(exposed)
        exposed_names = [c.name for c in exposed]
        defaults = spec.default_columns or tuple(exposed_names)
        unexposed = [n for n in defaults if n not in exposed_names]
        if unexposed:
            self.problem("default_columns", f"{', '.join(unexposed)}: not exposed")
        clash = sorted(set(spec.params) & (_RESERVED | set(exposed_names)))
        if clash:
            self.problem(
                "params", f"{', '.join(clash)}: the name of a column or of an export parameter"
            )
        if self.problems:
            return None
        by_name = {c.name: c for c in columns}
        return Dataset(
            name=spec.name,
            source=spec.source,
            sql_source=source,
            key=key,
            columns=tuple(exposed),
            filters=dict(spec.filters),
            default_columns=defaults,
            description=spec.description,
            max_rows=spec.max_rows,
            params=params,
            key_columns=tuple(by_name[k] for k in key),
            ranged=self.ranged(source, key, oid),
            query=spec.relation if spec.source == "query" else None,
        )


def _node_types(node: dict[str, Any]) -> Iterable[str]:
    yield node["Node Type"]
    for child in node.get("Plans", ()):
        yield from _node_types(child)


def _message(error: BaseException) -> str:
    """A database error's own sentence, without the statement or connection details."""
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None)
    return str(primary or error).strip().splitlines()[0]


def resolve_datasets(conninfo: str, specs: Sequence[DatasetSpec]) -> Datasets:
    """Every dataset of ``specs`` resolved; ``DatasetError`` lists every problem found."""
    problems: list[DatasetProblem] = []
    resolved: dict[str, Dataset] = {}
    with psycopg.connect(
        conninfo, autocommit=True, options=libpq_options(), connect_timeout=10
    ) as conn:
        for spec in specs:
            resolver = _Resolver(conn, spec)
            dataset = resolver.resolve()
            problems += resolver.problems
            if dataset is not None:
                resolved[spec.name] = dataset
    if problems:
        raise DatasetError(problems)
    return resolved


class DatasetCatalog(Mapping[str, Dataset]):
    """A process's datasets: declared by ``specs``, resolved against the database once it
    answers (``resolve``); until then the mapping is empty.

    A service starts even while its database is down (it says so on ``/ready``), so the
    datasets cannot always be resolved before it serves: they are at its first contact
    with the database, and a bad file then stops it as it would have at the start.
    """

    def __init__(self, conninfo: str, specs: Sequence[DatasetSpec]) -> None:
        self.conninfo, self.specs = conninfo, list(specs)
        self._resolved: Datasets = {}

    @property
    def is_resolved(self) -> bool:
        return bool(self._resolved)

    def resolve(self) -> Datasets:
        """Resolve every dataset (blocking). Raises ``DatasetError`` for a bad one, and
        ``psycopg.OperationalError`` while the database cannot be reached."""
        if not self._resolved:
            self._resolved = resolve_datasets(self.conninfo, self.specs)
        return self._resolved

    def __getitem__(self, name: str) -> Dataset:
        return self._resolved[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolved)

    def __len__(self) -> int:
        return len(self._resolved)
