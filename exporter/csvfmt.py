"""CSV encoding, byte-identical to PostgreSQL's ``COPY … (FORMAT csv)``: pure, no I/O.

Values arrive as PostgreSQL's own text output, as bytes (``None`` for NULL), so encoding is
only joining and, where needed, quoting. PostgreSQL's rules (``CopyAttributeOutCSV``):

- NULL is an empty field; an empty string is a quoted empty field, ``qq``;
- a value is quoted when it holds the delimiter, the quote, CR or LF, the quote doubled;
- with a single column, a value that is exactly ``\\.`` is quoted too, so that the line
  cannot be read as COPY's end-of-data marker;
- header names follow the same rules; lines end with ``\\n``.

``encode_rows`` first joins a whole batch with no per-value work and checks the result with
a handful of substring scans (all in C); only a batch that fails a check takes the slow,
per-value path.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

Row = Sequence[bytes | None]

_END_MARKER = b"\\."


@dataclasses.dataclass(frozen=True, slots=True)
class Dialect:
    delimiter: bytes = b","
    quote: bytes = b'"'

    @classmethod
    def of(cls, delimiter: str, quote: str) -> Dialect:
        if len(delimiter) != 1 or len(quote) != 1 or delimiter == quote:
            raise ValueError("delimiter and quote must be two different single characters")
        return cls(delimiter.encode("ascii"), quote.encode("ascii"))


def _field(value: bytes | None, dialect: Dialect, single_column: bool) -> bytes:
    if value is None:
        return b""
    d, q = dialect.delimiter, dialect.quote
    if (
        value == b""
        or d in value
        or q in value
        or b"\n" in value
        or b"\r" in value
        or (single_column and value == _END_MARKER)
    ):
        return q + value.replace(q, q + q) + q
    return value


def encode_header(columns: Sequence[str], dialect: Dialect) -> bytes:
    single = len(columns) == 1
    return (
        dialect.delimiter.join(_field(c.encode("utf-8"), dialect, single) for c in columns) + b"\n"
    )


_specials: dict[Dialect, re.Pattern[bytes]] = {}


def _special_pattern(dialect: Dialect) -> re.Pattern[bytes]:
    pattern = _specials.get(dialect)
    if pattern is None:
        chars = re.escape(dialect.delimiter) + re.escape(dialect.quote)
        pattern = _specials[dialect] = re.compile(b"[" + chars + b"\r\n]")
    return pattern


def _encode_column(
    column: Sequence[bytes | None], dialect: Dialect, single: bool
) -> Sequence[bytes]:
    """A column's values as CSV fields; a column that needs nothing is returned as is.

    The column is joined with NUL, which PostgreSQL text can never hold, so that C-speed
    scans over one buffer find the few values that need quotes; only those are touched.
    """
    try:
        joined = b"\x00".join(column)  # type: ignore[arg-type]
    except TypeError:  # a NULL: rare, and the per-value path tells it from an empty string
        return [_field(v, dialect, single) for v in column]
    if (
        joined == b""
        or b"\x00\x00" in joined
        or joined[:1] == b"\x00"
        or joined[-1:] == b"\x00"
        or (single and _END_MARKER in joined)
    ):  # empty strings (or COPY's end marker): rare enough for the per-value path
        return [_field(v, dialect, single) for v in column]
    d = dialect.delimiter
    if not (d in joined or dialect.quote in joined or b"\n" in joined or b"\r" in joined):
        return column  # type: ignore[return-value]  # the common case, found by memchr
    search = _special_pattern(dialect).search
    found = search(joined)
    q = dialect.quote
    out: list[bytes] = list(column)  # type: ignore[arg-type]
    index, pos = 0, 0
    while found is not None:
        start = found.start()
        index += joined.count(b"\x00", pos, start)  # separators passed = values passed
        value = out[index]
        out[index] = q + value.replace(q, q + q) + q
        pos = joined.find(b"\x00", start)
        if pos == -1:
            break
        found = search(joined, pos)
    return out


def _needs_no_quoting(body: bytes, rows: int, columns: int, dialect: Dialect) -> bool:
    """Whether ``body``, the plain join of ``rows`` rows, is already valid CSV.

    Counting delimiters and line feeds proves no value contains one; with that settled,
    an empty value can only show as two separators side by side, or one at an edge.
    """
    d, q = dialect.delimiter, dialect.quote
    if q in body or b"\r" in body:
        return False
    if body.count(b"\n") != rows - 1 or body.count(d) != rows * (columns - 1):
        return False
    if columns == 1:
        empty = body == b"" or b"\n\n" in body or body[:1] == b"\n" or body[-1:] == b"\n"
        marker = (
            body == _END_MARKER
            or body.startswith(_END_MARKER + b"\n")
            or body.endswith(b"\n" + _END_MARKER)
            or b"\n" + _END_MARKER + b"\n" in body
        )
        return not (empty or marker)
    return not (
        body[:1] == d or body[-1:] == d or d + d in body or d + b"\n" in body or b"\n" + d in body
    )


def encode_rows(rows: Sequence[Row], dialect: Dialect) -> bytes:
    """The CSV lines of ``rows``, each ending in ``\\n``."""
    if not rows:
        return b""
    width = len(rows[0])
    d = dialect.delimiter
    try:
        body = b"\n".join(map(d.join, rows))  # type: ignore[arg-type]
    except TypeError:  # a NULL in the batch: bytes.join refuses None
        pass
    else:
        if _needs_no_quoting(body, len(rows), width, dialect):
            return body + b"\n"
    # Column by column: only the values that need it are touched, by one regex pass over
    # each column (in C); clean columns pass through as they are.
    columns = [_encode_column(column, dialect, width == 1) for column in zip(*rows, strict=True)]
    return b"\n".join(map(d.join, zip(*columns, strict=True))) + b"\n"
