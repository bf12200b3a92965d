"""The model: what an export is, named once for the queue, the pipeline, the API, its
OpenAPI document and the command-line client (pure: no I/O, no imports beyond the standard
library, so the client can use it without the server stack).

- ``ExportRequest``: a validated request (``exporter.core.request`` makes one);
- ``ExportStatus``: the states a job goes through;
- ``JobRecord``: one job as the queue holds it, ``JobView`` as the API shows it;
- ``Progress``: a running export's live figures; ``Checkpoint``: how far its files are
  durable.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FINAL_STATUSES",
    "LIVE_STATUSES",
    "TIERS",
    "USER_COLUMNS",
    "Checkpoint",
    "ExportRequest",
    "ExportStatus",
    "Filter",
    "JobRecord",
    "JobView",
    "Progress",
    "utcnow",
]

# The users table's columns in table order: the allow-list for `columns`.
USER_COLUMNS: tuple[str, ...] = (
    "id",
    "name",
    "email",
    "signup_date",
    "country_code",
    "subscription_tier",
    "lifetime_value",
)
TIERS: tuple[str, ...] = ("free", "pro", "enterprise")


def utcnow() -> dt.datetime:
    """Now, in UTC (aware)."""
    return dt.datetime.now(dt.UTC)


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

    ``rows`` rows, every one with a key up to ``last_key`` (the key's values as
    PostgreSQL's text), are in the first ``csv_bytes`` bytes of the CSV and the first
    ``gzip_bytes`` bytes of its gzip copy (where its deflate stream was flushed to a point
    it can be continued from; ``gzip_crc`` is the CRC-32 of the CSV's bytes so far, which
    the gzip trailer needs at the end).

    ``last_id``: the same, for a key that is one integer column (as ``users.id``); given
    alone, it is the key.
    """

    rows: int
    last_id: int | None = None
    csv_bytes: int = 0
    gzip_bytes: int = 0
    gzip_crc: int = 0
    last_key: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.last_key and self.last_id is not None:
            object.__setattr__(self, "last_key", (str(self.last_id),))
        elif self.last_id is None and len(self.last_key) == 1 and _is_integer(self.last_key[0]):
            object.__setattr__(self, "last_id", int(self.last_key[0]))


def _is_integer(text: str) -> bool:
    return text.lstrip("-").isdigit() and len(text) < 20


