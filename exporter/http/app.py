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

from exporter.core.config import Settings
from exporter.core.datasets import declared_datasets
from exporter.core.errors import ExporterError, RequestInvalid, answer_for
from exporter.core.metrics import Metrics
from exporter.export.catalog import DatasetCatalog
from exporter.http.download import HTTPConnection
from exporter.http.health import health_fast_path
from exporter.http.problems import problem, retry_later, validation_problem
from exporter.http.routes import ExportIdConverter, Services, add_dataset_routes, routes
from exporter.jobs.manager import JobManager
from exporter.jobs.postgres_queue import PostgresQueue
from exporter.storage import open_storage

__all__ = ["create_app"]

log = logging.getLogger(__name__)

# Bigger request bodies than this are refused before they are read: parameters are tiny.
MAX_BODY_BYTES = 64 * 1024


def create_app(
    settings: Settings, conninfo: str, datasets: DatasetCatalog | None = None
) -> QuartTrio:
    """The Quart-Trio app for ``settings``, its job queue in the database ``conninfo``
    names; its serving lifespan runs the job manager. ``datasets``: what it exports
    (default: those ``settings`` declare, resolved once the database answers)."""
    app = QuartTrio(__name__)
    app.asgi_http_class = HTTPConnection
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # On shutdown Quart-Trio then cancels its lifespan nursery at once, and with it the job
    # manager: running exports stop and clean up in shielded scopes (exporter.jobs.running),
    # each within a few seconds, before the queue's connection closes.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = None
    app.url_map.converters["export_id"] = ExportIdConverter
    # With workers, they run the exports: this process serves the API only.
    job_settings = settings.replace(max_concurrent_exports=0) if settings.workers else settings
    storage = open_storage(settings.storage)
    if datasets is None:
        datasets = DatasetCatalog(conninfo, declared_datasets(settings.exporter_datasets))
    jobs = JobManager(job_settings, conninfo, PostgresQueue(conninfo), storage, datasets=datasets)
    metrics = jobs.metrics = Metrics(jobs.counts, jobs.global_counts)
    app.extensions["exporter"] = Services(settings, jobs, metrics)
    app.register_blueprint(routes)
    add_dataset_routes(app, [spec.name for spec in datasets.specs])
    _add_error_handlers(app)
    if settings.api_token is not None:
        app.before_request(_bearer_token_check(settings.api_token))

    @app.before_serving
    async def start_jobs() -> None:
        await app.nursery.start(jobs.run)

    app.asgi_app = health_fast_path(app.asgi_app, jobs.counts, metrics)  # type: ignore[method-assign,assignment]
    return app


def _add_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(ExporterError)
    async def known_error(error: ExporterError) -> Response:
        answer = answer_for(error)
        if answer is None:
            return await internal_error(error)
        if isinstance(error, RequestInvalid):
            return validation_problem(error.errors)
        if answer.status >= 500:
            log.warning("%s: %s", answer.title.lower(), error)
        detail = answer.detail or str(error)
        if answer.retry_later:
            return retry_later(answer.status, answer.title, detail)
        return problem(answer.status, answer.title, detail)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        response = problem(status, error.name, error.description or error.name)
        if status == 413:
            # The body was not read: close, or its bytes would be taken for the next
            # request on this keep-alive connection (the client then waits forever).
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(Exception)
    async def internal_error(error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return problem(500, "Internal Server Error", "the server log has the details")


def _bearer_token_check(api_token: str) -> Callable[[], Awaitable[Response | None]]:
    """Every ``/exports`` and ``/datasets`` route needs ``Authorization: Bearer <api_token>``."""
    token = api_token.encode()

    async def authenticate() -> Response | None:
        if not request.path.startswith(("/exports", "/datasets")):
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
