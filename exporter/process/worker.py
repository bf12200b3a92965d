"""``exporter worker``: a process that runs exports only.

A worker is the job manager alone (the same nursery, cancel scopes and pipeline as in the
all-in-one server), claiming from the queue every process shares. With ``--bind`` it
answers ``GET /health`` and ``GET /metrics`` on that address; nothing else. On SIGTERM
it hands its running exports back to the queue and exits.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import trio_asyncio
import trio
from hypercorn.trio import serve

from exporter.core.config import Settings
from exporter.core.datasets import declared_datasets
from exporter.core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from exporter.core.metrics import Metrics
from exporter.export.catalog import DatasetCatalog
from exporter.http.health import ASGIApp, health_fast_path
from exporter.jobs.manager import JobManager
from exporter.jobs.postgres_queue import PostgresQueue
from exporter.process.hosting import hypercorn_config, wait_for_stop_signal
from exporter.storage import open_storage

__all__ = ["run_worker", "worker_app"]

log = logging.getLogger(__name__)


def worker_app(jobs: JobManager, metrics: Metrics) -> ASGIApp:
    """``/health`` (as the API answers it) and ``/metrics`` of a worker; 404 otherwise."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/metrics":
            body, content_type, status = metrics.exposition(), METRICS_CONTENT_TYPE, 200
        else:
            body, content_type, status = b"not found\n", "text/plain", 404
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return health_fast_path(app, jobs.counts, metrics)


async def run_worker(settings: Settings, conninfo: str, bind: str | None = None) -> None:
    """Run exports from the queue until SIGTERM or SIGINT, then hand them back."""
    storage = open_storage(settings.storage)
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        datasets = DatasetCatalog(conninfo, declared_datasets(settings.exporter_datasets))
        jobs = JobManager(settings, conninfo, PostgresQueue(conninfo), storage, datasets=datasets)
        jobs.metrics = Metrics(jobs.counts, jobs.global_counts)
        await nursery.start(jobs.run)
        if bind is not None:
            config = hypercorn_config(bind, settings.send_timeout)
            app = worker_app(jobs, jobs.metrics)
            nursery.start_soon(functools.partial(serve, app, config, mode="asgi"))
        log.info("worker %s ready", jobs.owner)
        await wait_for_stop_signal()
        nursery.cancel_scope.cancel()
