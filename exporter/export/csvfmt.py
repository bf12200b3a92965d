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

``encode_rows`` joins a whole batch into one buffer, where one ``translate`` and C-speed
scans find the values that need quotes; only those are touched in Python. NULLs and empty
strings (rare in practice) send a batch down the per-value path.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

__all__ = ["Dialect", "Row", "encode_header", "encode_rows", "neutralize_formulas"]

Row = Sequence[bytes | None]

_END_MARKER = b"\\."
# encode_rows' separators in its joined buffer, and its mark for a byte that needs quotes.
_VALUE_END = b"\x00"
_ROW_END = b"\x01"
_SPECIAL = b"\x02"
# What a spreadsheet may read as the start of a formula (OWASP, "CSV Injection").
FORMULA_STARTS = (b"=", b"+", b"-", b"@", b"\t", b"\r")


@dataclasses.dataclass(frozen=True, slots=True)
class Dialect:
    """The CSV dialect of an export: delimiter, quote character, formula neutralising."""

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


@functools.lru_cache(maxsize=16)
def _probe_table(dialect: Dialect) -> bytes | None:
    """``bytes.translate``'s table for encode_rows' probe; None for a dialect whose
    delimiter or quote is ``\\x01``, which the probe cannot tell from a row's end."""
    if _ROW_END in (dialect.delimiter, dialect.quote):
        return None
    table = bytearray(range(256))
    table[_ROW_END[0]] = _VALUE_END[0]
    table[_SPECIAL[0]] = _SPECIAL[0] + 1  # a value's own 0x02 needs no quotes
    for special in (dialect.delimiter, dialect.quote, b"\n", b"\r"):
        table[special[0]] = _SPECIAL[0]
    return bytes(table)


def encode_header(columns: Sequence[str], dialect: Dialect) -> bytes:
    """The header line of ``columns`` in ``dialect``, as COPY's HEADER writes it."""
    single = len(columns) == 1
    return (
        dialect.delimiter.join(_field(c.encode("utf-8"), dialect, single) for c in columns) + b"\n"
    )


def _encode_slow(rows: Sequence[Row], dialect: Dialect, single_column: bool) -> bytes:
    d = dialect.delimiter
    lines = [d.join([_field(v, dialect, single_column) for v in row]) for row in rows]
    lines.append(b"")
    return b"\n".join(lines)


def neutralize_formulas(rows: Sequence[Row]) -> list[Row]:
    """``rows`` with a ``'`` before every value a spreadsheet could run as a formula."""
    return [
        [b"'" + v if v is not None and v.startswith(FORMULA_STARTS) else v for v in row]
        for row in rows
    ]


def encode_rows(rows: Sequence[Row], dialect: Dialect) -> bytes:
    """The CSV lines of ``rows``, each ending in ``\\n``.

    The batch is joined once into one buffer, values separated by NUL (which PostgreSQL
    text can never hold) and rows by ``\\x01`` (counted, to prove no value holds one). One
    ``translate`` of it marks every byte that needs quotes; ``find`` then goes from one
    such value to the next, so only those are touched in Python, and two ``replace``
    calls make the separators CSV's. NULLs, empty strings and a dialect using ``\\x01``
    (all rare) take the per-value path, which tells them apart.
    """
    if not rows:
        return b""
    if dialect.neutralize_formulas:
        rows = neutralize_formulas(rows)
    single = len(rows[0]) == 1
    table = _probe_table(dialect)
    try:
        flat = _ROW_END.join(map(_VALUE_END.join, rows))  # type: ignore[arg-type]
    except TypeError:  # a NULL: bytes.join refuses None
        return _encode_slow(rows, dialect, single)
    if table is None or flat.count(_ROW_END) != len(rows) - 1:
        return _encode_slow(rows, dialect, single)
    # The probe: separators all NUL, bytes that need quotes _SPECIAL, the rest unchanged.
    probe = flat.translate(table)
    if (
        not probe
        or probe[0] == 0
        or probe[-1] == 0
        or b"\x00\x00" in probe
        or (single and _END_MARKER in flat)
    ):  # an empty string (two separators together), or COPY's end marker
        return _encode_slow(rows, dialect, single)
    find = probe.find
    at = find(_SPECIAL)
    if at != -1:
        q = dialect.quote
        pieces, done = [], 0
        while at != -1:
            start = probe.rfind(b"\x00", 0, at) + 1
            end = find(b"\x00", at)
            if end == -1:
                end = len(flat)
            pieces.append(flat[done:start])
            pieces.append(q + flat[start:end].replace(q, q + q) + q)
            done = end
            at = find(_SPECIAL, end)
        pieces.append(flat[done:])
        flat = b"".join(pieces)
    return flat.replace(_ROW_END, b"\n").replace(_VALUE_END, dialect.delimiter) + b"\n"
