"""Settings: one typed object, built once from the environment (12-factor).

No other module reads ``os.environ``; everything that can be tuned is a field here, and
the README lists each with its default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

from exporter.core.errors import SettingsError

__all__ = ["DOWNLOAD_MODES", "ROW_SOURCES", "SEND_TIMEOUT", "Settings"]

# The row sources (exporter.export.rows), named here so settings import nothing heavy.
ROW_SOURCES = ("cursor", "copy")
# Seconds a downloading client may accept no byte at all before it is dropped (SEND_TIMEOUT).
SEND_TIMEOUT = 120.0


DOWNLOAD_MODES = ("redirect", "proxy")
# A bucket name as S3 allows it (3-63 lower-case letters, digits, dots and hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the service, with its default; ``from_env`` reads them from the
    environment, each checked (``SettingsError`` names the variable and what it must be)."""

    # None: start the embedded PostgreSQL (exporter serve) under ``embedded_pg_dir``.
    database_url: str | None = None
    export_dir: Path = Path("exports")
    # Where export files live: a folder (EXPORT_DIR) or "s3://bucket/prefix", an
    # S3-compatible object store reached with the standard AWS_* settings.
    export_storage: str | None = None
    # Downloads from an object store: "redirect" (307 to a short-lived link into the
    # store) or "proxy" (this service streams the object, for stores clients cannot reach).
    download_mode: str = "redirect"
    bind: str = "127.0.0.1:8080"
    embedded_pg_dir: Path = Path(".pgdata")
    # Exports this process runs at once; 0: none (an API process beside workers).
    max_concurrent_exports: int = 2
    max_queued_exports: int = 100
    # Rows per FETCH from the server-side cursor, and batches the channel holds between the
    # cursor and the CSV writer. Together they bound the memory of a running export. The
    # fetch is the slow side: 10,000 rows a FETCH halve the round trips and thread hand-offs
    # of 5,000, and with nothing held in the channel (the reader hands its batch straight
    # to the writer) no more rows are in memory than before (bench/README.md).
    batch_rows: int = 10_000
    channel_batches: int = 0
    # Where rows come from: "cursor" (the server-side cursor, values encoded here) or
    # "copy" (PostgreSQL's COPY TO STDOUT writes the CSV lines; about half the CPU).
    row_source: str = "cursor"
    # How long a completed file is kept (seconds); expiresAt in the status tells users.
    export_ttl: float = 24 * 3600.0
    # How often the janitor looks for expired files (seconds).
    janitor_interval: float = 60.0
    # Write a gzip copy of each export while it runs, for Accept-Encoding: gzip downloads.
    gzip_exports: bool = True
    # Send downloads with os.sendfile where the transport allows (HTTP/1.1 cleartext);
    # off: always read the file in chunks (for comparison, or odd filesystems).
    zero_copy: bool = True
    # Seconds a downloading client may accept no byte at all before it is dropped.
    send_timeout: float = SEND_TIMEOUT
    # With a token, every /exports route needs "Authorization: Bearer <token>".
    api_token: str | None = dataclasses.field(default=None, repr=False)
    # "text" (readable) or "json" (one object a line, for log collectors).
    log_format: str = "text"
    # How often a running job's progress is written to export_jobs (seconds).
    progress_interval: float = 0.5
    # Worker processes `exporter serve` starts and supervises (0: it runs exports itself).
    workers: int = 0
    # How long a running job's owner holds it without renewing; after that, any process
    # may take it over and continue it from its last checkpoint.
    lease_seconds: float = 15.0
    # Starts of a job (the first, and one per takeover) before it is failed for good.
    max_attempts: int = 3
    # Seconds between a running export's checkpoints (files made durable, position saved).
    checkpoint_interval: float = 5.0
    # With --workers: worker i answers /health and /metrics on 127.0.0.1:(this + i).
    worker_metrics_port: int | None = None
    # The datasets file (TOML) naming what can be exported; None: the seed's users table.
    exporter_datasets: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        read = _Environment(os.environ if env is None else env)
        defaults = cls()
        integer, seconds, flag, choice = read.integer, read.seconds, read.flag, read.choice
        return cls(
            database_url=read.text("DATABASE_URL"),
            export_dir=Path(read.text("EXPORT_DIR") or defaults.export_dir),
            export_storage=_storage(read.text("EXPORT_STORAGE")),
            download_mode=choice("DOWNLOAD_MODE", defaults.download_mode, DOWNLOAD_MODES),
            bind=read.text("BIND") or defaults.bind,
            embedded_pg_dir=Path(read.text("EMBEDDED_PG_DIR") or defaults.embedded_pg_dir),
            max_concurrent_exports=integer(
                "MAX_CONCURRENT_EXPORTS", defaults.max_concurrent_exports, 0
            ),
            max_queued_exports=integer("MAX_QUEUED_EXPORTS", defaults.max_queued_exports, 0),
            batch_rows=integer("BATCH_ROWS", defaults.batch_rows, 1),
            channel_batches=integer("CHANNEL_BATCHES", defaults.channel_batches, 0),
            row_source=choice("ROW_SOURCE", defaults.row_source, ROW_SOURCES),
            gzip_exports=flag("GZIP_EXPORTS", defaults.gzip_exports),
            zero_copy=flag("ZERO_COPY", defaults.zero_copy),
            send_timeout=seconds("SEND_TIMEOUT", defaults.send_timeout),
            export_ttl=seconds("EXPORT_TTL", defaults.export_ttl),
            janitor_interval=seconds("JANITOR_INTERVAL", defaults.janitor_interval),
            api_token=read.text("API_TOKEN"),
            log_format=choice("LOG_FORMAT", defaults.log_format, ("text", "json")),
            progress_interval=seconds("PROGRESS_INTERVAL", defaults.progress_interval),
            workers=integer("WORKERS", defaults.workers, 0),
            lease_seconds=seconds("LEASE_SECONDS", defaults.lease_seconds),
            max_attempts=integer("MAX_ATTEMPTS", defaults.max_attempts, 1),
            checkpoint_interval=seconds("CHECKPOINT_INTERVAL", defaults.checkpoint_interval),
            worker_metrics_port=integer("WORKER_METRICS_PORT", 0, 1) or None,
            exporter_datasets=_path(read.text("EXPORTER_DATASETS")),
        )

    @property
    def storage(self) -> str | Path:
        """The export store: EXPORT_STORAGE, else the folder EXPORT_DIR."""
        if self.export_storage is None:
            return self.export_dir
        return self.export_storage if _is_bucket(self.export_storage) else Path(self.export_storage)

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True, slots=True)
class _Environment:
    """Typed reads of the environment, each failing with a ``SettingsError`` that names the
    variable, what it holds and what it must be. Empty counts as unset."""

    env: Mapping[str, str]

    def text(self, name: str) -> str | None:
        return self.env.get(name) or None

    def integer(self, name: str, default: int, minimum: int) -> int:
        raw = self.env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum}, got {value}")
        return value

    def seconds(self, name: str, default: float) -> float:
        raw = self.env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
        if value <= 0:
            raise SettingsError(f"{name} must be positive, got {raw!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = (self.env.get(name) or "").strip().lower()
        if raw == "":
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} must be 1/true/yes/on or 0/false/no/off, got {raw!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = (self.env.get(name) or "").strip().lower()
        if raw == "":
            return default
        if raw not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw


def _path(raw: str | None) -> Path | None:
    return None if raw is None else Path(raw)


def _is_bucket(where: str) -> bool:
    return where.startswith("s3://")


def _storage(raw: str | None) -> str | None:
    """EXPORT_STORAGE: a folder, or s3://bucket[/prefix] with a bucket name S3 accepts."""
    if raw is None or ("://" not in raw and not raw.startswith("s3:")):
        return raw  # a folder
    bucket = raw.removeprefix("s3://").partition("/")[0]
    if not _is_bucket(raw) or not _BUCKET.match(bucket):
        raise SettingsError(
            f"EXPORT_STORAGE must be a folder or s3://bucket/prefix (a bucket name of 3 to"
            f" 63 lower-case letters, digits, dots and hyphens), got {raw!r}"
        )
    return raw
