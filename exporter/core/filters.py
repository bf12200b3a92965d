"""Filters in PostgREST's form, ``col=[not.]op.value``, parsed by the column's type: pure.

``parse_filter`` turns one parameter into a ``Filter`` whose value is the canonical text
of a value of the column's type (``gte.2024-01-05T10:00Z`` on a timestamptz is
``2024-01-05T10:00:00+00:00``), or raises
``FilterInvalid`` with a sentence naming what the column expects. The value then reaches
SQL only as a quoted literal cast to the column's type (``exporter.export.query``).

The operators: ``eq neq gt gte lt lte like ilike in is``; ``in.(a,b,"c,d")`` (quote an
item that holds a comma, a parenthesis or a quote; ``\\`` escapes inside quotes);
``is.null``, ``is.not_null``, and ``is.true`` / ``is.false`` for a boolean.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from collections.abc import Callable

from exporter.core.datasets import Column
from exporter.core.model import Filter

__all__ = ["FilterInvalid", "parse_filter", "parse_in_list", "parse_value"]

_INTEGER_BITS = {"smallint": 16, "integer": 32, "bigint": 64}


class FilterInvalid(ValueError):
    """A filter's text is wrong; the message says what was expected."""


def _integer(text: str, column: Column) -> str:
    try:
        number = int(text.strip())
    except ValueError:
        raise FilterInvalid(f"expects a whole number ({column.type}), got {text[:40]!r}") from None
    bits = _INTEGER_BITS.get(column.cast, 64)
    if not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
        raise FilterInvalid(f"{number} is out of range for {column.type}")
    return str(number)


def _numeric(text: str, column: Column) -> str:
    try:
        number = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        raise FilterInvalid(f"expects a number ({column.type}), got {text[:40]!r}") from None
    if number.is_snan():
        raise FilterInvalid(f"expects a number ({column.type}), got {text[:40]!r}")
    if number.is_nan():
        return "NaN"
    if number.is_infinite():
        return "Infinity" if number > 0 else "-Infinity"
    return str(number)


def _float(text: str, column: Column) -> str:
    try:
        number = float(text.strip())
    except ValueError:
        raise FilterInvalid(f"expects a number ({column.type}), got {text[:40]!r}") from None
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


def _boolean(text: str, column: Column) -> str:
    if text in ("true", "false"):
        return text
    raise FilterInvalid(f"expects true or false ({column.type}), got {text[:40]!r}")


def _uuid(text: str, column: Column) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise FilterInvalid(f"expects a UUID ({column.type}), got {text[:40]!r}") from None


def _infinite_or(parse: Callable[[str], object], what: str) -> Callable[[str, Column], str]:
    """A date or time parser that also takes PostgreSQL's ``infinity`` / ``-infinity``."""

    def parse_text(text: str, column: Column) -> str:
        if text in ("infinity", "-infinity") and column.kind != "time":
            return text
        try:
            value = parse(text.strip())
        except ValueError:
            raise FilterInvalid(
                f"expects {what} ({column.type}) in ISO 8601, got {text[:40]!r}"
            ) from None
        return str(value.isoformat())  # type: ignore[attr-defined]

    return parse_text


def _text(text: str, column: Column) -> str:
    if "\x00" in text:
        raise FilterInvalid("must not hold the NUL character")
    if column.max_length is not None and len(text) > column.max_length and column.kind == "text":
        # Longer than the column can hold: no row can be equal to it, and a cast to the
        # column's type would cut it short; an error says so instead.
        raise FilterInvalid(f"is longer than {column.type} can hold ({column.max_length})")
    return text


def _enum(text: str, column: Column) -> str:
    if text in column.labels:
        return text
    raise FilterInvalid(f"expects one of {', '.join(column.labels)}, got {text[:40]!r}")


_PARSERS: dict[str, Callable[[str, Column], str]] = {
    "integer": _integer,
    "numeric": _numeric,
    "float": _float,
    "boolean": _boolean,
    "uuid": _uuid,
    "date": _infinite_or(dt.date.fromisoformat, "a date"),
    "timestamp": _infinite_or(dt.datetime.fromisoformat, "a timestamp"),
    "timestamptz": _infinite_or(dt.datetime.fromisoformat, "a timestamp"),
    "time": _infinite_or(dt.time.fromisoformat, "a time"),
    "text": _text,
    "enum": _enum,
}


def parse_value(text: str, column: Column) -> str:
    """``text`` as a value of ``column``'s type, in canonical form."""
    parser = _PARSERS.get(column.kind)
    if parser is None:
        raise FilterInvalid(f"values of type {column.type} cannot be compared here")
    return parser(text, column)


def parse_in_list(text: str) -> tuple[str, ...]:
    """``(a,b,"c,d")`` as its items."""
    if not (text.startswith("(") and text.endswith(")")):
        raise FilterInvalid("in expects a list in parentheses: in.(a,b)")
    body, items, item, quoted, escaped, was_quoted = text[1:-1], [], "", False, False, False
    for char in body:
        if escaped:
            item, escaped = item + char, False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted, was_quoted = not quoted, True
        elif char == "," and not quoted:
            items.append(item if was_quoted else item.strip())
            item, was_quoted = "", False
        else:
            item += char
    if quoted:
        raise FilterInvalid("in: a quoted item is not closed")
    items.append(item if was_quoted else item.strip())
    if items == [""]:
        raise FilterInvalid("in expects at least one value: in.(a,b)")
    return tuple(items)


def parse_filter(column: Column, allowed: tuple[str, ...], text: str) -> Filter:
    """One filter on ``column``, ``[not.]op.value``, with an operator from ``allowed``."""
    negated = text.startswith("not.")
    rest = text[4:] if negated else text
    operator, dot, value = rest.partition(".")
    if not dot or operator not in allowed:
        shown = ", ".join(f"{op}." for op in allowed)
        raise FilterInvalid(f"expects an operator and a value, op.value, with op one of {shown}")
    if operator == "is":
        wanted = ("null", "not_null") + (("true", "false") if column.kind == "boolean" else ())
        if value not in wanted:
            raise FilterInvalid(f"is expects {' or '.join(wanted)}, got {value[:40]!r}")
        return Filter(column.name, operator, value, negated)
    if operator == "in":
        return Filter(
            column.name,
            operator,
            tuple(parse_value(item, column) for item in parse_in_list(value)),
            negated,
        )
    if operator in ("like", "ilike"):
        if "\x00" in value:
            raise FilterInvalid("must not hold the NUL character")
        return Filter(column.name, operator, value, negated)
    return Filter(column.name, operator, parse_value(value, column), negated)
