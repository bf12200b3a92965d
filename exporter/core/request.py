"""Validation of an export request: pure, no I/O.

Everything a client sends is turned into an ``ExportRequest`` here or rejected with every
problem found, each naming its parameter, what was wrong and what is allowed. Nothing a
client typed reaches SQL except through this module's allow-lists.

``PARAMETERS`` is the one description of the export parameters: validation reads it, the
OpenAPI document is made from it (``exporter.http.openapi``), and so are the command-line
client's options (``exporter.client.commands``). A rule changed here changes all three.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from exporter.core.datasets import Dataset
from exporter.core.errors import FieldError, RequestInvalid
from exporter.core.filters import FilterInvalid, parse_filter, parse_value
from exporter.core.model import TIERS, USER_COLUMNS, ExportRequest, Filter

__all__ = [
    "DEFAULT_REQUEST",
    "DIALECT_PARAMETERS",
    "PARAMETERS",
    "PARAMETER_NAMES",
    "SELECT",
    "Parameter",
    "parse_dataset_request",
    "parse_export_request",
]


class _Invalid(Exception):
    """One parameter's value is wrong: the message says how (raised by the parsers below)."""


def _describe(char: str) -> str:
    return repr(char) if char.isprintable() else f"U+{ord(char):04X}"


def _text(raw: object) -> str:
    if not isinstance(raw, str):
        raise _Invalid("must be a string")
    return raw


def _country(raw: object) -> str:
    country = _text(raw)
    if len(country) == 2 and country.isascii() and country.isalpha():
        return country.upper()
    raise _Invalid(f"must be two letters (ISO 3166-1 alpha-2), got {country[:20]!r}")


def _tier(raw: object) -> str:
    tier = _text(raw)
    if tier not in TIERS:
        raise _Invalid(f"must be one of {', '.join(TIERS)}, got {tier[:20]!r}")
    return tier


def _columns(raw: object) -> tuple[str, ...]:
    names = _names(raw)
    unknown = [n for n in names if n not in USER_COLUMNS]
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:5])
        raise _Invalid(f"unknown column {shown}; allowed: {', '.join(USER_COLUMNS)}")
    return names


def _single_char(raw: object) -> str:
    char = _text(raw)
    if len(char) != 1:
        raise _Invalid(f"must be exactly one character, got {len(char)} ({char[:20]!r})")
    if char in "\r\n":
        raise _Invalid("must not be a carriage return or a line feed")
    if not char.isascii():
        raise _Invalid(f"must be an ASCII character, got {_describe(char)}")
    if char == "\x00":
        # PostgreSQL text cannot hold NUL, so no COPY could ever use it either.
        raise _Invalid("must not be the NUL character")
    return char


def _boolean(raw: object) -> bool:
    # JSON has booleans; a query string only has text, and there exactly "true" or "false".
    if isinstance(raw, bool):
        return raw
    if raw in ("true", "false"):
        return raw == "true"
    raise _Invalid("must be true or false")


@dataclasses.dataclass(frozen=True, slots=True)
class Parameter:
    """One export parameter: its name on the wire, its rule, its default, its words."""

    field: str  # the ExportRequest field it fills
    parse: Callable[[object], Any]  # raises _Invalid with a message
    # JSON schema of its value in a query string, and in a JSON body where that differs.
    query_schema: dict[str, Any]
    description: str
    body_schema: dict[str, Any] | None = None
    flag: bool = False  # a command-line switch rather than an option with a value
    aliases: tuple[str, ...] = ()  # shorter command-line spellings

    @property
    def name(self) -> str:
        """Its name in the query string, the JSON body and the stored request."""
        return ExportRequest.wire_name(self.field)

    @property
    def json_schema(self) -> dict[str, Any]:
        return self.query_schema if self.body_schema is None else self.body_schema

    @property
    def option(self) -> str:
        """The command-line client's option: ``--country-code``, ``--quote-char``."""
        spaced = "".join(f"-{c.lower()}" if c.isupper() else c for c in self.name)
        return "--" + spaced.replace("_", "-")


# What the schemas can say of the rules; the rest (no duplicate columns, quoteChar unlike
# delimiter) only the 400's errors say.
_COLUMN = "(" + "|".join(USER_COLUMNS) + ")"
COLUMNS_PATTERN = f"^{_COLUMN}(,{_COLUMN})*$"
# One ASCII character but NUL, CR and LF.
_CHAR = {"type": "string", "pattern": "^[\\x01-\\x09\\x0b\\x0c\\x0e-\\x7f]$"}

PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "country_code",
        _country,
        {"type": "string", "pattern": "^[A-Za-z]{2}$"},
        "Only users of this country: two letters, case-insensitive.",
    ),
    Parameter(
        "subscription_tier",
        _tier,
        {"type": "string", "enum": list(TIERS)},
        "Only users of this tier.",
        aliases=("--tier",),
    ),
    Parameter(
        "columns",
        _columns,
        {"type": "string", "pattern": COLUMNS_PATTERN},
        "Comma-separated columns in the order wanted, no duplicates; "
        f"default all: {','.join(USER_COLUMNS)}.",
        body_schema={
            "oneOf": [
                {"type": "string", "pattern": COLUMNS_PATTERN},
                {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"type": "string", "enum": list(USER_COLUMNS)},
                },
            ]
        },
    ),
    Parameter(
        "delimiter",
        _single_char,
        _CHAR,
        "One ASCII character, not CR, LF or NUL; default ','.",
    ),
    Parameter(
        "quote_char",
        _single_char,
        _CHAR,
        "One ASCII character, not CR, LF or NUL, unlike the delimiter; default '\"'.",
    ),
    Parameter(
        "neutralize_formulas",
        _boolean,
        {"type": "string", "enum": ["true", "false"]},
        "true: a value starting with =, +, -, @, tab or CR gets a ' in front "
        "(OWASP CSV injection), so spreadsheets show it as text. Default false.",
        # A JSON body may say it either way, as the validator accepts both.
        body_schema={"enum": [True, False, "true", "false"]},
        flag=True,
    ),
)
PARAMETER_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)


