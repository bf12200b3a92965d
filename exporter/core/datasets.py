"""Datasets: what the service can export, as an operator declares it (pure, no database).

A dataset is a table, a view or a saved query, with

- ``key``: the column(s) that order its rows and mark its checkpoints (unique, NOT NULL);
- ``columns``: those it exposes (the rest can be neither exported nor filtered);
- ``filters``: which exposed columns may be filtered, and with which operators;
- ``default_columns``, ``description``, ``max_rows`` (an export of more rows fails).

``load_datasets_file`` reads a datasets file (TOML) into ``DatasetSpec`` values, checking
its shape; ``exporter.export.catalog`` then resolves each against the database into a
``Dataset``, with the columns' types from PostgreSQL's catalog (never from the file). With
no file the service exports ``USERS``, the seed's table, as it always has.

A datasets file::

    [datasets.orders]
    table = "public.orders"                 # or view = "…", or query = "SELECT …"
    key = ["order_id", "line_no"]           # or key = "id"
    columns = ["order_id", "line_no", "placed_at", "total", "status"]
    filters = { status = ["eq", "in"], placed_at = ["gte", "lt"] }
    description = "Order lines"

A saved query names its parameters ``%(name)s`` (psycopg's placeholders: a literal ``%``
is written ``%%``) and declares their types: ``params = { since = "timestamptz" }``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exporter.core.errors import ExporterError

__all__ = [
    "KINDS",
    "OPERATORS",
    "USERS",
    "Column",
    "Dataset",
    "DatasetError",
    "DatasetProblem",
    "DatasetSpec",
    "Datasets",
    "declared_datasets",
    "load_datasets_file",
    "operators_for",
    "parse_datasets",
]

# PostgREST's filter operators, as the API spells them.
OPERATORS: tuple[str, ...] = ("eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is")
_ORDERED = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "is")
# What a column's values are, for parsing a filter's value and choosing its operators.
# ``other`` (json, arrays, geometry, ...) may only be tested for NULL.
KINDS: dict[str, tuple[str, ...]] = {
    "integer": _ORDERED,
    "numeric": _ORDERED,
    "float": _ORDERED,
    "text": (*_ORDERED, "like", "ilike"),
    "boolean": ("eq", "neq", "is"),
    "uuid": _ORDERED,
    "date": _ORDERED,
    "timestamp": _ORDERED,
    "timestamptz": _ORDERED,
    "time": _ORDERED,
    "enum": ("eq", "neq", "in", "is"),
    "other": ("is",),
}
_SOURCES = ("table", "view", "query")
_KNOWN_KEYS = frozenset(
    {*_SOURCES, "key", "columns", "filters", "default_columns", "description", "max_rows"}
    | {"params"}
)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def operators_for(kind: str) -> tuple[str, ...]:
    """The operators that make sense for a column of this kind."""
    return KINDS.get(kind, KINDS["other"])


@dataclasses.dataclass(frozen=True, slots=True)
class DatasetProblem:
    """One thing wrong with a datasets file: where (file, dataset, key) and what."""

    file: str
    dataset: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = [self.file]
        if self.dataset is not None:
            where.append(f"dataset {self.dataset!r}")
        if self.key is not None:
            where.append(f"key {self.key!r}")
        return f"{', '.join(where)}: {self.message}"


class DatasetError(ExporterError):
    """A datasets file cannot be used; ``problems`` lists everything found wrong."""

    def __init__(self, problems: Sequence[DatasetProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True, slots=True)
class DatasetSpec:
    """A dataset as the file declares it, before the database was asked about it."""

    name: str
    source: str  # "table", "view" or "query"
    relation: str  # "schema.name" of a table or view, or the query's text
    key: tuple[str, ...] | None = None  # None: a table's primary key
    columns: tuple[str, ...] | None = None  # None: all
    filters: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    default_columns: tuple[str, ...] | None = None
    description: str = ""
    max_rows: int | None = None
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> type
    file: str = "(built in)"


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    """An exposed column: its name, its PostgreSQL type as ``format_type`` writes it, the
    type without modifiers (what filter values are cast to), and its ``kind``."""

    name: str
    type: str
    cast: str
    kind: str
    labels: tuple[str, ...] = ()  # an enum's values, in order
    max_length: int | None = None  # varchar(n) / char(n)


@dataclasses.dataclass(frozen=True, slots=True)
class Dataset:
    """A dataset resolved against the database: what an export of it may ask for.

    ``sql_source`` is the FROM item (a qualified relation, or the query in parentheses
    with an alias), written by ``exporter.export.catalog`` from catalog names only.
    ``ranged``: its rows can be read in ranges of the key without sorting them all for
    each range (an index gives the key's order), which is how COPY reads an export that
    checkpoints; otherwise COPY reads it in one statement. The server-side cursor reads
    every dataset in one statement in key order, and checkpoints it by its rows' keys.
    """

    name: str
    source: str
    sql_source: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    filters: Mapping[str, tuple[str, ...]]
    default_columns: tuple[str, ...]
    description: str = ""
    max_rows: int | None = None
    params: Mapping[str, Column] = dataclasses.field(default_factory=dict)
    key_columns: tuple[Column, ...] = ()
    ranged: bool = True
    query: str | None = None  # a saved query's text, its parameters %(name)s

    def column(self, name: str) -> Column | None:
        """The exposed column of this name, if there is one."""
        for column in self.columns:
            if column.name == name:
                return column
        return None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def resumable(self, row_source: str) -> bool:
        """Whether an export of it read by ``row_source`` checkpoints (and so resumes)."""
        return row_source == "cursor" or self.ranged

    def describe(self, row_source: str = "cursor") -> dict[str, Any]:
        """What ``GET /datasets/{name}`` shows, when exports are read by ``row_source``."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "key": list(self.key),
            "columns": [{"name": c.name, "type": c.type} for c in self.columns],
            "defaultColumns": list(self.default_columns),
            "filters": {name: list(ops) for name, ops in self.filters.items()},
            "params": {name: p.type for name, p in self.params.items()},
            "maxRows": self.max_rows,
            "resumable": self.resumable(row_source),
            "exportsUrl": f"/datasets/{self.name}/exports",
        }


