"""The JSON documents the API answers with about an export: pure, from a ``JobView``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from exporter.core.model import ExportStatus, JobRecord, JobView

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "EVENT_INTERVAL",
    "MAX_LIST_LIMIT",
    "created_document",
    "download_url",
    "status_document",
    "status_url",
]

# GET /exports: how many recent exports it lists, by default and at most.
DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT = 20, 100
# Seconds between progress events on GET /exports/{id}/events (four a second).
EVENT_INTERVAL = 0.25


def status_url(export_id: object) -> str:
    """Where an export's status is."""
    return f"/exports/{export_id}/status"


def download_url(export_id: object) -> str:
    """Where an export's file is downloaded from."""
    return f"/exports/{export_id}/download"


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def created_document(record: JobRecord) -> dict[str, Any]:
    """The 202's body: where to follow the new export."""
    return {
        "exportId": str(record.id),
        "status": record.status,
        "statusUrl": status_url(record.id),
        "downloadUrl": download_url(record.id),
    }


def _percentage(record: JobRecord) -> float:
    if record.status == ExportStatus.COMPLETED:
        return 100.0
    if record.total_rows:
        # 100 means done; a running export whose estimate was low stays just under it.
        return min(round(record.processed_rows * 100 / record.total_rows, 1), 99.9)
    return 0.0


def _eta(view: JobView) -> float | None:
    record = view.record
    if record.status == ExportStatus.COMPLETED:
        return 0.0
    if record.status == ExportStatus.PROCESSING and view.rows_per_second and record.total_rows:
        return round(max(record.total_rows - record.processed_rows, 0) / view.rows_per_second, 1)
    return None


def status_document(view: JobView) -> dict[str, Any]:
    """What ``GET /exports/{id}/status`` answers (and each server-sent event carries)."""
    record = view.record
    rate = view.rows_per_second
    doc: dict[str, Any] = {
        "exportId": str(record.id),
        "status": record.status,
        "progress": {
            "processedRows": record.processed_rows,
            "totalRows": record.total_rows,
            "percentage": _percentage(record),
            "bytesWritten": record.bytes_written,
            "rowsPerSecond": None if rate is None else round(rate, 1),
            "etaSeconds": _eta(view),
        },
        "request": record.request.to_json(),
        "dataset": record.request.dataset,
        "filters": [str(f) for f in record.request.all_filters],
        "error": record.error,
        "createdAt": _iso(record.created_at),
        "startedAt": _iso(record.started_at),
        "completedAt": _iso(record.completed_at),
        "expiresAt": _iso(record.expires_at),
        "statusUrl": status_url(record.id),
        # Starts so far (the first, and one per takeover after its process died), and the
        # rows the current start continued after (null: it started from the first row).
        "attempt": record.attempt,
        "resumedFromRows": record.resumed_from_rows,
    }
    if record.status == ExportStatus.COMPLETED:
        doc["fileSize"] = record.file_size
        doc["downloadUrl"] = download_url(record.id)
    if record.status == ExportStatus.PENDING:
        doc["queuePosition"] = view.queue_position
    return doc
