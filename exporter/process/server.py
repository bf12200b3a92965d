"""Serving: the app on Hypercorn's trio worker, in-process, inside a trio-asyncio loop.

The asyncio loop (for the job queue's psycopg ``AsyncConnection``) is opened around the
whole server, so every task Hypercorn starts (requests, the lifespan and with it the job
manager) can reach it. With ``--workers N`` the worker processes are supervised beside it.
"""

from __future__ import annotations

import contextlib

import trio_asyncio
import psycopg
import trio
from hypercorn.trio import serve

from exporter.core.config import Settings
from exporter.core.datasets import declared_datasets
from exporter.export.catalog import DatasetCatalog
from exporter.http import zerocopy
from exporter.http.app import create_app
from exporter.process.hosting import hypercorn_config, wait_for_stop_signal
from exporter.process.supervisor import supervise

__all__ = ["run_server"]


async def run_server(
    settings: Settings,
    conninfo: str,
    datasets: DatasetCatalog | None = None,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until a stop signal (or until cancelled); ``task_status`` gets the bound URLs."""
    zerocopy.install()
    if datasets is None:
        datasets = DatasetCatalog(conninfo, declared_datasets(settings.exporter_datasets))
        # A bad datasets file stops the start here when the database answers; when it does
        # not, the job manager resolves them at its first contact (and stops then).
        with contextlib.suppress(psycopg.OperationalError):
            await trio.to_thread.run_sync(datasets.resolve)
    app = create_app(settings, conninfo, datasets)
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        for index in range(settings.workers):
            nursery.start_soon(supervise, index, settings, name=f"worker {index}")
        await serve(
            app,
            hypercorn_config(settings.bind, settings.send_timeout),
            shutdown_trigger=wait_for_stop_signal if handle_signals else None,
            task_status=task_status,
        )
        nursery.cancel_scope.cancel()  # the workers get SIGTERM and hand their exports back
