"""CSV encoding, byte-identical to PostgreSQL's ``COPY … (FORMAT csv)``: pure, no I/O.

Values arrive as PostgreSQL's own text output, as bytes (``None`` for NULL), so encoding is
only joining and, where needed, quoting. PostgreSQL's rules (``CopyAttributeOutCSV``):

- NULL is an empty field; an empty string is a quoted empty field, ``qq``;
- a value is quoted when it holds the delimiter, the quote, CR or LF, the quote doubled;
- with a single column, a value that is exactly ``\\.`` is quoted too, so that the line
  cannot be read as COPY's end-of-data marker;
- header names follow the same rules; lines end with ``\\n``.

Opt-in (``Dialect.neutralize_formulas``), OWASP's defence against CSV formula injection:
a value starting with ``=``, ``+``, ``-``, ``@``, tab or CR gets a ``'`` in front, so a
spreadsheet shows it as text instead of running it; then the rules above apply as usual.

``encode_rows`` joins a whole batch into one buffer, where a few memchr scans prove that no
value needs quotes or find the few that do; only those values are touched in Python. NULLs
and empty strings (rare in practice) send a batch down the per-value path.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

Row = Sequence[bytes | None]

_END_MARKER = b"\\."
# What a spreadsheet may read as the start of a formula (OWASP, "CSV Injection").
FORMULA_STARTS = (b"=", b"+", b"-", b"@", b"\t", b"\r")


@dataclasses.dataclass(frozen=True, slots=True)
class Dialect:
    delimiter: bytes = b","
    quote: bytes = b'"'
    neutralize_formulas: bool = False

    @classmethod
    def of(cls, delimiter: str, quote: str, neutralize_formulas: bool = False) -> Dialect:
        if len(delimiter) != 1 or len(quote) != 1 or delimiter == quote:
            raise ValueError("delimiter and quote must be two different single characters")
        return cls(delimiter.encode("ascii"), quote.encode("ascii"), neutralize_formulas)


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


def _encode_slow(rows: Sequence[Row], dialect: Dialect, single_column: bool) -> bytes:
    d = dialect.delimiter
    lines = [d.join([_field(v, dialect, single_column) for v in row]) for row in rows]
    lines.append(b"")
    return b"\n".join(lines)


def _quote_where_needed(
    rows: Sequence[Row], flat: bytes, width: int, dialect: Dialect
) -> list[Row]:
    """``rows`` with the values that hold a special character quoted; nothing else touched.

    ``flat`` is every value of the batch joined with NUL. ``bytes.find`` (memchr, many
    times faster than a regex character class) finds the next special character of each
    kind; counting the NULs before it says which row and column holds it.
    """
    out = list(rows)
    q = dialect.quote
    find, count = flat.find, flat.count
    kinds = [c for c in (dialect.delimiter, q, b"\n", b"\r") if c in flat]
    upcoming = [find(c) for c in kinds]
    index, pos = 0, 0
    while True:
        start = min(upcoming)
        index += count(b"\x00", pos, start)  # separators passed = values passed
        row_index, column = divmod(index, width)
        row = list(out[row_index])
        value = row[column]
        assert value is not None
        row[column] = q + value.replace(q, q + q) + q
        out[row_index] = row
        pos = find(b"\x00", start)
        if pos == -1:
            return out
        # Look past this value for every kind of special character it held.
        for i, at in enumerate(upcoming):
            if at < pos:
                found = find(kinds[i], pos)
                upcoming[i] = found if found != -1 else len(flat)
        if min(upcoming) == len(flat):
            return out


def neutralize_formulas(rows: Sequence[Row]) -> list[Row]:
    """``rows`` with a ``'`` before every value a spreadsheet could run as a formula."""
    return [
        [b"'" + v if v is not None and v.startswith(FORMULA_STARTS) else v for v in row]
        for row in rows
    ]


def encode_rows(rows: Sequence[Row], dialect: Dialect) -> bytes:
    """The CSV lines of ``rows``, each ending in ``\\n``.

    The whole batch is joined once with NUL, which PostgreSQL text can never hold, so a
    few C-speed scans of one buffer prove that no value needs quotes, or find the few
    that do; only those are touched. NULLs and empty strings (rare in practice) take the
    per-value path, which tells them apart.
    """
    if not rows:
        return b""
    if dialect.neutralize_formulas:
        rows = neutralize_formulas(rows)
    single = len(rows[0]) == 1
    try:
        flat = b"\x00".join(itertools.chain.from_iterable(rows))  # type: ignore[arg-type]
    except TypeError:  # a NULL: bytes.join refuses None
        return _encode_slow(rows, dialect, single)
    if (
        flat == b""
        or b"\x00\x00" in flat
        or flat[:1] == b"\x00"
        or flat[-1:] == b"\x00"
        or (single and _END_MARKER in flat)
    ):  # an empty string (or COPY's end marker): every value on its own
        return _encode_slow(rows, dialect, single)
    d = dialect.delimiter
    if d in flat or dialect.quote in flat or b"\n" in flat or b"\r" in flat:
        rows = _quote_where_needed(rows, flat, len(rows[0]), dialect)
    return b"\n".join(map(d.join, rows)) + b"\n"  # type: ignore[arg-type]
