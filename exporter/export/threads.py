"""Blocking export work in trio's worker threads: at a lower CPU priority, and cancellable.

- ``background(fn)``: ``fn`` run at nice +``EXPORT_THREAD_NICE`` in whatever worker thread
  runs it, so that on a busy machine the event loop's thread wins the CPU when it wakes
  (``/health``, the API) over the export threads and their PostgreSQL backends.
- ``run_cancellable(fn, ..., cancel=...)``: a blocking call in a worker thread that a trio
  cancellation makes return (by cancelling its query on the server), and that is known to
  have returned before the caller closes what it used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

__all__ = ["EXPORT_THREAD_NICE", "background", "lower_thread_priority", "run_cancellable"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# How much lower than the event loop the export threads run (see background).
EXPORT_THREAD_NICE = 10

# How long a cancelled export waits for its blocked database call to return after the
# query was cancelled on the server; in practice that takes milliseconds.
CANCEL_GRACE = 5.0


_niced = threading.local()


def background(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn``, run at a lower CPU priority (nice +EXPORT_THREAD_NICE) in its worker thread.

    On two cores, two exports' threads and their PostgreSQL backends want more CPU than
    there is; the event loop thread, at normal priority, then wins the CPU when it wakes,
    which keeps /health and the API answering quickly (bench/health.py).
    """

    def run(*args: Any) -> T:
        if not getattr(_niced, "done", False):
            lower_thread_priority()
            _niced.done = True
        return fn(*args)

    return run


def lower_thread_priority() -> None:
    """Run the calling thread at nice +EXPORT_THREAD_NICE from now on (Linux sets it per
    thread; elsewhere nothing happens)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), EXPORT_THREAD_NICE)


async def run_cancellable(fn: Callable[..., T], *args: Any, cancel: Callable[[], None]) -> T:
    """Run blocking ``fn(*args)`` in a worker thread; on cancellation, make it return.

    When the surrounding scope is cancelled, ``cancel()`` is called (in another thread)
    to make ``fn`` return early, e.g. by cancelling its query on the server, and only
    once ``fn`` has really returned does ``Cancelled`` propagate, so the caller may then
    close what ``fn`` was using.
    """
    token = trio.lowlevel.current_trio_token()
    finished = trio.Event()
    # Whether fn started, decided under a lock: a call cancelled before its thread picked
    # it up must never start later, on a connection the caller is about to close.
    lock = threading.Lock()
    state = {"started": False, "withdrawn": False}

    def work() -> T:
        with lock:
            if state["withdrawn"]:
                raise RuntimeError("withdrawn")  # never seen: the caller has moved on
            state["started"] = True
        try:
            return fn(*args)
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finished.set)

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except trio.Cancelled:
        with lock:
            started, state["withdrawn"] = state["started"], True
        if started:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(cancel)
                with trio.move_on_after(CANCEL_GRACE):
                    await finished.wait()
                if not finished.is_set():
                    log.error(
                        "%s did not return %.0f s after its cancel",
                        getattr(fn, "__qualname__", fn),
                        CANCEL_GRACE,
                    )
        raise
