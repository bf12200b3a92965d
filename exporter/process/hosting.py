"""What every process that answers HTTP shares: Hypercorn's settings, the stop signals,
and glibc's malloc settings. Imports no web framework: ``exporter worker`` uses it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal

import trio
from hypercorn.config import Config

from exporter.core.config import SEND_TIMEOUT

__all__ = ["hypercorn_config", "tune_malloc", "wait_for_stop_signal"]

log = logging.getLogger("exporter.server")

# Seconds a stopping server gives open requests (downloads included) before it cuts them.
GRACEFUL_TIMEOUT = 5.0


# glibc's mallopt parameters: see tune_malloc.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2
# Blocks from this size up get pages of their own, given back to the system when freed.
MALLOC_MMAP_FROM = 128 * 1024


def tune_malloc(arenas: int = MALLOC_ARENAS, mmap_from: int = MALLOC_MMAP_FROM) -> bool:
    """Make glibc's malloc keep less freed memory (glibc; elsewhere nothing happens).

    - ``M_ARENA_MAX``: all threads share ``arenas`` arenas. By default each thread that
      allocates gets one of its own (up to 8 per core), and each keeps its freed memory.
    - ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` at ``mmap_from``: the encoded batches
      (~0.9 MB each) and the object store's parts get pages of their own, unmapped when freed,
      and free memory at the heap's top is given back. Setting them also turns off glibc's
      sliding threshold, which after the first big free serves such blocks from the heap,
      where they leave holes that keep RSS up.

    Through a 10M-row export with 4 slow downloads (bench/memory.py), the peak RSS is ~10
    MB lower with the arenas capped and ~10 MB lower again with the thresholds fixed, at
    the same speed. The same as the ``MALLOC_*_`` environment variables, but it also holds
    where nobody set them. Must run before the worker threads start.
    """
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL("libc.so.6").mallopt
        return all(
            mallopt(parameter, value)
            for parameter, value in (
                (_M_ARENA_MAX, arenas),
                (_M_MMAP_THRESHOLD, mmap_from),
                (_M_TRIM_THRESHOLD, mmap_from),
            )
        )
    return False


def hypercorn_config(bind: str, send_timeout: float = SEND_TIMEOUT) -> Config:
    """Hypercorn's settings for serving on ``bind``; ``send_timeout``: seconds a client
    may accept no byte before it is dropped."""
    config = Config()
    config.bind = [bind]
    # Read by exporter.http.zerocopy: how long a client may accept no byte before it is dropped.
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
