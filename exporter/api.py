"""The HTTP API (SPEC §3): a Quart-Trio app over the job manager.

Handlers only translate: HTTP in → ``ExportRequest`` / job id → job manager → JSON or a
problem document out. Errors are ``application/problem+json`` (RFC 9457) with no stack
trace and no SQL in them.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import trio
from hypercorn.typing import ASGISendCallable
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import HTTPException

from exporter.config import Settings
from exporter.download import FileResponse, open_download
from exporter.jobs import JobManager, JobView, QueueFull
from exporter.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from exporter.metrics import Metrics
from exporter.openapi import openapi_document
from exporter.ranges import Plan
from exporter.request import FieldError, RequestInvalid, parse_export_request
from exporter.store import JobStore

log = logging.getLogger(__name__)

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

PROBLEM_TYPE = "about:blank"
RETRY_AFTER_SECONDS = 10
# GET /exports: how many recent exports, by default and at most.
DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT = 20, 100
# Seconds between progress events on /exports/{id}/events.
EVENT_INTERVAL = 0.25
# The status page at /: one static file, read once.
STATUS_PAGE = (Path(__file__).parent / "static" / "index.html").read_bytes()
# Bigger request bodies than this are refused before they are read: parameters are tiny.
MAX_BODY_BYTES = 64 * 1024


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    body = {"type": PROBLEM_TYPE, "title": title, "status": status, "detail": detail, **extra}
    return Response(json.dumps(body), status=status, content_type="application/problem+json")


def validation_problem(errors: list[FieldError]) -> Response:
    return problem(
        400,
        "Invalid export request",
        "; ".join(f"{e.param}: {e.message}" for e in errors),
        errors=[{"param": e.param, "message": e.message} for e in errors],
    )


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def status_document(view: JobView) -> dict[str, Any]:
    """The status JSON of a job (SPEC §3 GET /exports/{id}/status)."""
    record = view.record
    completed = record.status == "completed"
    total = record.total_rows
    if completed:
        percentage = 100.0
    elif total:
        # 100 means done; a running export whose estimate was low stays just under it.
        percentage = min(round(record.processed_rows * 100 / total, 1), 99.9)
    else:
        percentage = 0.0
    eta: float | None = None
    if completed:
        eta = 0.0
    elif record.status == "processing" and view.rows_per_second and total:
        eta = round(max(total - record.processed_rows, 0) / view.rows_per_second, 1)
    job_id = str(record.id)
    doc: dict[str, Any] = {
        "exportId": job_id,
        "status": record.status,
        "progress": {
            "processedRows": record.processed_rows,
            "totalRows": total,
            "percentage": percentage,
            "bytesWritten": record.bytes_written,
            "rowsPerSecond": (
                None if view.rows_per_second is None else round(view.rows_per_second, 1)
            ),
            "etaSeconds": eta,
        },
        "request": record.request.to_json(),
        "error": record.error,
        "createdAt": _iso(record.created_at),
        "startedAt": _iso(record.started_at),
        "completedAt": _iso(record.completed_at),
        "expiresAt": _iso(record.expires_at),
        "statusUrl": f"/exports/{job_id}/status",
    }
    if completed:
        doc["fileSize"] = record.file_size
        doc["downloadUrl"] = f"/exports/{job_id}/download"
    if record.status == "pending":
        doc["queuePosition"] = view.queue_position
    return doc


def _job_id(raw: str) -> uuid.UUID | None:
    """The id if it is a uuid4 in canonical form; anything else is simply not found."""
    try:
        job_id = uuid.UUID(raw)
    except ValueError:
        return None
    return job_id if job_id.version == 4 and str(job_id) == raw.lower() else None


def _not_found(raw: str) -> Response:
    return problem(404, "Export not found", f"there is no export with id {raw[:80]!r}")


async def _export_params() -> dict[str, object] | Response:
    """Query parameters and a JSON body's, merged; a name in both must agree."""
    params: dict[str, object] = {}
    raw = await request.get_data(as_text=False)
    if raw:
        try:
            body = json.loads(raw)  # bytes: JSON's own UTF-8 rules, a clear error otherwise
        except ValueError:  # also UnicodeDecodeError
            body = None
        if not isinstance(body, dict):
            return validation_problem(
                [FieldError("body", "must be a JSON object of parameters, or empty")]
            )
        params.update(body)
    conflicts = []
    for name in request.args:
        values = request.args.getlist(name)
        if len(values) > 1:
            conflicts.append(FieldError(name[:60], "must be given once"))
        elif name in params and params[name] != values[0]:
            # Neither may silently win: the other might be the one the client meant.
            conflicts.append(
                FieldError(name[:60], "given differently in the query string and the body")
            )
        params[name] = values[0]
    if conflicts:
        return validation_problem(conflicts)
    return params


