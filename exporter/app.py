"""The application: the API's routes, the job manager and the export store, wired together.

``create_app`` builds a Quart-Trio app whose serving lifespan holds the job manager (so
stopping the server stops every export), adds the error handlers that turn domain errors
into problem documents, the optional bearer-token check, and ``/health`` answered ahead
of Quart.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from exporter.api import ExportIdConverter, ExportNotFound, Services, routes
from exporter.config import Settings
from exporter.download import HTTPConnection
from exporter.health import health_fast_path
from exporter.jobs import JobManager
from exporter.metrics import Metrics
from exporter.problems import problem, retry_later, validation_problem
from exporter.request import RequestInvalid
from exporter.storage import ExportStoreError, open_storage
from exporter.store import JobStore, StoreUnavailable
from exporter.supervisor import supervise

log = logging.getLogger(__name__)

# Bigger request bodies than this are refused before they are read: parameters are tiny.
MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings, conninfo: str) -> QuartTrio:
    app = QuartTrio(__name__)
    app.asgi_http_class = HTTPConnection
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # On shutdown Quart-Trio then cancels its lifespan nursery at once, and with it the job
    # manager: running exports stop and clean up in shielded scopes (jobs.py), each within
    # a few seconds, before the store closes.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = None
    app.url_map.converters["export_id"] = ExportIdConverter
    # With workers, they run the exports: this process serves the API only.
    job_settings = settings.replace(max_concurrent_exports=0) if settings.workers else settings
    storage = open_storage(settings.storage)
    jobs = JobManager(job_settings, conninfo, JobStore(conninfo), storage)
    metrics = jobs.metrics = Metrics(jobs.counts, jobs.global_counts)
    app.extensions["exporter"] = Services(settings, jobs, metrics)
    app.register_blueprint(routes)
    _add_error_handlers(app)
    if settings.api_token is not None:
        app.before_request(_bearer_token_check(settings.api_token))

    @app.before_serving
    async def start_jobs() -> None:
        await app.nursery.start(jobs.run)
        for index in range(settings.workers):
            app.nursery.start_soon(supervise, index, settings, name=f"worker {index}")

    app.asgi_app = health_fast_path(app.asgi_app, jobs, metrics)  # type: ignore[method-assign,assignment]
    return app


def _add_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(RequestInvalid)
    async def invalid(error: RequestInvalid) -> Response:
        return validation_problem(error.errors)

    @app.errorhandler(ExportNotFound)
    async def not_found(error: ExportNotFound) -> Response:
        return problem(404, "Export not found", str(error))

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        response = problem(status, error.name, error.description or error.name)
        if status == 413:
            # The body was not read: close, or its bytes would be taken for the next
            # request on this keep-alive connection (the client then waits forever).
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(StoreUnavailable)
    async def database_down(error: StoreUnavailable) -> Response:
        log.warning("database unavailable: %s", error)
        return retry_later(
            503, "Database unavailable", "the job database cannot be reached; try again shortly"
        )

    @app.errorhandler(ExportStoreError)
    async def export_store_down(error: ExportStoreError) -> Response:
        log.warning("export store unavailable: %s", error)
        return retry_later(503, "Export store unavailable", str(error))

    @app.errorhandler(Exception)
    async def internal_error(error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return problem(500, "Internal Server Error", "the server log has the details")


def _bearer_token_check(api_token: str) -> Callable[[], Awaitable[Response | None]]:
    """Every ``/exports`` route needs ``Authorization: Bearer <api_token>``."""
    token = api_token.encode()

    async def authenticate() -> Response | None:
        if not request.path.startswith("/exports"):
            return None  # /health, /ready, /metrics and /openapi.json stay open
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

    return authenticate
