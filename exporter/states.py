"""The states an export goes through, named once for the store, the API, its OpenAPI
document, the status page's server and the command-line client (pure: no I/O, no imports
beyond the standard library, so the client can use it without the server stack)."""

from __future__ import annotations

import dataclasses
import enum


class ExportStatus(enum.StrEnum):
    """``pending`` → ``processing`` → ``completed`` | ``failed`` | ``cancelled``; a completed
    export becomes ``expired`` once its files are deleted after ``EXPORT_TTL``."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_live(self) -> bool:
        """Waiting or running: it may still change, and its file is not ready."""
        return self in LIVE_STATUSES

    @property
    def is_final(self) -> bool:
        return self not in LIVE_STATUSES


LIVE_STATUSES = frozenset({ExportStatus.PENDING, ExportStatus.PROCESSING})
FINAL_STATUSES = frozenset(ExportStatus) - LIVE_STATUSES


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a running export's files are durable: a takeover continues from here.

    ``rows`` rows of users with ``id <= last_id`` are in the first ``csv_bytes`` bytes of
    the CSV and the first ``gzip_bytes`` bytes of its gzip copy (where its deflate stream
    was flushed to a point it can be continued from; ``gzip_crc`` is the CRC-32 of the
    CSV's bytes so far, which the gzip trailer needs at the end).
    """

    rows: int
    last_id: int
    csv_bytes: int
    gzip_bytes: int
    gzip_crc: int = 0
