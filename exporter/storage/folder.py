"""Export files in one folder of the local (or a shared) filesystem (``EXPORT_DIR``).

Each file is written as ``<name>.part`` and renamed into place by ``commit`` (fsynced, the
folder too). Any file in the folder whose name is not an export's is never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from exporter.core.errors import CannotResume, ExportStoreError
from exporter.core.files import EXPORT_FILE, file_name, make_etag
from exporter.storage.base import ExportFile, RangeReader, StoredFile

__all__ = ["FolderStorage", "LocalFile", "PartFile"]


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
        return self.root / file_name(export_id, gzip=gzip)

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
            for partial in (False, True):
                (self.root / file_name(export_id, gzip=gzip, partial=partial)).unlink(
                    missing_ok=True
                )

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
