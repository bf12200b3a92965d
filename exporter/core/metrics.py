"""What ``GET /metrics`` reports, in the Prometheus text format (prometheus_client).

One ``Metrics`` per app, on a registry of its own (not the library's global one), so that
several servers in one process (the tests) each count their own. Everything is updated
where it happens, in memory: a scrape never touches the database.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from exporter.core.model import ExportStatus

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Export durations: seconds to tens of minutes.
DURATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# /health should answer in milliseconds, and always well under 200 ms.
HEALTH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Metrics:
    """The service's Prometheus metrics, on a registry of its own."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        global_counts: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        """``counts``: this process's running exports and the queue, read at each scrape;
        ``global_counts``: running and queued in every process sharing the database (the
        job manager refreshes them every second, so a scrape still reads only memory)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.exports = Counter(
            "exporter_exports", "Exports that ended, by final status", ["status"], registry=r
        )
        self.rows = Counter("exporter_exported_rows", "Rows written by exports", registry=r)
        self.bytes = Counter("exporter_exported_bytes", "CSV bytes written by exports", registry=r)
        self.duration = Histogram(
            "exporter_export_duration_seconds",
            "Wall time of completed exports, from start to the file in place",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        running = Gauge(
            "exporter_exports_running", "Exports running now in this process", registry=r
        )
        running.set_function(lambda: counts()["running"])
        queued = Gauge(
            "exporter_exports_queued", "Exports waiting for a slot, in all processes", registry=r
        )
        queued.set_function(lambda: counts()["queued"])
        if global_counts is not None:
            everywhere = Gauge(
                "exporter_queue_jobs",
                "Jobs in the shared queue, by status, in all processes together",
                ["status"],
                registry=r,
            )
            for status in ("running", "queued"):
                everywhere.labels(status).set_function(
                    functools.partial(lambda s: global_counts()[s], status)
                )
        self.served = Counter(
            "exporter_download_bytes",
            "Bytes of export files sent to clients, by how",
            ["method"],  # sendfile (zero-copy) or fallback (read in chunks)
            registry=r,
        )
        self.downloads = Counter(
            "exporter_downloads", "Download responses with a body, by how", ["method"], registry=r
        )
        self.health = Histogram(
            "exporter_health_seconds",
            "Time to answer GET /health, in the service",
            buckets=HEALTH_BUCKETS,
            registry=r,
        )
        for status in (ExportStatus.COMPLETED, ExportStatus.FAILED, ExportStatus.CANCELLED):
            self.exports.labels(status)  # present at 0 from the start
        for method in ("sendfile", "fallback"):
            self.served.labels(method)
            self.downloads.labels(method)

    def export_ended(
        self, status: ExportStatus, rows: int, size: int, seconds: float | None
    ) -> None:
        self.exports.labels(status).inc()
        if status == ExportStatus.COMPLETED:
            self.rows.inc(rows)
            self.bytes.inc(size)
            if seconds is not None:
                self.duration.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
