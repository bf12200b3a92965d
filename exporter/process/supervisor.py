"""``exporter serve --workers N``: the API process starts N ``exporter worker`` processes and
keeps them running.

A worker that exits while the server runs is started again, after a wait that doubles
after each quick failure (up to ``MAX_RESTART_DELAY``). On shutdown each gets SIGTERM, on
which it hands its running exports back to the queue and exits; one that takes longer
than ``WORKER_STOP_TIMEOUT`` is killed (its exports are then taken over once their lease
runs out).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

import trio

from exporter.core.config import Settings

__all__ = ["supervise", "worker_command"]

log = logging.getLogger(__name__)

# Waits before restarting a worker that died: doubled after each quick death.
FIRST_RESTART_DELAY, MAX_RESTART_DELAY = 0.5, 30.0
# A worker that ran this long was healthy: its next death restarts it at once again.
HEALTHY_SECONDS = 60.0
# How long a stopping worker may take to hand its exports back before it is killed.
WORKER_STOP_TIMEOUT = 10.0


def worker_command(index: int, settings: Settings) -> list[str]:
    """The command line of worker ``index``: ``exporter worker``, with ``--bind`` for its
    ``/health`` and ``/metrics`` when ``WORKER_METRICS_PORT`` is set."""
    command = [sys.executable, "-m", "exporter", "worker"]
    if settings.worker_metrics_port is not None:
        command += ["--bind", f"127.0.0.1:{settings.worker_metrics_port + index}"]
    return command


async def _stop(process: trio.Process) -> None:
    """SIGTERM, then SIGKILL if it has not handed its exports back in time."""
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(WORKER_STOP_TIMEOUT):
        await process.wait()
        return
    log.warning("worker %d did not stop in %.0f s; killing it", process.pid, WORKER_STOP_TIMEOUT)
    process.kill()


async def supervise(index: int, settings: Settings) -> None:
    """Keep worker ``index`` running until cancelled (then stop it gracefully)."""
    delay = FIRST_RESTART_DELAY
    while True:
        started = time.monotonic()
        # The workers inherit stdout and stderr: their log lines join the server's.
        result = await trio.run_process(
            worker_command(index, settings),
            check=False,
            stdin=subprocess.DEVNULL,
            deliver_cancel=_stop,
        )
        if time.monotonic() - started >= HEALTHY_SECONDS:
            delay = FIRST_RESTART_DELAY
        log.error(
            "worker %d exited with %s; restarting it in %.1f s", index, result.returncode, delay
        )
        await trio.sleep(delay)
        delay = min(delay * 2, MAX_RESTART_DELAY)