DEFAULT_REQUEST = ExportRequest()


def parse_export_request(params: Mapping[str, object]) -> ExportRequest:
    """Validate raw parameters (query string or JSON body) into an ``ExportRequest``.

    Raises ``RequestInvalid`` listing every problem, so a client fixes them in one go.
    Unknown parameter names are rejected too: a misspelt filter silently exporting the
    whole table is the worst outcome an export service can have.
    """
    errors = [
        FieldError(name[:60], f"unknown parameter; allowed: {', '.join(PARAMETER_NAMES)}")
        for name in params
        if name not in PARAMETER_NAMES
    ]
    values: dict[str, Any] = {}
    for parameter in PARAMETERS:
        raw = params.get(parameter.name)
        if raw is None:
            continue
        try:
            values[parameter.field] = parameter.parse(raw)
        except _Invalid as invalid:
            errors.append(FieldError(parameter.name, str(invalid)))
    _check_dialect(values, errors)
    if errors:
        raise RequestInvalid(errors)
    return ExportRequest(**values)


def _check_dialect(values: Mapping[str, Any], errors: list[FieldError]) -> None:
    """The delimiter and the quote must differ (unless one of them was wrong already)."""
    if not {e.param for e in errors} & {"delimiter", "quoteChar"}:
        delimiter = values.get("delimiter", DEFAULT_REQUEST.delimiter)
        quote = values.get("quote_char", DEFAULT_REQUEST.quote_char)
        if delimiter == quote:
            errors.append(
                FieldError("quoteChar", f"must differ from delimiter (both are {_describe(quote)})")
            )


# A dataset export's parameters: ``select``, the dialect's, a saved query's parameters;
# every other name is a column's filter.
SELECT = "select"
DIALECT_PARAMETERS: tuple[Parameter, ...] = tuple(
    p for p in PARAMETERS if p.field in ("delimiter", "quote_char", "neutralize_formulas")
)


def _select(dataset: Dataset, raw: object) -> tuple[str, ...]:
    names = _names(raw)
    unknown = [n for n in names if dataset.column(n) is None]
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:5])
        raise _Invalid(
            f"unknown column {shown}; {dataset.name} has {', '.join(dataset.column_names)}"
        )
    return names


def _names(raw: object) -> tuple[str, ...]:
    if isinstance(raw, list) and all(isinstance(c, str) for c in raw):
        names = [c.strip() for c in raw]
    elif isinstance(raw, str):
        names = [c.strip() for c in raw.split(",")]
    else:
        raise _Invalid("must be a comma-separated string or a list of names")
    if not names or names == [""]:
        raise _Invalid("must name at least one column")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _Invalid(f"duplicate column {', '.join(duplicates)}")
    return tuple(names)


def _filters(dataset: Dataset, name: str, raw: object) -> list[Filter]:
    """The filters one parameter gives (a list when it is given more than once)."""
    texts = raw if isinstance(raw, list) else [raw]
    column = dataset.column(name)
    allowed = dataset.filters.get(name)
    if column is None or allowed is None:
        filterable = ", ".join(dataset.filters) or "none"
        raise _Invalid(f"unknown parameter; {dataset.name} can be filtered on: {filterable}")
    found = []
    for text in texts:
        if not isinstance(text, str):
            raise _Invalid("must be a filter, op.value, as a string")
        try:
            found.append(parse_filter(column, allowed, text))
        except FilterInvalid as invalid:
            raise _Invalid(str(invalid)) from None
    return found


def parse_dataset_request(dataset: Dataset, params: Mapping[str, object]) -> ExportRequest:
    """Validate an export of ``dataset`` (query string or JSON body) into an
    ``ExportRequest``: ``select``, filters ``col=op.value``, a saved query's parameters
    and the CSV dialect. Raises ``RequestInvalid`` listing every problem."""
    errors: list[FieldError] = []
    values: dict[str, Any] = {"dataset": dataset.name, "columns": dataset.default_columns}
    dialect = {p.name: p for p in DIALECT_PARAMETERS}
    filters: list[Filter] = []
    query_params: dict[str, str] = {}
    for name, raw in params.items():
        try:
            if name == SELECT:
                values["columns"] = _select(dataset, raw)
            elif name in dialect:
                values[dialect[name].field] = dialect[name].parse(raw)
            elif name in dataset.params:
                if not isinstance(raw, str):
                    raise _Invalid("must be given once, as a string")
                query_params[name] = parse_value(raw, dataset.params[name])
            else:
                filters += _filters(dataset, name, raw)
        except (_Invalid, FilterInvalid) as invalid:
            errors.append(FieldError(name[:60], str(invalid)))
    for name in dataset.params:
        if name not in query_params and name not in {e.param for e in errors}:
            errors.append(FieldError(name, f"required: a value of {dataset.params[name].type}"))
    _check_dialect(values, errors)
    if errors:
        raise RequestInvalid(errors)
    values["filters"] = tuple(filters)
    values["params"] = tuple(query_params.items())
    return ExportRequest(**values)
