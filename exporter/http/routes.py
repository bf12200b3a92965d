"""The HTTP API's routes: a Quart blueprint over the job manager.

Handlers only translate: HTTP in → ``ExportRequest`` / export id → job manager → a JSON
document or a problem out. They find the services in the app (``services()``), so they
are plain module-level functions; ``exporter.http.app`` wires them up.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
from quart import Blueprint, Response, current_app, request
from werkzeug.routing import BaseConverter, ValidationError

from exporter.core.config import Settings
from exporter.core.datasets import Dataset
from exporter.core.errors import (
    DatasetNotFound,
    ExportNotFound,
    ExportStoreError,
    FieldError,
    NotReady,
    QueueUnavailable,
    RequestInvalid,
)
from exporter.core.files import UUID_PATTERN
from exporter.core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from exporter.core.metrics import Metrics
from exporter.core.model import ExportRequest, ExportStatus, JobView
from exporter.core.request import parse_dataset_request, parse_export_request
from exporter.http.documents import (
    DEFAULT_LIST_LIMIT,
    EVENT_INTERVAL,
    MAX_LIST_LIMIT,
    created_document,
    status_document,
)
from exporter.http.download import open_download
from exporter.http.openapi import openapi_document
from exporter.http.problems import problem, retry_later
from exporter.jobs.manager import JobManager

__all__ = ["ExportIdConverter", "Services", "add_dataset_routes", "routes", "services"]

# The status page at /: one static file, read once.
# How long /ready waits for the export store to answer before it says the store is down.
STORE_CHECK_SECONDS = 2.0
STATUS_PAGE = (Path(__file__).parent / "static" / "index.html").read_bytes()

routes = Blueprint("exports", __name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    """What the handlers use, kept in ``app.extensions`` by ``exporter.http.app``."""

    settings: Settings
    jobs: JobManager
    metrics: Metrics


def services() -> Services:
    """The services of the app handling the current request."""
    found: Services = current_app.extensions["exporter"]
    return found


class ExportIdConverter(BaseConverter):
    """``<export_id:…>``: a UUID v4 in canonical form, else the route does not match (404).

    Checked before anything else happens, so no other text ever reaches a file name.
    """

    regex = f"(?i:{UUID_PATTERN})"

    def to_python(self, value: str) -> uuid.UUID:
        export_id = uuid.UUID(value)
        if export_id.version != 4:
            raise ValidationError
        return export_id


async def _find(export_id: uuid.UUID) -> JobView:
    """The export's current view; ``ExportNotFound`` if there is none."""
    view = await services().jobs.view(export_id)
    if view is None:
        raise ExportNotFound(export_id)
    return view


@routes.get("/")
async def status_page() -> Response:
    """``GET /``: the status page."""
    return Response(STATUS_PAGE, content_type="text/html; charset=utf-8")


@routes.get("/ready")
async def ready() -> Response | dict[str, Any]:
    """Readiness: the job database answers and start-up recovery has run."""
    try:
        await services().jobs.queue.ping()
    except QueueUnavailable as error:
        current_app.logger.warning("not ready: %s", error)
        return retry_later(503, "Not ready", "the job database cannot be reached", database="down")
    storage = services().jobs.storage
    problem_with_store: str | None = None
    with trio.move_on_after(STORE_CHECK_SECONDS) as waited:
        try:
            await trio.to_thread.run_sync(storage.check, abandon_on_cancel=True)
        except ExportStoreError as error:
            problem_with_store = str(error)
    if waited.cancelled_caught:
        problem_with_store = f"{storage.description} did not answer within {STORE_CHECK_SECONDS} s"
    if problem_with_store is not None:
        current_app.logger.warning("not ready: %s", problem_with_store)
        return retry_later(503, "Not ready", problem_with_store, database="up", exportStore="down")
    if not services().jobs.recovered.is_set():
        detail = "looking at the export files left by earlier runs"
        return retry_later(503, "Not ready", detail, database="up", exportStore="up")
    return {"status": "ready", "database": "up", "exportStore": "up"}


