"""How many exports run and wait, for ``/health`` and ``/metrics``: answered from memory,
refreshed from the queue every second by one loop."""

from __future__ import annotations

import contextlib

import trio

from exporter.core.errors import QueueError
from exporter.jobs.queue import JobQueue

__all__ = ["COUNTS_INTERVAL", "QueueCounts"]

# How often the global running and queued counts are refreshed.
COUNTS_INTERVAL = 1.0


class QueueCounts:
    """Running and waiting jobs in every process sharing the queue."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self._global = {"running": 0, "queued": 0}
        self._local_changes = 0  # what this process did to the queue since it started

    def change(self, status: str, change: int) -> None:
        """What this process just did to the queue (``status`` is ``running`` or
        ``queued``), shown at once; the queue's count follows within ``COUNTS_INTERVAL``."""
        self._global[status] = max(self._global[status] + change, 0)
        self._local_changes += 1

    def queued(self) -> int:
        return self._global["queued"]

    def everywhere(self) -> dict[str, int]:
        """Running and waiting in every process (refreshed each second)."""
        return dict(self._global)

    async def run(self) -> None:
        while True:
            # On failure /health and /metrics show the last figures there were.
            with trio.move_on_after(COUNTS_INTERVAL * 5), contextlib.suppress(QueueError):
                changes = self._local_changes
                counted = await self.queue.counts()
                if changes == self._local_changes:  # else older than what this process did
                    self._global = counted
            await trio.sleep(COUNTS_INTERVAL)
