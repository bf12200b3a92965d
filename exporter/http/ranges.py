"""How to answer a GET/HEAD of a static file: conditionals and byte ranges, pure, no I/O.

In the style of h11: this module only decides (status, which bytes, which headers); the
caller does the ``stat``, the sending and the method check. Keeping it sans-I/O lets the
whole of RFC 9110 §13 (conditional requests) and §14 (range requests) be unit tested
exhaustively without a server.

Order of evaluation is RFC 9110 §13.2.2: ``If-None-Match`` (or, only when absent,
``If-Modified-Since``) may answer 304 first; only then are ``If-Range`` and ``Range``
looked at. ``If-Match``/``If-Unmodified-Since`` are not part of the service's contract.

Where the rules leave room, this module prefers a full 200 over anything clever: a 200
with the whole file is always a correct answer, a wrong 304 or 206 corrupts the client's
copy. So anything malformed is ignored rather than rejected, and a malformed validator
never matches.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import math
from collections.abc import Mapping

from exporter.core.files import is_etag_text

__all__ = ["FileVersion", "Plan", "http_date", "plan_response"]

# Optional whitespace (RFC 9110 §5.6.3): space and horizontal tab only.
_OWS = " \t"


@dataclasses.dataclass(frozen=True, slots=True)
class FileVersion:
    """What the caller learnt from ``stat`` about the representation it would send."""

    size: int  # bytes of the representation (identity CSV, or the .csv.gz file)
    mtime: float  # st_mtime seconds
    etag: str  # a strong ETag *including* the double quotes, e.g. '"abc-123"'


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """The decided answer; the caller sends ``length`` bytes from ``start`` (none for HEAD)."""

    status: int  # 200, 206, 304, 416
    start: int = 0  # first byte to send (inclusive)
    length: int = 0  # number of bytes to send (0 for 304 and 416)
    # ETag, Last-Modified, Accept-Ranges always; then Content-Range (206, 416) and
    # Content-Length (200, 206: the bytes sent; a 304 must not claim a length it does not
    # send, and a 416's body, if any, is the caller's to measure).
    headers: tuple[tuple[str, str], ...] = ()


def http_date(timestamp: float) -> str:
    """IMF-fixdate, e.g. 'Sun, 06 Nov 1994 08:49:37 GMT'.

    Floored to the second, the same precision ``If-Modified-Since``/``If-Range`` are
    compared at, so a client echoing our Last-Modified back gets an exact match.
    """
    return email.utils.formatdate(math.floor(timestamp), usegmt=True)


def _parse_http_date(value: str) -> int | None:
    """Whole seconds since the epoch, or None when ``value`` is not a date.

    email.utils reads all three HTTP-date forms (IMF-fixdate, RFC 850, asctime) and is
    lenient beyond them; that leniency is harmless because zones are honoured. A date
    without a zone (asctime, or ``-0000``) is GMT, as every HTTP-date is.
    """
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip(_OWS))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.UTC)
        return math.floor(parsed.timestamp())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _parse_entity_tags(value: str) -> list[tuple[bool, str]] | None:
    """``#entity-tag`` as (weak, opaque-tag with its quotes); None when malformed.

    Scanned by hand rather than split on commas because an opaque tag may itself hold a
    comma. Empty list elements are skipped, as RFC 9110 §5.6.1.2 asks of recipients.
    """
    tags: list[tuple[bool, str]] = []
    i, end = 0, len(value)
    while True:
        while i < end and (value[i] in _OWS or value[i] == ","):
            i += 1
        if i == end:
            return tags
        weak = value.startswith("W/", i)  # case-sensitive: %s"W/"
        if weak:
            i += 2
        if i == end or value[i] != '"':
            return None
        close = value.find('"', i + 1)
        if close < 0 or not is_etag_text(value[i + 1 : close]):
            return None
        tags.append((weak, value[i : close + 1]))
        i = close + 1
        while i < end and value[i] in _OWS:
            i += 1
        if i < end and value[i] != ",":
            return None


def _opaque(etag: str) -> str:
    """The tag without a weakness indicator, for weak comparison (RFC 9110 §8.8.3.2)."""
    return etag[2:] if etag.startswith("W/") else etag


def _none_match(version: FileVersion, value: str) -> bool:
    """True when If-None-Match says the client's copy is current (weak comparison)."""
    if value.strip(_OWS) == "*":
        return True  # the file exists, so "any current representation" does
    tags = _parse_entity_tags(value)
    if not tags:  # malformed or empty: a false 304 is worse than a needless 200
        return False
    ours = _opaque(version.etag)
    return any(tag == ours for _weak, tag in tags)


def _modified_since(version: FileVersion, value: str) -> bool:
    """False only for a valid date at or after Last-Modified (whole-second precision)."""
    since = _parse_http_date(value)
    return since is None or since < math.floor(version.mtime)