class HTTPConnection(TrioASGIHTTPConnection):
    """Quart-Trio's connection, except that a ``FileResponse`` sends itself.

    Quart's response machinery only emits ``http.response.body`` messages; answering a
    download here, after Quart's routing, validation and job lookup, is what lets it use
    the zero-copy extension.
    """

    async def _send_response(self, send: ASGISendCallable, response: Any) -> None:
        if isinstance(response, FileResponse):
            await response.send_asgi(send, self.scope)
        else:
            await super()._send_response(send, response)


def create_app(settings: Settings, conninfo: str) -> QuartTrio:
    app = QuartTrio(__name__)
    app.asgi_http_class = HTTPConnection
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # On shutdown Quart-Trio then cancels its lifespan nursery at once, and with it the job
    # manager: running exports stop and clean up in shielded scopes (jobs.py), each within
    # a few seconds, before the store closes.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = None
    store = JobStore(conninfo)
    jobs = JobManager(settings, conninfo, store)
    metrics = jobs.metrics = Metrics(jobs.counts)
    app.extensions["exporter.jobs"] = jobs

    @app.before_serving
    async def start_jobs() -> None:
        await app.nursery.start(jobs.run)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        response = problem(status, error.name, error.description or error.name)
        if status == 413:
            # The body was not read: close, or its bytes would be taken for the next
            # request on this keep-alive connection (the client then waits forever).
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(psycopg.OperationalError)
    async def database_down(error: psycopg.OperationalError) -> Response:
        log.warning("database unavailable: %s", error)
        response = problem(
            503, "Database unavailable", "the job database cannot be reached; try again shortly"
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @app.errorhandler(Exception)
    async def internal_error(error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return problem(500, "Internal Server Error", "the server log has the details")

    if settings.api_token is not None:
        token = settings.api_token.encode()

        @app.before_request
        async def authenticate() -> Response | None:
            if not request.path.startswith("/exports"):
                return None  # /health, /ready and /openapi.json stay open
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            # compare_digest: the time taken says nothing about how much of a guess was right.
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
                return None
            response = problem(
                401,
                "Unauthorized",
                "this service needs an 'Authorization: Bearer <token>' header with its API token",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="exporter"'
            return response

    @app.get("/ready")
    async def ready() -> Response | dict[str, Any]:
        """Readiness: the job database answers and start-up recovery has run."""
        try:
            await store.query("SELECT 1")
        except psycopg.OperationalError as error:
            log.warning("not ready: %s", error)
            response = problem(
                503, "Not ready", "the job database cannot be reached", database="down"
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        if not jobs.recovered.is_set():
            return problem(503, "Not ready", "recovering the jobs of a previous run", database="up")
        return {"status": "ready", "database": "up"}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), content_type=METRICS_CONTENT_TYPE)

    @app.get("/openapi.json")
    async def openapi() -> dict[str, Any]:
        return openapi_document()

    @app.post("/exports/csv")
    async def create_export() -> Response:
        params = await _export_params()
        if isinstance(params, Response):
            return params
        try:
            export_request = parse_export_request(params)
        except RequestInvalid as invalid:
            return validation_problem(invalid.errors)
        try:
            record = await jobs.submit(export_request)
        except QueueFull:
            response = problem(
                429,
                "Too many exports queued",
                f"{settings.max_queued_exports} exports are already waiting; try again later",
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        job_id = str(record.id)
        status_url = f"/exports/{job_id}/status"
        body = {
            "exportId": job_id,
            "status": record.status,
            "statusUrl": status_url,
            "downloadUrl": f"/exports/{job_id}/download",
        }
        return Response(
            json.dumps(body),
            status=202,
            content_type="application/json",
            headers={"Location": status_url},
        )

    @app.get("/exports")
    async def list_exports() -> Response | dict[str, Any]:
        raw = request.args.get("limit", str(DEFAULT_LIST_LIMIT))
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
            return validation_problem(
                [FieldError("limit", f"must be a whole number from 1 to {MAX_LIST_LIMIT}")]
            )
        return {"exports": [status_document(view) for view in await jobs.recent(int(raw))]}

    @app.get("/")
    async def status_page() -> Response:
        return Response(STATUS_PAGE, content_type="text/html; charset=utf-8")

    @app.get("/exports/<raw_id>/status")
    async def export_status(raw_id: str) -> Response | dict[str, Any]:
        job_id = _job_id(raw_id)
        view = None if job_id is None else await jobs.view(job_id)
        if view is None:
            return _not_found(raw_id)
        return status_document(view)

    @app.route("/exports/<raw_id>/download", methods=["GET", "HEAD"])
    async def export_download(raw_id: str) -> Response:
        job_id = _job_id(raw_id)
        view = None if job_id is None else await jobs.view(job_id)
        if view is None or job_id is None:
            return _not_found(raw_id)
        status = view.record.status
        if status in ("pending", "processing"):
            return problem(
                409,
                "Export not ready",
                f"the export is {status}; download it once completed",
                exportStatus=status,
            )
        if status != "completed":
            return problem(
                410,
                "Export gone",
                f"the export is {status}; its file is not available",
                exportStatus=status,
            )
        headers = {name.lower(): value for name, value in request.headers.items()}
        answer = await open_download(
            jobs.file_path(job_id),
            str(job_id),
            headers,
            request.method,
            zero_copy=settings.zero_copy,
            metrics=metrics,
        )
        if answer is None:  # removed between the lookup and the open
            return problem(410, "Export gone", "the export's file is no longer available")
        if isinstance(answer, Plan):
            response = problem(
                416, "Range Not Satisfiable", "the requested range lies outside the file"
            )
            response.headers.update(dict(answer.headers))
            response.headers.pop("Content-Length", None)
            return response
        return answer

    @app.get("/exports/<raw_id>/events")
    async def export_events(raw_id: str) -> Response:
        """Server-Sent Events: ``progress`` a few times a second, then one ``status``.

        Each listener costs one task that reads the job's in-memory figures, nothing
        when nobody listens; a listener that leaves ends only its own stream.
        """
        job_id = _job_id(raw_id)
        view = None if job_id is None else await jobs.view(job_id)
        if view is None or job_id is None:
            return _not_found(raw_id)

        async def events() -> AsyncIterator[bytes]:
            current: JobView | None = view
            while current is not None:
                ended = current.record.status not in ("pending", "processing")
                doc = json.dumps(status_document(current), separators=(",", ":"))
                yield f"event: {'status' if ended else 'progress'}\ndata: {doc}\n\n".encode()
                if ended:
                    return
                assert job_id is not None
                with trio.move_on_after(EVENT_INTERVAL):
                    await jobs.wait_for_end(job_id)
                current = await jobs.view(job_id)

        response = Response(events(), content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-store"
        response.timeout = None  # an export may run for many minutes
        return response

    @app.delete("/exports/<raw_id>")
    async def cancel_export(raw_id: str) -> Response:
        job_id = _job_id(raw_id)
        if job_id is None or not await jobs.cancel(job_id):
            return _not_found(raw_id)
        return Response(b"", status=204)

    app.asgi_app = health_fast_path(app.asgi_app, jobs, metrics)  # type: ignore[method-assign,assignment]
    return app


def health_fast_path(asgi_app: ASGIApp, jobs: JobManager, metrics: Metrics) -> ASGIApp:
    """``GET|HEAD /health`` answered before Quart sees the request.

    Health checks must answer at once however loaded the process is. Quart's request
    machinery costs a few milliseconds of GIL-holding work per request; under two
    exports each of those milliseconds waits on the export threads (bench/health.py).
    The answer comes from memory only: the database may be slow or away.
    """

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != "/health"
            or scope["method"] not in ("GET", "HEAD")
        ):
            return await asgi_app(scope, receive, send)
        started = time.perf_counter()
        body = json.dumps({"status": "ok", "exports": jobs.counts()}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
        metrics.health.observe(time.perf_counter() - started)
        return None

    return app
