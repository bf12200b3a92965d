"""The export store's interface: where export files are written, read and removed.

An export writes two files, the CSV and (optionally) its gzip copy, through ``Sink``s: each
collects its bytes out of sight and makes them visible under the final name only on
``commit``, so a finished file is never partial and a failed one leaves nothing. Downloads
open the finished files (``StoredFile``); removal, expiry and start-up clean-up go through
the store too. The names are ``exporter.core.files``'.

``ExportStorage`` is what a store implements: ``exporter.storage.folder`` (a folder,
``EXPORT_DIR``) and ``exporter.storage.s3`` (an S3-compatible bucket). This module imports
neither; ``exporter.storage.open_storage`` chooses one. Every method blocks (disk or
network I/O): callers run them in a worker thread.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import BinaryIO, Protocol

__all__ = ["ExportFile", "ExportStorage", "RangeReader", "Sink", "StoredFile"]


class Sink(Protocol):
    """One export file being written. Called from one worker thread at a time."""

    def open(self, resume_at: int | None = None) -> None:
        """Start the file, or (``resume_at``) continue one left by an earlier attempt,
        cut back to its first ``resume_at`` bytes; ``CannotResume`` if that is not there."""
        ...

    def write(self, data: bytes) -> None: ...

    def sync(self) -> int | None:
        """Make what was written so far durable; returns how many bytes that is, or None
        when that cannot be done yet (an object store's parts have a minimum size)."""
        ...

    def close(self) -> None:
        """Stop writing and keep what was written, for a later attempt to continue."""
        ...

    def commit(self) -> int:
        """Make the file durable and visible under its final name; returns its size."""
        ...

    def discard(self) -> None:
        """Close and remove whatever was written; safe to call at any point, twice too."""
        ...


class StoredFile(Protocol):
    """A finished export file, opened for reading, with what validators are made from.

    Opening pins it: a file removed or replaced after ``open_finished`` is still read as
    it was (an open descriptor, or an object read with ``If-Match`` its tag).
    """

    size: int
    mtime: float
    # A strong ETag (quotes included): another whenever the file is replaced, and another
    # for the gzip copy than for the CSV.
    etag: str

    @property
    def file(self) -> BinaryIO | None:
        """The open local file (what ``os.sendfile`` sends), or None for a remote object."""
        ...

    def reader(self, start: int, length: int) -> RangeReader:
        """``length`` bytes from ``start``, read in pieces (blocking)."""
        ...

    def close(self) -> None: ...


class RangeReader(Protocol):
    """A range of a stored file, read in pieces."""

    def read(self, size: int) -> bytes:
        """Up to ``size`` more bytes of the range; empty once it is all read."""
        ...

    def close(self) -> None: ...


class ExportStorage(Protocol):
    """An export store: where export files are written, read and removed."""

    # How a sentence for users names the store, e.g. "the export store s3://exports/prod".
    description: str

    def prepare(self) -> None:
        """Make the store ready to take files (create the folder, check the bucket)."""
        ...

    def check(self) -> None:
        """``ExportStoreError`` unless the store can be reached now (for /ready)."""
        ...

    def link(self, export_id: uuid.UUID, *, gzip: bool = False) -> str | None:
        """A short-lived URL a client may GET the finished file from itself, or None
        when the store has none (a folder)."""
        ...

    def sink(self, export_id: uuid.UUID, *, gzip: bool = False) -> Sink:
        """Where the export's CSV (or its gzip copy) is written."""
        ...

    def open_finished(self, export_id: uuid.UUID, *, gzip: bool = False) -> StoredFile | None:
        """The finished file opened for reading, or None if there is none."""
        ...

    def remove(self, export_id: uuid.UUID) -> None:
        """Remove every file of the export, finished or partial."""
        ...

    def export_files(self) -> list[ExportFile]:
        """Every file of the store that belongs to an export."""
        ...

    def remove_file(self, file: ExportFile) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class ExportFile:
    """A file of the store that belongs to an export (finished or partial)."""

    export_id: uuid.UUID
    name: str
    partial: bool
    age_seconds: float  # since it was last written