@routes.get("/metrics")
async def prometheus_metrics() -> Response:
    """``GET /metrics``: the Prometheus text format, from memory."""
    return Response(services().metrics.exposition(), content_type=METRICS_CONTENT_TYPE)


@routes.get("/openapi.json")
async def openapi() -> dict[str, Any]:
    """``GET /openapi.json``: a path per declared dataset, with its columns' types once it
    has been resolved against the database (before, what the file declares). Built each
    time: it is cheap, and the datasets are resolved at some point after the start."""
    datasets = services().jobs.datasets
    if datasets is None:
        return openapi_document()
    if datasets.is_resolved:
        return openapi_document(list(datasets.values()))
    return openapi_document(datasets.specs)


async def _export_params(*, repeatable: bool = False) -> dict[str, object]:
    """Query parameters and a JSON body's, merged; a name in both must agree.

    ``repeatable``: a name given more than once in the query string (a dataset's filter
    on one column, ``total=gte.1&total=lt.9``) gives the list of its values; otherwise it
    is an error.
    """
    params: dict[str, object] = {}
    raw = await request.get_data(as_text=False)
    if raw:
        try:
            body = json.loads(raw)  # bytes: JSON's own UTF-8 rules, a clear error otherwise
        except ValueError:  # also UnicodeDecodeError
            body = None
        if not isinstance(body, dict):
            raise RequestInvalid(
                [FieldError("body", "must be a JSON object of parameters, or empty")]
            )
        params.update(body)
    conflicts = []
    for name in request.args:
        values = request.args.getlist(name)
        value: object = values[0] if len(values) == 1 else values
        if len(values) > 1 and not repeatable:
            conflicts.append(FieldError(name[:60], "must be given once"))
        elif name in params and params[name] != value:
            # Neither may silently win: the other might be the one the client meant.
            conflicts.append(
                FieldError(name[:60], "given differently in the query string and the body")
            )
        params[name] = value
    if conflicts:
        raise RequestInvalid(conflicts)
    return params


def _dataset(name: str) -> Dataset:
    """The dataset ``name``, resolved; ``NotReady`` before the database was reached."""
    datasets = services().jobs.datasets
    if datasets is not None and not datasets.is_resolved:
        raise NotReady("the datasets have not been resolved against the database yet")
    dataset = None if datasets is None else datasets.get(name)
    if dataset is None:
        raise DatasetNotFound(name)
    return dataset


@routes.post("/exports/csv")
async def create_export() -> Response:
    """``POST /exports/csv`` → 202 with where to follow the new export; 400 for a
    wrong parameter, 429 when the queue is full, 503 without the job database. The seed's
    form of an export of ``users``."""
    export_request = parse_export_request(await _export_params())
    if services().jobs.datasets is not None:
        _dataset(export_request.dataset)  # declared: a 404 otherwise
    return await _submit(export_request)


async def _submit(export_request: ExportRequest) -> Response:
    record = await services().jobs.submit(export_request)  # QueueFull: a 429
    body = created_document(record)
    return Response(
        json.dumps(body),
        status=202,
        content_type="application/json",
        headers={"Location": body["statusUrl"]},
    )


