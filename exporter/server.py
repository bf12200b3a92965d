"""Serving: the app on Hypercorn's trio worker, in-process, inside a trio-asyncio loop.

The asyncio loop (for the job store's psycopg ``AsyncConnection``) is opened around the
whole server, so every task Hypercorn starts (requests, the lifespan and with it the job
manager) can reach it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal

import trio_asyncio
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from exporter import zerocopy
from exporter.app import create_app
from exporter.config import SEND_TIMEOUT, Settings

log = logging.getLogger(__name__)

# Seconds a stopping server gives open requests (downloads included) before it cuts them.
GRACEFUL_TIMEOUT = 5.0


# glibc's mallopt(M_ARENA_MAX): see limit_malloc_arenas.
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let all threads share ``arenas`` malloc arenas (glibc; elsewhere nothing happens).

    glibc gives each thread that allocates an arena of its own, up to 8 per core, and
    keeps their freed memory: with export threads from trio's thread cache, peak RSS
    through a 10M-row export was ~10 MB higher (bench/memory.py). The same as the
    ``MALLOC_ARENA_MAX`` environment variable, but it also holds where nobody set that.
    Must run before the worker threads start.
    """
    with contextlib.suppress(OSError, AttributeError):
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas))
    return False


def hypercorn_config(bind: str, send_timeout: float = SEND_TIMEOUT) -> Config:
    config = Config()
    config.bind = [bind]
    # Read by exporter.zerocopy: how long a client may accept no byte before it is dropped.
    config.send_timeout = send_timeout  # type: ignore[attr-defined]
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.accesslog = logging.getLogger("exporter.access")
    config.errorlog = logging.getLogger("exporter.server")
    return config


async def wait_for_stop_signal() -> None:
    """Return on the first SIGINT or SIGTERM: Hypercorn then shuts down gracefully."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, stopping", signal.Signals(signum).name)
            return


async def run_server(
    settings: Settings,
    conninfo: str,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until a stop signal (or until cancelled); ``task_status`` gets the bound URLs."""
    zerocopy.install()
    app = create_app(settings, conninfo)
    async with trio_asyncio.open_loop():
        await serve(
            app,
            hypercorn_config(settings.bind, settings.send_timeout),
            shutdown_trigger=wait_for_stop_signal if handle_signals else None,
            task_status=task_status,
        )
