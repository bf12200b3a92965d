"""The export's two files as they are written: the CSV, and its gzip copy made on the way.

``Outputs`` owns both from start to end: opening them (or continuing them at a
checkpoint), the order they are committed in, and what happens to them when the export
does not complete (discarded, or kept for a later attempt). Each method blocks (disk or
network I/O): the pipeline calls them in worker threads.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Sequence

from isal import isal_zlib

from exporter.core.errors import CannotResume
from exporter.core.model import Checkpoint
from exporter.export.csvfmt import Dialect, encode_header, encode_rows
from exporter.export.rows import Batch, CopyBlock
from exporter.storage.base import Sink

__all__ = ["CsvOutput", "GzipOutput", "Outputs"]

# isal's default level: its best speed for its size here (level 3 halves the speed for
# a 1% smaller file). Raw deflate: the gzip header and trailer are GzipOutput's own.
GZIP_LEVEL = isal_zlib.ISAL_DEFAULT_COMPRESSION
RAW_DEFLATE = -15
# RFC 1952: magic, deflate, no flags, no modification time, no extra flags, unknown OS.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


class CsvOutput:
    """The export's CSV going into its sink: rows are encoded here, in the writer's thread."""

    def __init__(self, sink: Sink, dialect: Dialect) -> None:
        self.sink = sink
        self.dialect = dialect

    def open_with_header(self, columns: Sequence[str]) -> bytes:
        self.sink.open()
        header = encode_header(columns, self.dialect)
        self.sink.write(header)
        return header

    def resume(self, at: int) -> None:
        self.sink.open(resume_at=at)

    def write_boxed(self, box: list[Batch]) -> bytes:
        """Encode (unless COPY did) and write ``box.pop()``; returns the CSV bytes (for the
        gzip copy). The batch is popped here so that it is freed in this worker thread."""
        batch = box.pop()
        data = batch.data if isinstance(batch, CopyBlock) else encode_rows(batch, self.dialect)
        self.sink.write(data)
        return data


class GzipOutput:
    """The gzip copy of the CSV, made while the export runs so downloads need not compress.

    isal's igzip deflate: about 4 times zlib's speed at a like ratio, and it releases the
    GIL while it works, so it runs beside the CSV writer on the other core.

    One gzip member, whatever happens: the header is written here, the body is raw deflate,
    and the trailer (CRC-32 and length of the CSV) is written at the end from figures kept
    here. A checkpoint is a full flush: the deflate stream is byte-aligned there and owes
    nothing to what came before, so a later attempt can cut the file there and go on with
    a compressor of its own, given the CRC so far (kept in the checkpoint). Some clients
    (curl --compressed, httpx) read only the first member of a multi-member gzip file.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._deflate = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, RAW_DEFLATE)
        self.crc = 0
        self.size = 0

    def open(self, resume: Checkpoint | None = None) -> None:
        if resume is None:
            self.sink.open()
            self.sink.write(GZIP_HEADER)
            return
        self.sink.open(resume_at=resume.gzip_bytes)
        self.crc, self.size = resume.gzip_crc, resume.csv_bytes

    def write(self, data: bytes) -> None:
        self.crc = isal_zlib.crc32(data, self.crc)
        self.size += len(data)
        self.sink.write(self._deflate.compress(data))

    def checkpoint(self) -> int | None:
        """Flush the deflate stream to a point a later attempt can continue from, and make
        the file durable up to there; returns its length (None: not durable yet)."""
        self.sink.write(self._deflate.flush(isal_zlib.Z_FULL_FLUSH))
        return self.sink.sync()

    def commit(self) -> int:
        self.sink.write(self._deflate.flush(isal_zlib.Z_FINISH))
        self.sink.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))
        return self.sink.commit()


class Outputs:
    """The export's CSV and (with a gzip sink) its gzip copy, from opening to the end.

    ``keep_partial``: an export that does not complete keeps what it wrote, for a later
    attempt to continue from its checkpoint (the job manager's exports); otherwise its
    files are removed.
    """

    def __init__(
        self, csv: Sink, gzip: Sink | None, dialect: Dialect, *, keep_partial: bool
    ) -> None:
        self.csv = CsvOutput(csv, dialect)
        self.gzip = None if gzip is None else GzipOutput(gzip)
        self.keep_partial = keep_partial
        self.committed = False

    def open(self, columns: Sequence[str], resume: Checkpoint | None) -> bytes:
        """Open the files, or continue them at ``resume``; returns the header written
        (nothing when continuing). ``CannotResume`` if the files are not as it says."""
        if resume is None:
            if self.gzip is not None:
                self.gzip.open()
            return self.csv.open_with_header(columns)
        if self.gzip is not None:
            if not resume.gzip_bytes:
                raise CannotResume("the checkpoint has no gzip copy to continue")
            self.gzip.open(resume)
        self.csv.resume(resume.csv_bytes)
        return b""

    def commit(self) -> int:
        """Put both files in place, the gzip copy first: once the CSV is there, everything
        is. Returns the CSV's size."""
        if self.gzip is not None:
            self.gzip.commit()
        size = self.csv.sink.commit()
        self.committed = True
        return size

    def end(self) -> None:
        """Unless committed: close the files for a later attempt (``keep_partial``), or
        remove them. Safe to call at any point."""
        if self.committed:
            return
        for sink in (self.csv.sink, None if self.gzip is None else self.gzip.sink):
            if sink is not None:
                # A full disk may fail the close's last flush: the next sink is ended
                # all the same.
                with contextlib.suppress(OSError):
                    (sink.close if self.keep_partial else sink.discard)()