@routes.get("/exports")
async def list_exports() -> dict[str, Any]:
    """``GET /exports?limit=N``: the most recent exports, newest first."""
    raw = request.args.get("limit", str(DEFAULT_LIST_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise RequestInvalid(
            [FieldError("limit", f"must be a whole number from 1 to {MAX_LIST_LIMIT}")]
        )
    views = await services().jobs.recent(int(raw))
    return {"exports": [status_document(view) for view in views]}


@routes.get("/exports/<export_id:export_id>/status")
async def export_status(export_id: uuid.UUID) -> dict[str, Any]:
    """``GET /exports/{id}/status``; 404 for an unknown id."""
    return status_document(await _find(export_id))


@routes.route("/exports/<export_id:export_id>/download", methods=["GET", "HEAD"])
async def export_download(export_id: uuid.UUID) -> Response:
    """``GET|HEAD /exports/{id}/download``: the file (200, 206, 304, 416, or 307 to the
    store); 409 while the export runs, 410 once it cannot be had, 404 for an unknown id."""
    status = (await _find(export_id)).record.status
    if status.is_live:
        return problem(
            409,
            "Export not ready",
            f"the export is {status}; download it once completed",
            exportStatus=status,
        )
    if status != ExportStatus.COMPLETED:
        return _gone(f"the export is {status}; its file is not available", status)
    settings = services().settings
    answer = await open_download(
        services().jobs.storage,
        export_id,
        {name.lower(): value for name, value in request.headers.items()},
        request.method,
        redirect=settings.download_mode == "redirect",
        zero_copy=settings.zero_copy,
        metrics=services().metrics,
    )
    if answer is None:  # removed between the lookup and the open
        return _gone("the export's file is no longer available")
    return answer


def _gone(detail: str, status: ExportStatus | None = None) -> Response:
    extra = {} if status is None else {"exportStatus": status}
    return problem(410, "Export gone", detail, **extra)


@routes.get("/exports/<export_id:export_id>/events")
async def export_events(export_id: uuid.UUID) -> Response:
    """Server-Sent Events: ``progress`` a few times a second, then one ``status``.

    Each listener costs one task that reads the job's in-memory figures, nothing when
    nobody listens; a listener that leaves ends only its own stream.
    """
    view = await _find(export_id)
    jobs = services().jobs

    async def events() -> AsyncIterator[bytes]:
        current: JobView | None = view
        while current is not None:
            ended = current.record.status.is_final
            doc = json.dumps(status_document(current), separators=(",", ":"))
            yield f"event: {'status' if ended else 'progress'}\ndata: {doc}\n\n".encode()
            if ended:
                return
            with trio.move_on_after(EVENT_INTERVAL):
                await jobs.wait_for_end(export_id)
            current = await jobs.view(export_id)

    response = Response(events(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.timeout = None  # an export may run for many minutes
    return response


@routes.delete("/exports/<export_id:export_id>")
async def cancel_export(export_id: uuid.UUID) -> Response:
    """``DELETE /exports/{id}`` → 204 once stopped and its files removed; 404 if unknown."""
    if not await services().jobs.cancel(export_id):
        raise ExportNotFound(export_id)
    return Response(b"", status=204)


@routes.get("/datasets")
async def list_datasets() -> dict[str, Any]:
    """``GET /datasets``: every dataset, its columns and their types, filters and key."""
    datasets = services().jobs.datasets
    if datasets is not None and not datasets.is_resolved:
        raise NotReady("the datasets have not been resolved against the database yet")
    found = [] if datasets is None else list(datasets.values())
    row_source = services().settings.row_source
    return {"datasets": [dataset.describe(row_source) for dataset in found]}


def add_dataset_routes(app: Any, names: list[str]) -> None:
    """``GET /datasets/{name}`` and ``POST /datasets/{name}/exports`` for each declared
    dataset: paths of their own, so that the OpenAPI document can describe each one's
    columns and filters (and an unknown name is a plain 404)."""
    for name in names:

        async def describe(name: str = name) -> dict[str, Any]:
            return _dataset(name).describe(services().settings.row_source)

        async def create(name: str = name) -> Response:
            dataset = _dataset(name)
            params = await _export_params(repeatable=True)
            return await _submit(parse_dataset_request(dataset, params))

        app.add_url_rule(f"/datasets/{name}", f"dataset_{name}", describe, methods=["GET"])
        app.add_url_rule(
            f"/datasets/{name}/exports", f"dataset_{name}_exports", create, methods=["POST"]
        )