def _if_range_matches(version: FileVersion, value: str) -> bool:
    """RFC 9110 §13.1.5: a strong entity-tag match, or a date equal to Last-Modified.

    A DQUOTE in the first three characters marks an entity tag (RFC 9110 §13.1.5);
    anything else must be a date. Weak tags never match: a range of a weakly-equal
    representation could splice bytes of two different files.
    """
    stripped = value.strip(_OWS)
    if '"' in stripped[:3]:
        tags = _parse_entity_tags(stripped)
        if tags is None or len(tags) != 1:
            return False
        weak, tag = tags[0]
        return not weak and not version.etag.startswith("W/") and tag == version.etag
    date = _parse_http_date(stripped)
    return date is not None and date == math.floor(version.mtime)


@dataclasses.dataclass(frozen=True, slots=True)
class _Spec:
    """One range-spec as canonical digit strings (no leading zeros, '0' for zero).

    Kept as text so that a 30-digit (or 5,000-digit, past ``int``'s conversion limit)
    position is compared and clipped exactly instead of crashing or overflowing.
    """

    first: str | None  # None for a suffix range, ``-n``
    last: str | None  # None for ``first-``; the suffix length for ``-n``


def _digits(text: str) -> str | None:
    """Canonical form of a 1*DIGIT token; None when it is not one (ASCII digits only)."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    return text.lstrip("0") or "0"


def _less(a: str, b: str) -> bool:
    """Numeric ``a < b`` on canonical digit strings, without converting them."""
    return (len(a), a) < (len(b), b)


def _capped(digits: str, cap: int) -> int:
    """``min(int(digits), cap)`` for a canonical digit string of any length."""
    if len(digits) > len(str(cap)):
        return cap
    return min(int(digits), cap)


def _parse_range(value: str) -> list[_Spec] | None:
    """RFC 9110 §14.1.1 ``ranges-specifier``; None when malformed (so: ignore it).

    Tolerated beyond the strict grammar, since being lenient costs nothing here: optional
    whitespace around ``=``, ``-`` and ``,``, and the unit's case (unit names are
    case-insensitive). Empty list elements are skipped (RFC 9110 §5.6.1.2).
    """
    unit, equals, rest = value.partition("=")
    if not equals or unit.strip(_OWS).lower() != "bytes":
        return None
    specs: list[_Spec] = []
    for element in rest.split(","):
        element = element.strip(_OWS)
        if not element:
            continue
        first_text, dash, last_text = element.partition("-")
        if not dash:
            return None
        first_text, last_text = first_text.strip(_OWS), last_text.strip(_OWS)
        last = _digits(last_text)
        if not first_text:  # suffix-range
            if last is None:
                return None
            specs.append(_Spec(None, last))
            continue
        first = _digits(first_text)
        if first is None or (last_text and (last is None or _less(last, first))):
            return None
        specs.append(_Spec(first, last))
    return specs or None


def _resolve(spec: _Spec, size: int) -> tuple[int, int] | None:
    """(start, length) of a range within ``size`` bytes; None when unsatisfiable."""
    if spec.first is None:
        assert spec.last is not None
        suffix = _capped(spec.last, size)  # a suffix longer than the file is all of it
        return (size - suffix, suffix) if suffix else None
    first = _capped(spec.first, size)
    if first >= size:
        return None
    last = size - 1 if spec.last is None else min(_capped(spec.last, size), size - 1)
    return first, last - first + 1


def plan_response(version: FileVersion, request_headers: Mapping[str, str]) -> Plan:
    """Decide the answer to a GET/HEAD of ``version``; header names are lower case.

    HEAD gets the same plan as GET (the caller just sends no body). RFC 9110 §14.2
    defines Range for GET only, so a caller wanting to be strict drops ``range`` for HEAD.
    """
    validators = (
        ("ETag", version.etag),
        ("Last-Modified", http_date(version.mtime)),
        ("Accept-Ranges", "bytes"),
    )
    size = version.size

    none_match = request_headers.get("if-none-match")
    if none_match is not None:
        # Present, even if malformed, it overrides If-Modified-Since (RFC 9110 §13.1.3).
        if _none_match(version, none_match):
            return Plan(304, headers=validators)
    else:
        since = request_headers.get("if-modified-since")
        if since is not None and not _modified_since(version, since):
            return Plan(304, headers=validators)

    whole = Plan(200, 0, size, (*validators, ("Content-Length", str(size))))
    range_value = request_headers.get("range")
    if range_value is None:
        return whole
    if_range = request_headers.get("if-range")
    if if_range is not None and not _if_range_matches(version, if_range):
        return whole
    specs = _parse_range(range_value)
    if specs is None or len(specs) != 1:
        return whole  # malformed is ignored; several ranges may be answered in full
    resolved = _resolve(specs[0], size)
    if resolved is None:
        return Plan(416, headers=(*validators, ("Content-Range", f"bytes */{size}")))
    start, length = resolved
    return Plan(
        206,
        start,
        length,
        (
            *validators,
            ("Content-Range", f"bytes {start}-{start + length - 1}/{size}"),
            ("Content-Length", str(length)),
        ),
    )
