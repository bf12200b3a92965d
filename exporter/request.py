"""Validation of an export request (SPEC §3): pure, no I/O.

Everything a client sends is turned into an ``ExportRequest`` here or rejected with every
problem found, each naming its parameter, what was wrong and what is allowed. Nothing a
client typed reaches SQL except through this module's allow-lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# The users table's columns in table order: the allow-list for `columns`.
USER_COLUMNS: tuple[str, ...] = (
    "id",
    "name",
    "email",
    "signup_date",
    "country_code",
    "subscription_tier",
    "lifetime_value",
)
TIERS: tuple[str, ...] = ("free", "pro", "enterprise")
PARAMETERS: tuple[str, ...] = (
    "country_code",
    "subscription_tier",
    "columns",
    "delimiter",
    "quoteChar",
    "neutralizeFormulas",
)
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


@dataclasses.dataclass(frozen=True, slots=True)
class ExportRequest:
    """A validated export: which users rows, which columns, and the CSV dialect."""

    country_code: str | None = None
    subscription_tier: str | None = None
    columns: tuple[str, ...] = USER_COLUMNS
    delimiter: str = ","
    quote_char: str = '"'
    # OWASP CSV-injection defence: prefix values that start like a formula with '.
    neutralize_formulas: bool = False

    def to_json(self) -> dict[str, Any]:
        """The request as the API shows it (and as export_jobs stores it)."""
        return {
            "country_code": self.country_code,
            "subscription_tier": self.subscription_tier,
            "columns": list(self.columns),
            "delimiter": self.delimiter,
            "quoteChar": self.quote_char,
            "neutralizeFormulas": self.neutralize_formulas,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExportRequest:
        """Rebuild a stored request; it was validated when it was accepted."""
        return cls(
            country_code=data.get("country_code"),
            subscription_tier=data.get("subscription_tier"),
            columns=tuple(data.get("columns") or USER_COLUMNS),
            delimiter=data.get("delimiter", ","),
            quote_char=data.get("quoteChar", '"'),
            neutralize_formulas=bool(data.get("neutralizeFormulas", False)),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class FieldError:
    param: str
    message: str


class RequestInvalid(ValueError):
    """The request was rejected; ``errors`` says why, one entry per problem."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.param}: {e.message}" for e in errors))
        self.errors = errors


def _describe(char: str) -> str:
    return repr(char) if char.isprintable() else f"U+{ord(char):04X}"


def _single_char(param: str, raw: str, errors: list[FieldError]) -> str | None:
    if len(raw) != 1:
        errors.append(
            FieldError(param, f"must be exactly one character, got {len(raw)} ({raw[:20]!r})")
        )
        return None
    if raw in "\r\n":
        errors.append(FieldError(param, "must not be a carriage return or a line feed"))
        return None
    if not raw.isascii():
        errors.append(FieldError(param, f"must be an ASCII character, got {_describe(raw)}"))
        return None
    if raw == "\x00":
        # PostgreSQL text cannot hold NUL, so no COPY could ever use it either.
        errors.append(FieldError(param, "must not be the NUL character"))
        return None
    return raw


def _columns(raw: object, errors: list[FieldError]) -> tuple[str, ...] | None:
    if isinstance(raw, list) and all(isinstance(c, str) for c in raw):
        names = [c.strip() for c in raw]
    elif isinstance(raw, str):
        names = [c.strip() for c in raw.split(",")]
    else:
        errors.append(FieldError("columns", "must be a comma-separated string or a list of names"))
        return None
    if not names or names == [""]:
        errors.append(FieldError("columns", "must name at least one column"))
        return None
    allowed = ", ".join(USER_COLUMNS)
    unknown = [n for n in names if n not in USER_COLUMNS]
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:5])
        errors.append(FieldError("columns", f"unknown column {shown}; allowed: {allowed}"))
        return None
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        errors.append(FieldError("columns", f"duplicate column {', '.join(duplicates)}"))
        return None
    return tuple(names)


def parse_export_request(params: Mapping[str, object]) -> ExportRequest:
    """Validate raw parameters (query string or JSON body) into an ``ExportRequest``.

    Raises ``RequestInvalid`` listing every problem, so a client fixes them in one go.
    Unknown parameter names are rejected too: a misspelt filter silently exporting the
    whole table is the worst outcome an export service can have.
    """
    errors: list[FieldError] = []
    for name in params:
        if name not in PARAMETERS:
            errors.append(
                FieldError(name[:60], f"unknown parameter; allowed: {', '.join(PARAMETERS)}")
            )

    def text(name: str) -> str | None:
        value = params.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            errors.append(FieldError(name, "must be a string"))
            return None
        return value

    country = text("country_code")
    if country is not None:
        if len(country) == 2 and country.isascii() and country.isalpha():
            country = country.upper()
        else:
            errors.append(
                FieldError(
                    "country_code",
                    f"must be two letters (ISO 3166-1 alpha-2), got {country[:20]!r}",
                )
            )
            country = None

    tier = text("subscription_tier")
    if tier is not None and tier not in TIERS:
        errors.append(
            FieldError("subscription_tier", f"must be one of {', '.join(TIERS)}, got {tier[:20]!r}")
        )
        tier = None

    columns: tuple[str, ...] | None = USER_COLUMNS
    if params.get("columns") is not None:
        columns = _columns(params["columns"], errors)

    delimiter: str | None = ","
    raw_delimiter = text("delimiter")
    if raw_delimiter is not None:
        delimiter = _single_char("delimiter", raw_delimiter, errors)

    quote: str | None = '"'
    raw_quote = text("quoteChar")
    if raw_quote is not None:
        quote = _single_char("quoteChar", raw_quote, errors)

    if delimiter is not None and quote is not None and delimiter == quote:
        errors.append(
            FieldError("quoteChar", f"must differ from delimiter (both are {_describe(quote)})")
        )

    neutralize = False
    raw_neutralize = params.get("neutralizeFormulas")
    if isinstance(raw_neutralize, bool):
        neutralize = raw_neutralize
    elif isinstance(raw_neutralize, str) and raw_neutralize.lower() in _TRUE + _FALSE:
        neutralize = raw_neutralize.lower() in _TRUE
    elif raw_neutralize is not None:
        errors.append(FieldError("neutralizeFormulas", "must be true or false"))

    if errors:
        raise RequestInvalid(errors)
    assert columns is not None and delimiter is not None and quote is not None
    return ExportRequest(
        country_code=country,
        subscription_tier=tier,
        columns=columns,
        delimiter=delimiter,
        quote_char=quote,
        neutralize_formulas=neutralize,
    )