@dataclasses.dataclass(frozen=True, slots=True)
class Filter:
    """One filter of an export: ``column operator value``, PostgREST's ``col=op.value``.

    ``value`` is the text of a value already parsed by the column's type (a tuple of them
    for ``in``; ``null``, ``not_null``, ``true`` or ``false`` for ``is``). ``negated``:
    PostgREST's ``not.`` in front of the operator.
    """

    column: str
    operator: str
    value: str | tuple[str, ...]
    negated: bool = False

    def __str__(self) -> str:
        value = self.value
        if isinstance(value, tuple):
            value = "(" + ",".join(_list_item(v) for v in value) + ")"
        return f"{self.column}={'not.' if self.negated else ''}{self.operator}.{value}"

    def to_json(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {
            "column": self.column,
            "operator": self.operator,
            "value": value,
            "not": self.negated,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Filter:
        value = data["value"]
        value = tuple(value) if isinstance(value, list) else value
        return cls(data["column"], data["operator"], value, bool(data.get("not")))


def _list_item(value: str) -> str:
    """An ``in`` list's item, quoted as PostgREST reads it where it must be."""
    if value and not any(c in value for c in ',()"\\ '):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wire(name: str, default: Any) -> Any:
    """A request field whose name on the wire (query string, JSON, the stored request) is
    ``name`` rather than the field's own."""
    return dataclasses.field(default=default, metadata={"wire": name})


@dataclasses.dataclass(frozen=True, slots=True)
class ExportRequest:
    """A validated export: which dataset, which of its rows and columns, the CSV dialect.

    The seed's form (``POST /exports/csv``) sets ``country_code`` and
    ``subscription_tier`` of the ``users`` dataset; any dataset's form sets ``filters``
    (and a saved query's ``params``). ``all_filters`` is both as one list. The defaults
    here are the parameters' defaults.
    """

    country_code: str | None = None
    subscription_tier: str | None = None
    columns: tuple[str, ...] = USER_COLUMNS
    delimiter: str = ","
    quote_char: str = _wire("quoteChar", '"')
    # OWASP CSV-injection defence: prefix values that start like a formula with '.
    neutralize_formulas: bool = _wire("neutralizeFormulas", False)
    dataset: str = "users"
    filters: tuple[Filter, ...] = ()
    params: tuple[tuple[str, str], ...] = ()  # a saved query's parameters, as text

    @staticmethod
    def wire_name(field: str) -> str:
        """The name a field has in the API (``quote_char`` → ``quoteChar``)."""
        return str(_FIELDS[field].metadata.get("wire", field))

    @property
    def all_filters(self) -> tuple[Filter, ...]:
        """Every filter, the seed's form's two as ``eq`` filters."""
        legacy = (
            Filter(name, "eq", value)
            for name, value in (
                ("country_code", self.country_code),
                ("subscription_tier", self.subscription_tier),
            )
            if value is not None
        )
        return (*legacy, *self.filters)

    @property
    def is_seed_form(self) -> bool:
        """Said entirely in the seed's form: the ``users`` dataset, no other filters."""
        return self.dataset == "users" and not self.filters and not self.params

    def to_json(self) -> dict[str, Any]:
        """The request as the API shows it (and as export_jobs stores it); the seed's form
        has exactly its own names."""
        doc: dict[str, Any] = {self.wire_name(f): getattr(self, f) for f in _SEED_FORM}
        doc["columns"] = list(self.columns)
        if not self.is_seed_form:
            doc["dataset"] = self.dataset
            doc["filters"] = [f.to_json() for f in self.filters]
            doc["params"] = dict(self.params)
        return doc

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExportRequest:
        """Rebuild a stored request; it was validated when it was accepted."""
        values = {
            name: data[cls.wire_name(name)]
            for name in _SEED_FORM
            if data.get(cls.wire_name(name)) is not None
        }
        if "columns" in values:
            values["columns"] = tuple(values["columns"])
        if "dataset" in data:
            values["dataset"] = data["dataset"]
            values["filters"] = tuple(Filter.from_json(f) for f in data.get("filters", ()))
            values["params"] = tuple(dict(data.get("params", {})).items())
        return cls(**values)


_FIELDS = {field.name: field for field in dataclasses.fields(ExportRequest)}
# The fields of the seed's form, in the order its stored requests have always had them.
_SEED_FORM = tuple(_FIELDS)[:6]


@dataclasses.dataclass(slots=True)
class Progress:
    """Figures of a running export, updated by the pipeline and read by anyone.

    Only trio tasks write them (never the worker threads), so no lock is needed.
    """

    total_rows: int | None = None
    processed_rows: int = 0
    bytes_written: int = 0
    batches_fetched: int = 0
    batches_written: int = 0
    started_at: float | None = None  # time.monotonic() when rows began to flow


@dataclasses.dataclass(slots=True)
class JobRecord:
    """One export as ``export_jobs`` holds it (and as the status endpoint shows it)."""

    id: uuid.UUID
    request: ExportRequest
    status: ExportStatus = ExportStatus.PENDING
    error: str | None = None
    processed_rows: int = 0
    total_rows: int | None = None
    bytes_written: int = 0
    file_size: int | None = None
    created_at: dt.datetime = dataclasses.field(default_factory=lambda: utcnow())
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    # The queue's columns: who runs it, which attempt this is, how far it got durably.
    owner: str | None = None
    attempt: int = 0
    cancel_requested: bool = False
    checkpoint: Checkpoint | None = None
    resumed_from_rows: int | None = None

    def take_progress(self, progress: Progress) -> None:
        """The live figures into the record (what the queue saves and the API shows)."""
        self.processed_rows = progress.processed_rows
        self.bytes_written = progress.bytes_written
        self.total_rows = progress.total_rows

    @property
    def duration(self) -> float | None:
        """Seconds from the first start to the end, once it ended."""
        if self.started_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.started_at).total_seconds()

    @property
    def final_rate(self) -> float | None:
        """Rows a second over the whole run, once it ended."""
        took = self.duration
        return self.processed_rows / took if took else None

    @property
    def running_rate(self) -> float | None:
        """Rows a second since it first started, while it runs (elsewhere: from the figures
        its owner saved last)."""
        if self.status != ExportStatus.PROCESSING or self.started_at is None:
            return None
        elapsed = (utcnow() - self.started_at).total_seconds()
        return self.processed_rows / elapsed if elapsed > 0 else None


@dataclasses.dataclass(frozen=True, slots=True)
class JobView:
    """What the status endpoint shows: the record, fresh figures, the queue position."""

    record: JobRecord
    queue_position: int | None = None
    rows_per_second: float | None = None
