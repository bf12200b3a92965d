"""Conditional and range requests (RFC 9110 §13, §14): the pure decisions of exporter.http.ranges.

Plain sync tests, no database: every rule of the module's contract is pinned by a case,
and hypothesis checks the invariants of 206/416 plans and that no header value crashes.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.core.files import make_etag
from exporter.http.ranges import FileVersion, Plan, http_date, plan_response

MTIME = 784111777.25  # Sun, 06 Nov 1994 08:49:37.25 GMT
LAST_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"
ETAG = '"abc-123"'
FILE = FileVersion(size=1000, mtime=MTIME, etag=ETAG)
EMPTY = FileVersion(size=0, mtime=MTIME, etag=ETAG)

VALIDATORS = {"ETag": ETAG, "Last-Modified": LAST_MODIFIED, "Accept-Ranges": "bytes"}


def plan(headers: dict[str, str], version: FileVersion = FILE) -> Plan:
    result = plan_response(version, headers)
    names = [name for name, _value in result.headers]
    assert len(names) == len(set(names)), "no header is decided twice"
    for name, value in VALIDATORS.items():
        assert dict(result.headers)[name] == value
    return result


def assert_whole(result: Plan, size: int = 1000) -> None:
    assert result.status == 200
    assert (result.start, result.length) == (0, size)
    headers = dict(result.headers)
    assert headers["Content-Length"] == str(size)
    assert "Content-Range" not in headers


def assert_partial(result: Plan, start: int, end: int, size: int = 1000) -> None:
    assert result.status == 206
    assert (result.start, result.length) == (start, end - start + 1)
    headers = dict(result.headers)
    assert headers["Content-Range"] == f"bytes {start}-{end}/{size}"
    assert headers["Content-Length"] == str(end - start + 1)


def assert_unsatisfiable(result: Plan, size: int = 1000) -> None:
    assert result.status == 416
    assert (result.start, result.length) == (0, 0)
    headers = dict(result.headers)
    assert headers["Content-Range"] == f"bytes */{size}"
    assert "Content-Length" not in headers  # the body (a problem document) is the caller's


def assert_not_modified(result: Plan) -> None:
    assert result.status == 304
    assert (result.start, result.length) == (0, 0)
    assert dict(result.headers) == VALIDATORS  # nothing else: no Content-Length


# --- make_etag, http_date ---------------------------------------------------------------


def test_make_etag_is_strong_quoted_hex() -> None:
    assert make_etag(255, 4096, 16) == '"ff-1000-10"'
    assert make_etag(255, 4096, 16, "-gz") == '"ff-1000-10-gz"'


def test_make_etag_differs_with_every_part() -> None:
    tags = {
        make_etag(1, 2, 3),
        make_etag(9, 2, 3),
        make_etag(1, 9, 3),
        make_etag(1, 2, 9),
        make_etag(1, 2, 3, "-gz"),
    }
    assert len(tags) == 5


@pytest.mark.parametrize("suffix", ['"', "-g z", "\t", "-\x7f"])
def test_make_etag_rejects_a_suffix_that_would_break_the_tag(suffix: str) -> None:
    with pytest.raises(ValueError):
        make_etag(1, 2, 3, suffix)


def test_http_date_is_imf_fixdate_floored_to_the_second() -> None:
    assert http_date(784111777) == LAST_MODIFIED
    assert http_date(784111777.999) == LAST_MODIFIED
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


# --- no conditionals --------------------------------------------------------------------


def test_plain_get_is_the_whole_file_with_validators() -> None:
    result = plan({})
    assert_whole(result)
    assert result.headers == (
        ("ETag", ETAG),
        ("Last-Modified", LAST_MODIFIED),
        ("Accept-Ranges", "bytes"),
        ("Content-Length", "1000"),
    )


def test_plain_get_of_an_empty_file() -> None:
    assert_whole(plan({}, EMPTY), size=0)


def test_unrelated_headers_are_ignored() -> None:
    assert_whole(plan({"accept": "text/csv", "if-match": '"other"'}))


# --- Range: satisfiable single ranges ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=0-499", 0, 499),
        ("bytes=500-999", 500, 999),
        ("bytes=999-999", 999, 999),
        ("bytes=0-999", 0, 999),
        ("bytes=500-", 500, 999),
        ("bytes=0-", 0, 999),
        ("bytes=999-", 999, 999),
        ("bytes=-1", 999, 999),
        ("bytes=-500", 500, 999),
        ("bytes=-1000", 0, 999),
        ("bytes=007-0010", 7, 10),  # leading zeros are still digits
    ],
)
def test_satisfiable_range(value: str, start: int, end: int) -> None:
    assert_partial(plan({"range": value}), start, end)


@pytest.mark.parametrize(
    ("value", "start", "end"),
    [
        ("bytes=500-1000", 500, 999),
        ("bytes=500-5000", 500, 999),
        ("bytes=0-" + "9" * 30, 0, 999),
        ("bytes=999-" + "9" * 5000, 999, 999),  # past int()'s string-conversion limit
    ],
)
def test_last_beyond_the_end_is_clipped(value: str, start: int, end: int) -> None:
    assert_partial(plan({"range": value}), start, end)


@pytest.mark.parametrize("suffix", ["1001", "100000", "9" * 30, "9" * 5000])
def test_suffix_longer_than_the_file_is_the_whole_file_as_206(suffix: str) -> None:
    assert_partial(plan({"range": f"bytes=-{suffix}"}), 0, 999)


def test_one_byte_file() -> None:
    one = FileVersion(size=1, mtime=MTIME, etag=ETAG)
    assert_partial(plan({"range": "bytes=0-0"}, one), 0, 0, size=1)
    assert_partial(plan({"range": "bytes=-5"}, one), 0, 0, size=1)
    assert_unsatisfiable(plan({"range": "bytes=1-"}, one), size=1)


# --- Range: unsatisfiable ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "bytes=1000-",
        "bytes=1000-1000",
        "bytes=1000-2000",
        "bytes=5000-",
        "bytes=-0",
        "bytes=-000",
        "bytes=" + "9" * 30 + "-",
        "bytes=" + "9" * 30 + "-" + "9" * 31,
        "bytes=" + "9" * 5000 + "-",
    ],
)
def test_unsatisfiable_range_is_416(value: str) -> None:
    assert_unsatisfiable(plan({"range": value}))


@pytest.mark.parametrize("value", ["bytes=0-0", "bytes=0-", "bytes=-1", "bytes=-0", "bytes=5-9"])
def test_any_range_of_an_empty_file_is_416(value: str) -> None:
    assert_unsatisfiable(plan({"range": value}, EMPTY), size=0)


# --- Range: malformed, ignored ----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes=,",
        "bytes= , ",
        "bytes=abc",
        "bytes=a-b",
        "bytes=0-b",
        "bytes=a-1",
        "bytes=5-1",
        "bytes=1-2-3",
        "bytes=--1",
        "bytes=-1-",
        "bytes=+1-2",
        "bytes=-+1",
        "bytes=1_0-20",
        "bytes=0x1-2",
        "bytes=1.5-2",
        "bytes=1 0-20",
        "bytes=\u0661-\u0662",  # Arabic-Indic digits are digits to str.isdigit, not to HTTP
        "bytes=\u00b2-",  # superscript two, likewise
        "bytes=0-1;",
        "bytes 0-1",
        "bytes:0-1",
        "items=0-1",
        "byte=0-1",
        "bytesx=0-1",
        "=0-1",
        "0-1",
        "bytes=" + "9" * 31 + "-" + "9" * 30,  # last < first, however large
    ],
)
def test_malformed_range_is_ignored(value: str) -> None:
    assert_whole(plan({"range": value}))


@pytest.mark.parametrize("value", ["bytes=abc", "items=0-1", "bytes=5-1", "bytes="])
def test_malformed_range_of_an_empty_file_is_a_plain_200(value: str) -> None:
    assert_whole(plan({"range": value}, EMPTY), size=0)


# Decision: optional whitespace (SP, HTAB) is tolerated around every token — the unit, "=",
# "-" and "," — and the unit is case-insensitive (RFC 9110 §14.1); whitespace *inside* a
# number is not.
@pytest.mark.parametrize(
    "value",
    [
        "bytes = 0-1",
        " bytes=0-1 ",
        "bytes=0 - 1",
        "bytes=\t0-1\t",
        "bytes= 0 -1 ",
        "Bytes=0-1",
        "BYTES=0-1",
        "bytes=0-1,",  # empty list elements are ignored (RFC 9110 §5.6.1.2)
        "bytes=, 0-1 ,,",
    ],
)
def test_whitespace_case_and_empty_elements_are_tolerated(value: str) -> None:
    assert_partial(plan({"range": value}), 0, 1)


def test_whitespace_around_a_suffix_is_tolerated() -> None:
    assert_partial(plan({"range": "bytes= - 10 "}), 990, 999)


# --- Range: several ranges --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "bytes=0-1,5-6",
        "bytes=0-1, 5-6",
        "bytes=0-0,-1",
        "bytes=0-1,0-1",  # even a repeated range
        "bytes=5000-,6000-",  # even if none is satisfiable
        "bytes=0-1,abc",  # a malformed list is ignored, also 200
        "bytes=0-1,5-1",
    ],
)
def test_several_ranges_are_answered_with_the_whole_file(value: str) -> None:
    assert_whole(plan({"range": value}))


# --- If-Range ---------------------------------------------------------------------------


@pytest.mark.parametrize("if_range", [ETAG, f" {ETAG} ", LAST_MODIFIED, f" {LAST_MODIFIED}"])
def test_matching_if_range_allows_the_range(if_range: str) -> None:
    assert_partial(plan({"range": "bytes=0-9", "if-range": if_range}), 0, 9)


@pytest.mark.parametrize(
    "if_range",
    [
        "Sunday, 06-Nov-94 08:49:37 GMT",  # RFC 850
        "Sun Nov  6 08:49:37 1994",  # asctime, implicitly GMT
        "Sun, 06 Nov 1994 09:49:37 +0100",  # the same instant in another zone
    ],
)
def test_if_range_date_in_other_http_date_forms(if_range: str) -> None:
    assert_partial(plan({"range": "bytes=0-9", "if-range": if_range}), 0, 9)


@pytest.mark.parametrize(
    "if_range",
    [
        '"other"',
        '"abc-12"',
        "W/" + ETAG,  # a weak tag never matches, even with the same opaque tag
        'W/"other"',
        "abc-123",  # unquoted
        '"abc-123',  # unterminated
        ETAG + ", " + ETAG,  # a list is not an entity tag
        ETAG + " junk",
        'w/"abc-123"',
        "Sun, 06 Nov 1994 08:49:36 GMT",  # one second older
        "Sun, 06 Nov 1994 08:49:38 GMT",  # one second newer: still not equal
        "Sun, 06 Nov 1995 08:49:37 GMT",
        "garbage",
        "",
        "*",
        "0",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 99999 08:49:37 GMT",
    ],
)
def test_non_matching_if_range_sends_the_whole_file(if_range: str) -> None:
    assert_whole(plan({"range": "bytes=0-9", "if-range": if_range}))


def test_if_range_never_matches_a_weak_etag_of_ours() -> None:
    weak = FileVersion(size=1000, mtime=MTIME, etag="W/" + ETAG)
    result = plan_response(weak, {"range": "bytes=0-9", "if-range": "W/" + ETAG})
    assert result.status == 200


def test_if_range_date_is_compared_at_whole_seconds() -> None:
    for mtime in (784111777.0, 784111777.5, 784111777.999):
        version = FileVersion(size=1000, mtime=mtime, etag=ETAG)
        result = plan({"range": "bytes=0-9", "if-range": LAST_MODIFIED}, version)
        assert_partial(result, 0, 9)


def test_non_matching_if_range_also_sends_the_whole_file_instead_of_416() -> None:
    assert_whole(plan({"range": "bytes=5000-", "if-range": '"other"'}))


def test_matching_if_range_with_an_unsatisfiable_range_is_416() -> None:
    assert_unsatisfiable(plan({"range": "bytes=5000-", "if-range": ETAG}))


def test_if_range_without_range_is_ignored() -> None:
    assert_whole(plan({"if-range": '"other"'}))
    assert_whole(plan({"if-range": ETAG}))


def test_matching_if_range_with_a_malformed_range_is_200() -> None:
    assert_whole(plan({"range": "bytes=abc", "if-range": ETAG}))


# --- If-None-Match ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        ETAG,
        f"  {ETAG}  ",
        "*",
        " * ",
        "W/" + ETAG,  # weak comparison: W/ on the request side is ignored
        f'"a", {ETAG}',
        f'"a",{ETAG},"b"',
        f'W/"a" , W/{ETAG}',
        f'"a",,{ETAG},',  # empty list elements are ignored
        f'"with,comma", {ETAG}',  # a comma inside an opaque tag does not split it
    ],
)
def test_if_none_match_hit_is_304(value: str) -> None:
    assert_not_modified(plan({"if-none-match": value}))


def test_if_none_match_ignores_a_weak_indicator_on_our_side_too() -> None:
    weak = FileVersion(size=1000, mtime=MTIME, etag="W/" + ETAG)
    assert plan_response(weak, {"if-none-match": ETAG}).status == 304
    assert plan_response(weak, {"if-none-match": "W/" + ETAG}).status == 304


@pytest.mark.parametrize(
    "value",
    [
        '"other"',
        '"abc-1234"',
        '"a", "b"',
        'W/"other"',
        "",
        "abc-123",  # unquoted: malformed, never matches
        f"{ETAG} junk",
        f'"a" {ETAG}',  # missing comma: malformed
        f"w/{ETAG}",  # the weakness indicator is case-sensitive
        f"*, {ETAG}",  # "*" only stands alone
        f'"unterminated, {ETAG}',
    ],
)
def test_if_none_match_miss_is_not_304(value: str) -> None:
    assert_whole(plan({"if-none-match": value}))


def test_if_none_match_hit_takes_precedence_over_range() -> None:
    assert_not_modified(plan({"if-none-match": ETAG, "range": "bytes=0-9"}))
    assert_not_modified(plan({"if-none-match": ETAG, "range": "bytes=5000-"}))


def test_if_none_match_miss_lets_the_range_through() -> None:
    assert_partial(plan({"if-none-match": '"other"', "range": "bytes=0-9"}), 0, 9)


def test_if_none_match_on_an_empty_file() -> None:
    assert_not_modified(plan({"if-none-match": ETAG}, EMPTY))


# --- If-Modified-Since ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        LAST_MODIFIED,  # equal, at whole seconds although mtime has a fraction
        "Sun, 06 Nov 1994 08:49:38 GMT",
        "Sun, 06 Nov 2044 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        f"  {LAST_MODIFIED}  ",
    ],
)
def test_if_modified_since_not_before_mtime_is_304(value: str) -> None:
    assert_not_modified(plan({"if-modified-since": value}))


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:36 GMT",
        "Sun, 06 Nov 1994 09:49:37 +0200",  # 07:49:37 GMT
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "Mon, 01 Jan 1900 00:00:00 +0100",
    ],
)
def test_if_modified_since_older_than_mtime_is_200(value: str) -> None:
    assert_whole(plan({"if-modified-since": value}))


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "",
        "0",
        "784111777",
        ETAG,
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "Sun, 06 Nov 99999 08:49:37 GMT",
    ],
)
def test_invalid_if_modified_since_is_ignored(value: str) -> None:
    assert_whole(plan({"if-modified-since": value}))


def test_if_modified_since_is_compared_at_whole_seconds() -> None:
    for mtime in (784111777.0, 784111777.5, 784111777.999):
        version = FileVersion(size=1000, mtime=mtime, etag=ETAG)
        assert_not_modified(plan({"if-modified-since": LAST_MODIFIED}, version))
    newer = FileVersion(size=1000, mtime=784111778.0, etag=ETAG)
    assert plan_response(newer, {"if-modified-since": LAST_MODIFIED}).status == 200


def test_if_none_match_takes_precedence_over_if_modified_since() -> None:
    # A miss on If-None-Match is a 200 even though the date alone would be a 304 ...
    assert_whole(plan({"if-none-match": '"other"', "if-modified-since": LAST_MODIFIED}))
    # ... and so is a malformed If-None-Match: present, it still overrides the date.
    assert_whole(plan({"if-none-match": "garbage", "if-modified-since": LAST_MODIFIED}))
    # A hit is a 304 even though the date alone would be a 200.
    old = "Thu, 01 Jan 1970 00:00:00 GMT"
    assert_not_modified(plan({"if-none-match": ETAG, "if-modified-since": old}))


def test_if_modified_since_304_takes_precedence_over_range() -> None:
    assert_not_modified(plan({"if-modified-since": LAST_MODIFIED, "range": "bytes=0-9"}))


def test_if_modified_since_miss_lets_the_range_through() -> None:
    older = "Sun, 06 Nov 1994 08:49:36 GMT"
    assert_partial(plan({"if-modified-since": older, "range": "bytes=0-9"}), 0, 9)


# --- properties -------------------------------------------------------------------------

_OWS = st.sampled_from(["", " ", "\t", "  "])
_NUMBER = st.one_of(
    st.integers(min_value=0, max_value=12000),
    st.integers(min_value=0, max_value=10**40),
)


@st.composite
def _single_range(draw: st.DrawFn) -> str:
    """Any syntactically valid single byte-range-spec, padded with allowed whitespace."""
    kind = draw(st.sampled_from(["first-last", "first-", "suffix"]))
    zeros = draw(st.sampled_from(["", "0", "000"]))
    if kind == "first-last":
        first = draw(_NUMBER)
        last = first + draw(_NUMBER)
        spec = f"{zeros}{first}{draw(_OWS)}-{draw(_OWS)}{last}"
    elif kind == "first-":
        spec = f"{zeros}{draw(_NUMBER)}{draw(_OWS)}-"
    else:
        spec = f"-{draw(_OWS)}{zeros}{draw(_NUMBER)}"
    unit = draw(st.sampled_from(["bytes", "Bytes", "BYTES"]))
    return f"{draw(_OWS)}{unit}{draw(_OWS)}={draw(_OWS)}{spec}{draw(_OWS)}"


@given(size=st.integers(min_value=0, max_value=10000), value=_single_range())
def test_a_valid_single_range_is_a_consistent_206_or_a_416(size: int, value: str) -> None:
    result = plan_response(FileVersion(size=size, mtime=MTIME, etag=ETAG), {"range": value})
    headers = dict(result.headers)
    assert headers["Accept-Ranges"] == "bytes"
    if result.status == 206:
        assert result.start >= 0
        assert result.length >= 1
        assert result.start + result.length <= size
        end = result.start + result.length - 1
        assert headers["Content-Range"] == f"bytes {result.start}-{end}/{size}"
        assert headers["Content-Length"] == str(result.length)
    else:
        assert result.status == 416
        assert headers["Content-Range"] == f"bytes */{size}"
        assert result.length == 0


@given(
    size=st.integers(min_value=0, max_value=10000),
    first=st.integers(min_value=0, max_value=20000),
    extra=st.integers(min_value=0, max_value=20000),
)
def test_first_last_matches_the_arithmetic(size: int, first: int, extra: int) -> None:
    last = first + extra
    result = plan_response(
        FileVersion(size=size, mtime=MTIME, etag=ETAG), {"range": f"bytes={first}-{last}"}
    )
    if first >= size:
        assert result.status == 416
    else:
        assert result.status == 206
        assert (result.start, result.length) == (first, min(last, size - 1) - first + 1)


@given(size=st.integers(min_value=0, max_value=10000), suffix=st.integers(0, 20000))
def test_suffix_matches_the_arithmetic(size: int, suffix: int) -> None:
    result = plan_response(
        FileVersion(size=size, mtime=MTIME, etag=ETAG), {"range": f"bytes=-{suffix}"}
    )
    if suffix == 0 or size == 0:
        assert result.status == 416
    else:
        assert result.status == 206
        assert (result.start, result.length) == (size - min(suffix, size), min(suffix, size))


_HEADER_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet='bytes=0123456789-, \t"W/*', max_size=40),
)


# too_slow: the first st.text() on a fresh machine builds Hypothesis's Unicode table.
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(min_value=0, max_value=10000),
    headers=st.dictionaries(
        st.sampled_from(["range", "if-range", "if-none-match", "if-modified-since"]),
        _HEADER_TEXT,
    ),
)
def test_no_header_value_crashes_and_plans_stay_coherent(
    size: int, headers: dict[str, str]
) -> None:
    result = plan_response(FileVersion(size=size, mtime=MTIME, etag=ETAG), headers)
    names = dict(result.headers)
    assert names["ETag"] == ETAG
    assert names["Last-Modified"] == LAST_MODIFIED
    assert names["Accept-Ranges"] == "bytes"
    assert result.status in {200, 206, 304, 416}
    if result.status == 200:
        assert (result.start, result.length) == (0, size)
        assert names["Content-Length"] == str(size)
    elif result.status == 304:
        assert "Content-Length" not in names
    elif result.status == 206:
        assert 0 <= result.start < result.start + result.length <= size
    else:
        assert names["Content-Range"] == f"bytes */{size}"
    if "range" not in headers:
        assert result.status in {200, 304}
