"""Where export files live: the export store's layout, and the one place that names it.

An export writes two files, the CSV and (optionally) its gzip copy, through ``Sink``s: each
collects its bytes out of sight and makes them visible under the final name only on
``commit``, so a finished file is never partial and a failed one leaves nothing. Downloads
open the finished files; removal, expiry and start-up clean-up go through here too.

``ExportStorage`` is the interface a store implements; ``FolderStorage`` keeps the files
in a folder (``EXPORT_DIR``)::

    <id>.csv            the finished CSV
    <id>.csv.gz         its gzip copy
    <id>.csv.part       the CSV being written (likewise <id>.csv.gz.part)

Any other file in the folder is not ours and is never touched. Every method blocks (disk
I/O): callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Protocol

from exporter.ranges import make_etag

EXPORT_FILE = re.compile(
    r"^(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"\.csv(?:\.gz)?(?P<part>\.part)?$"
)


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


class CannotResume(Exception):
    """An earlier attempt's partial file is missing or shorter than its checkpoint says."""


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
    def read(self, size: int) -> bytes:
        """Up to ``size`` more bytes of the range; empty once it is all read."""
        ...

    def close(self) -> None: ...


@dataclasses.dataclass(slots=True)
class LocalFile:
    """A finished file of a folder store, open for reading."""

    file: BinaryIO
    size: int
    mtime: float
    etag: str

    def reader(self, start: int, length: int) -> RangeReader:
        return _FileRange(self.file.fileno(), start, start + length)

    def close(self) -> None:
        self.file.close()


@dataclasses.dataclass(slots=True)
class _FileRange:
    fd: int
    offset: int
    end: int

    def read(self, size: int) -> bytes:
        chunk = os.pread(self.fd, min(size, self.end - self.offset), self.offset)
        if not chunk and self.offset < self.end:
            raise OSError("the file ended before its announced length")
        self.offset += len(chunk)
        return chunk

    def close(self) -> None:
        pass  # the descriptor is the LocalFile's


class ExportStoreError(OSError):
    """The export store failed or refused; the message is a sentence naming the store."""


class ExportStorage(Protocol):
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


class PartFile:
    """A file written as ``<final>.part`` and renamed into place only by ``commit``."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.part = final.with_name(final.name + ".part")
        self._file: BinaryIO | None = None

    def open(self, resume_at: int | None = None) -> None:
        if resume_at is None:
            # "x": never write over a file that is already there.
            self._file = open(self.part, "xb")  # noqa: SIM115 - closed by commit() or close()
            return
        try:
            file = open(self.part, "r+b")  # noqa: SIM115 - closed by commit() or close()
        except FileNotFoundError:
            raise CannotResume(f"{self.part.name} is not there") from None
        size = os.fstat(file.fileno()).st_size
        if size < resume_at:
            file.close()
            raise CannotResume(f"{self.part.name} holds {size} bytes, not {resume_at}")
        file.truncate(resume_at)  # what came after the checkpoint is written again
        file.seek(resume_at)
        self._file = file

    def write(self, data: bytes) -> None:
        assert self._file is not None, "write before open"
        self._file.write(data)

    def sync(self) -> int:
        assert self._file is not None, "sync before open"
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def commit(self) -> int:
        """Flush, fsync, rename into place and fsync the folder; returns the final size."""
        assert self._file is not None, "commit before open"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.part, self.final)
        _fsync_dir(self.final.parent)
        return self.final.stat().st_size

    def discard(self) -> None:
        try:
            self.close()
        finally:
            self.part.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable: without it a crash may forget the new name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_storage(where: str | Path) -> ExportStorage:
    """The export store ``where`` names: ``s3://bucket/prefix``, or a folder."""
    if isinstance(where, str) and where.startswith("s3://"):
        # Imported here: boto3 costs memory and start-up time a folder store does without.
        from exporter.object_storage import ObjectStorage

        return ObjectStorage(where)
    return FolderStorage(Path(where))


class FolderStorage:
    """Export files in one folder of the local (or a shared) filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"the export folder {root.name or root}"

    def check(self) -> None:
        if not self.root.is_dir():
            raise ExportStoreError(f"{self.description} is not there")

    def link(self, export_id: uuid.UUID, *, gzip: bool = False) -> str | None:
        return None

    def path(self, export_id: uuid.UUID, *, gzip: bool = False) -> Path:
        return self.root / f"{export_id}.csv{'.gz' if gzip else ''}"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def sink(self, export_id: uuid.UUID, *, gzip: bool = False) -> PartFile:
        return PartFile(self.path(export_id, gzip=gzip))

    def open_finished(self, export_id: uuid.UUID, *, gzip: bool = False) -> StoredFile | None:
        try:
            file = open(self.path(export_id, gzip=gzip), "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            return None
        try:
            stat = os.fstat(file.fileno())
        except BaseException:
            file.close()
            raise
        etag = make_etag(stat.st_size, stat.st_mtime_ns, stat.st_ino, "-gz" if gzip else "")
        return LocalFile(file, stat.st_size, stat.st_mtime, etag)

    def remove(self, export_id: uuid.UUID) -> None:
        for gzip in (False, True):
            final = self.path(export_id, gzip=gzip)
            final.unlink(missing_ok=True)
            final.with_name(final.name + ".part").unlink(missing_ok=True)

    def export_files(self) -> list[ExportFile]:
        found = []
        now = time.time()
        for path in self.root.iterdir():
            match = EXPORT_FILE.match(path.name)
            if match is None:
                continue  # not ours: never delete what we did not write
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                age = now - path.stat().st_mtime
                export_id = uuid.UUID(match["id"])
                found.append(ExportFile(export_id, path.name, bool(match["part"]), age))
        return found

    def remove_file(self, file: ExportFile) -> None:
        (self.root / file.name).unlink(missing_ok=True)
