"""How an export's files are named and described, wherever they live (pure).

An export's id is a UUID v4; its files are named after it::

    <id>.csv            the finished CSV
    <id>.csv.gz         its gzip copy
    <id>.csv.part       the CSV being written (likewise <id>.csv.gz.part)

The same names are a folder's file names and an object store's keys (under its prefix),
and a download, from the service or straight from an object store, carries the same
headers.
"""

from __future__ import annotations

import re
import uuid

__all__ = [
    "EXPORT_FILE",
    "UUID_PATTERN",
    "download_headers",
    "file_name",
    "is_etag_text",
    "make_etag",
]

# A UUID in canonical form, as str(uuid.UUID) writes it.
UUID_PATTERN = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# A name of one of an export's files; any other name is not ours and is never touched.
EXPORT_FILE = re.compile(rf"^(?P<id>{UUID_PATTERN})\.csv(?:\.gz)?(?P<part>\.part)?$")


def file_name(export_id: uuid.UUID, *, gzip: bool = False, partial: bool = False) -> str:
    """``<id>.csv``, ``<id>.csv.gz``, and with ``partial`` the same ending in ``.part``."""
    return f"{export_id}.csv{'.gz' if gzip else ''}{'.part' if partial else ''}"


def download_headers(export_id: uuid.UUID, *, gzip: bool = False) -> dict[str, str]:
    """The headers a download of the export's CSV (or its gzip copy) carries."""
    headers = {
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="export_{export_id}.csv"',
        # User data: no shared caches; and no proxy may recompress what Range counts in.
        "Cache-Control": "private, no-transform",
    }
    if gzip:
        headers["Content-Encoding"] = "gzip"
    return headers


def is_etag_text(text: str) -> bool:
    """RFC 9110 §8.8.3 etagc: %x21 / %x23-7E / obs-text — anything visible but a DQUOTE."""
    return all(c == "!" or "#" <= c <= "~" or c >= "\x80" for c in text)


def make_etag(size: int, mtime_ns: int, inode: int, suffix: str = "") -> str:
    """A strong ETag from the file's identity, e.g. '"<hex>-<hex>-<hex><suffix>"'.

    Size, nanosecond mtime and inode change whenever the file is rewritten or replaced
    (exports are written to a temporary file and renamed), which is what makes the tag
    strong enough for byte ranges. ``suffix`` (e.g. ``'-gz'``) keeps the gzip
    representation's tag distinct from the identity one, as RFC 9110 §8.8.3 requires.
    """
    if not is_etag_text(suffix):
        raise ValueError(f"an ETag suffix cannot hold {suffix!r}")
    return f'"{size:x}-{mtime_ns:x}-{inode:x}{suffix}"'
