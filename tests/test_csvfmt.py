"""CSV encoding: byte-identical to what PostgreSQL's COPY writes.

Unit cases pin the rules; the hypothesis test throws arbitrary text (quotes, delimiters,
newlines, empty strings, NULLs, non-ASCII) into a scratch table of the real PostgreSQL and
compares our encoding of the fetched values with what COPY writes for the same SELECT.
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from exporter.export.connection import open_text_connection
from exporter.export.csvfmt import Dialect, encode_header, encode_rows

COMMA = Dialect()


def test_plain_rows_take_no_quotes() -> None:
    rows = [(b"1", b"Ann", b"4600.50"), (b"2", b"Bob", b"0.00")]
    assert encode_rows(rows, COMMA) == b"1,Ann,4600.50\n2,Bob,0.00\n"


def test_null_is_empty_and_empty_string_is_quoted() -> None:
    assert encode_rows([(b"1", None, b"")], COMMA) == b'1,,""\n'
    assert encode_rows([(b"", b"x")], COMMA) == b'"",x\n'
    assert encode_rows([(b"x", b"")], COMMA) == b'x,""\n'
    assert encode_rows([(None, None)], COMMA) == b",\n"


def test_quoting_rules() -> None:
    rows = [(b"a,b", b'say "hi"', b"line\nbreak", b"cr\rhere", b"plain")]
    assert encode_rows(rows, COMMA) == (b'"a,b","say ""hi""","line\nbreak","cr\rhere",plain\n')


def test_custom_dialect_quotes_its_own_characters_only() -> None:
    dialect = Dialect.of("|", "'")
    rows = [(b"a,b", b"it's", b"x|y", b'"q"')]
    assert encode_rows(rows, dialect) == b"a,b|'it''s'|'x|y'|\"q\"\n"


def test_end_of_data_marker_is_quoted_only_in_a_single_column() -> None:
    assert encode_rows([(b"\\.",), (b"a",)], COMMA) == b'"\\."\na\n'
    assert encode_rows([(b"\\.", b"x")], COMMA) == b"\\.,x\n"


def test_single_column_empty_values() -> None:
    assert encode_rows([(b"a",), (b"",), (b"b",)], COMMA) == b'a\n""\nb\n'
    assert encode_rows([(b"",)], COMMA) == b'""\n'


def test_header_follows_the_same_rules() -> None:
    assert encode_header(["id", "email"], COMMA) == b"id,email\n"
    assert encode_header(["id", "email"], Dialect.of("i", '"')) == b'"id"i"email"\n'


def test_no_rows() -> None:
    assert encode_rows([], COMMA) == b""


# Control characters too: the encoder uses 0x01 and 0x02 as marks of its own.
DIALECTS = [(",", '"'), ("\t", '"'), ("|", "'"), (";", "\\"), ("a", "b"), (" ", "\t")]
DIALECTS += [("\x01", '"'), (",", "\x01"), ("\x02", "\x03"), ("\x03", "\x02")]
ALPHABET = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
SPECIALS = st.sampled_from(
    ["", ",", '"', "\n", "\r", "\r\n", "'", "|", "\t", "\\.", "a", " ", "\x01", "\x02", "\x03"]
)
VALUE = st.one_of(
    st.none(),
    SPECIALS,
    st.text(ALPHABET, max_size=12),
    st.lists(SPECIALS | st.text(ALPHABET, max_size=3), max_size=5).map("".join),
)


@settings(max_examples=2000, deadline=None)
@given(
    width=st.integers(1, 4),
    data=st.data(),
    dialect=st.sampled_from(DIALECTS),
)
def test_whole_batches_encode_as_value_by_value(
    width: int, data: st.DataObject, dialect: tuple[str, str]
) -> None:
    # The batch encoder's shortcuts against the plain rules applied to each value, on
    # batches of up to 40 rows (the COPY comparison below makes fewer, smaller ones).
    rows = data.draw(st.lists(st.tuples(*[VALUE] * width), min_size=1, max_size=40))
    values = [tuple(None if v is None else v.encode() for v in row) for row in rows]
    assert encode_rows(values, Dialect.of(*dialect)) == _by_the_rules(rows, *dialect)


def _by_the_rules(rows: list[tuple[str | None, ...]], delimiter: str, quote: str) -> bytes:
    """The rules above, applied to one value at a time."""

    single = len(rows[0]) == 1

    def field(value: str | None) -> str:
        if value is None:
            return ""
        specials = (delimiter, quote, "\n", "\r")
        if value == "" or any(c in value for c in specials) or (single and value == "\\."):
            return quote + value.replace(quote, quote * 2) + quote
        return value

    return "".join(delimiter.join(field(value) for value in row) + "\n" for row in rows).encode()


@pytest.fixture(scope="module")
def scratch(database: str):  # type: ignore[no-untyped-def]
    with open_text_connection(database, "exporter-tests") as conn:
        conn.autocommit = True
        yield conn


@pytest.mark.slow  # 300 round trips to PostgreSQL
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    width=st.integers(1, 3),
    data=st.data(),
    dialect=st.sampled_from(DIALECTS),
)
def test_matches_postgres_copy(
    scratch: psycopg.Connection,  # type: ignore[type-arg]
    width: int,
    data: st.DataObject,
    dialect: tuple[str, str],
) -> None:
    rows = data.draw(st.lists(st.tuples(*[VALUE] * width), min_size=1, max_size=8))
    columns = [f"c{i}" for i in range(width)]
    scratch.execute("DROP TABLE IF EXISTS csv_scratch")
    scratch.execute(
        sql.SQL("CREATE TEMP TABLE csv_scratch (ord int, {})").format(
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns)
        )
    )
    with scratch.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO csv_scratch VALUES (%s, {})").format(
                sql.SQL(", ").join(sql.Placeholder() * width)
            ),
            [(i, *row) for i, row in enumerate(rows)],
        )
    select = sql.SQL("SELECT {} FROM csv_scratch ORDER BY ord").format(
        sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    fetched = scratch.execute(select).fetchall()
    # The values made the round trip intact, as PostgreSQL's text (bytes, UTF-8).
    assert fetched == [tuple(None if v is None else v.encode() for v in row) for row in rows]
    d, q = dialect
    ours = encode_header(columns, Dialect.of(d, q)) + encode_rows(fetched, Dialect.of(d, q))
    copy = sql.SQL(
        "COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true, DELIMITER {}, QUOTE {})"
    ).format(select, sql.Literal(d), sql.Literal(q))
    with scratch.cursor().copy(copy) as stream:
        theirs = b"".join(bytes(chunk) for chunk in stream)
    assert ours == theirs