Datasets = Mapping[str, Dataset]

# The seed's table, exported as it always was when no datasets file is given.
USERS = DatasetSpec(
    name="users",
    source="table",
    relation="users",
    key=("id",),
    filters={
        "id": _ORDERED,
        "email": ("eq", "neq", "in", "like", "ilike"),
        "name": ("eq", "neq", "in", "like", "ilike"),
        "signup_date": ("gt", "gte", "lt", "lte"),
        "country_code": ("eq", "neq", "in"),
        "subscription_tier": ("eq", "neq", "in"),
        "lifetime_value": ("gt", "gte", "lt", "lte", "eq"),
    },
    description="The seed's users: one row a user.",
)


class _Problems:
    """Collects a file's problems, each with where it was found."""

    def __init__(self, file: str) -> None:
        self.file, self.found = file, list[DatasetProblem]()

    def add(self, dataset: str | None, key: str | None, message: str) -> None:
        self.found.append(DatasetProblem(self.file, dataset, key, message))


def _names(value: object, problems: _Problems, name: str, key: str) -> tuple[str, ...] | None:
    """A column name or a list of them, each once."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        problems.add(name, key, "must be a column name or a non-empty list of column names")
        return None
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        problems.add(name, key, f"names {', '.join(doubled)} more than once")
        return None
    return tuple(names)


def _filters(value: object, problems: _Problems, name: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        problems.add(name, "filters", "must be a table of column = [operators]")
        return {}
    filters = {}
    for column, ops in value.items():
        if not isinstance(ops, list) or not ops or not all(isinstance(o, str) for o in ops):
            problems.add(name, "filters", f"{column}: must be a non-empty list of operators")
            continue
        unknown = [o for o in ops if o not in OPERATORS]
        if unknown:
            problems.add(
                name,
                "filters",
                f"{column}: unknown operator {', '.join(unknown)}; known: {', '.join(OPERATORS)}",
            )
            continue
        filters[column] = tuple(dict.fromkeys(ops))
    return filters


def _spec(name: str, table: object, problems: _Problems) -> DatasetSpec | None:
    if not _NAME.match(name):
        problems.add(name, None, "a dataset's name is lower-case letters, digits and _")
    if not isinstance(table, dict):
        problems.add(name, None, "must be a table of settings")
        return None
    for key in sorted(set(table) - _KNOWN_KEYS):
        problems.add(name, key, f"unknown setting; known: {', '.join(sorted(_KNOWN_KEYS))}")
    sources = [s for s in _SOURCES if s in table]
    if len(sources) != 1:
        problems.add(name, None, "needs exactly one of table, view or query")
        return None
    source = sources[0]
    relation = table[source]
    if not isinstance(relation, str) or not relation.strip():
        problems.add(name, source, "must be a non-empty string")
        return None
    key = None if "key" not in table else _names(table["key"], problems, name, "key")
    if key is None and source != "table" and "key" not in table:
        problems.add(name, "key", f"a {source} needs its key declared: the column(s) that order it")
    columns = (
        None if "columns" not in table else _names(table["columns"], problems, name, "columns")
    )
    default = table.get("default_columns")
    defaults = None if default is None else _names(default, problems, name, "default_columns")
    description = table.get("description", "")
    if not isinstance(description, str):
        problems.add(name, "description", "must be a string")
        description = ""
    max_rows = table.get("max_rows")
    if max_rows is not None and (
        not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1
    ):
        problems.add(name, "max_rows", "must be a whole number of at least 1")
        max_rows = None
    params = table.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(t, str) for t in params.values()):
        problems.add(name, "params", 'must be a table of name = "type"')
        params = {}
    if params and source != "query":
        problems.add(name, "params", "only a saved query takes parameters")
    return DatasetSpec(
        name=name,
        source=source,
        relation=relation.strip(),
        key=key,
        columns=columns,
        filters=_filters(table.get("filters", {}), problems, name),
        default_columns=defaults,
        description=description,
        max_rows=max_rows,
        params=params,
        file=problems.file,
    )


def parse_datasets(document: Mapping[str, Any], file: str) -> list[DatasetSpec]:
    """The datasets of a parsed datasets file; ``DatasetError`` lists what is wrong."""
    problems = _Problems(file)
    declared = document.get("datasets")
    for key in sorted(set(document) - {"datasets"}):
        problems.add(None, key, "unknown section; datasets are declared as [datasets.NAME]")
    if not isinstance(declared, dict) or not declared:
        problems.add(None, "datasets", "declares no dataset ([datasets.NAME] tables)")
        raise DatasetError(problems.found)
    specs = [_spec(name, table, problems) for name, table in declared.items()]
    if problems.found:
        raise DatasetError(problems.found)
    return [spec for spec in specs if spec is not None]


def load_datasets_file(path: Path) -> list[DatasetSpec]:
    """Read and check a datasets file (TOML); ``DatasetError`` names what is wrong."""
    file = str(path)
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as error:
        raise DatasetError(
            [DatasetProblem(file, None, None, error.strerror or str(error))]
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise DatasetError([DatasetProblem(file, None, None, f"not valid TOML: {error}")]) from None
    return parse_datasets(document, file)


def declared_datasets(path: Path | None) -> list[DatasetSpec]:
    """The datasets of the file at ``path``, or without one the built-in ``users``."""
    return [USERS] if path is None else load_datasets_file(path)
