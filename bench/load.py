"""A bounded load test on loopback: exports, downloads and status requests all at once.

    .venv/bin/python -m bench.load [--rows 10000000] [--database-url URL] [--seconds 60]
                                   [--exports 4] [--downloads 16] [--status-rate 200]

For ``--seconds``, against ``exporter serve`` as its own process:

- ``--exports`` exports run at all times: each time one completes, its file is checked
  (downloaded by curl, SHA-256 against PostgreSQL's own COPY of the same SELECT) and
  another of the same kind starts; the kinds are filtered exports of different dialects;
- ``--downloads`` curl clients download an earlier export again and again at full speed,
  each copy's SHA-256 checked;
- ``--status-rate`` GET /exports/{id}/status a second, spread over the known exports;
- /health is sampled at 20 Hz on a keep-alive socket, the service's RSS (its process tree)
  at 10 Hz.

Afterwards, exports still running are awaited. Reports errors (any failed export, wrong
file, non-200 status or /health answer: must be 0), /health p50/p99/max, peak RSS, what
was done; writes bench/results/load.json and prints a table. The load itself is
tests.support.load's, which tests/test_load.py runs for a few seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from bench.common import EXPORTS, machine, save_results, seeded_database, service
from bench.health import HealthSampler, summary
from exporter.core.datasets import USERS
from exporter.core.request import parse_export_request
from exporter.export.catalog import resolve_datasets
from exporter.export.connection import libpq_options
from exporter.export.query import copy_statement
from tests.support.load import DOWNLOADED, EXPORT_KINDS, Load

MB = 1e6


def oracle_sha256(conninfo: str, params: dict[str, str]) -> str:
    """SHA-256 of what PostgreSQL's COPY writes for the export ``params`` describe."""
    request = parse_export_request(params)
    dataset = resolve_datasets(conninfo, [USERS])[USERS.name]
    digest = hashlib.sha256()
    with psycopg.connect(conninfo, options=libpq_options()) as conn:
        statement = copy_statement(conn, dataset, request)
        with conn.cursor().copy(statement) as copy:
            for chunk in copy:
                digest.update(chunk)
    return digest.hexdigest()


# The clients' processes run at this nice: on loopback they share the 2 cores with the
# service, and clients elsewhere would not take its CPU (0: as ordinary processes).
CLIENT_NICE = int(os.environ.get("LOAD_CLIENT_NICE", "0"))


def run_load(
    conninfo: str,
    *,
    seconds: float,
    exports: int = 4,
    downloads: int = 16,
    status_rate: float = 200,
    export_dir: Path = EXPORTS,
) -> dict[str, Any]:
    """The load (tests.support.load) for ``seconds`` against a fresh ``exporter serve``;
    the report."""
    expected = [oracle_sha256(conninfo, EXPORT_KINDS[kind]) for kind in range(exports)]
    downloaded_sha = oracle_sha256(conninfo, DOWNLOADED)
    export_dir.mkdir(parents=True, exist_ok=True)
    with service(conninfo, export_dir=export_dir) as app:
        _, downloaded_id = app.export(DOWNLOADED)
        size = int(app.client.get(f"/exports/{downloaded_id}/status").json()["fileSize"])
        downloaded_url = f"{app.url}/exports/{downloaded_id}/download"
        load = Load(
            app.url, app.process.pid, expected, downloaded_url, downloaded_sha, nice=CLIENT_NICE
        )
        sampler = HealthSampler(app.url, 20, load.origin)
        sampler.start()

        async def main() -> None:
            until = time.perf_counter() + seconds
            limits = httpx.Limits(max_connections=exports + 1)
            async with (
                httpx.AsyncClient(base_url=app.url, timeout=60, limits=limits) as client,
                trio.open_nursery() as nursery,
            ):
                for kind in range(exports):
                    nursery.start_soon(load.keep_exporting, client, kind, until)
                for _ in range(downloads):
                    nursery.start_soon(load.keep_downloading, until)
                nursery.start_soon(load.ask_status, status_rate, until)
                # RSS until the last export has been checked, not only for ``seconds``.
                async with trio.open_nursery() as watcher:
                    watcher.start_soon(load.sample_rss)
                    await trio.sleep(seconds)
                    while nursery.child_tasks:
                        await trio.sleep(0.1)
                    watcher.cancel_scope.cancel()

        trio.run(main)
        sampler.stopping.set()
        sampler.join()
        elapsed = time.perf_counter() - load.origin
    health_errors = sampler.errors
    errors = [*load.errors, *(["/health failed"] * health_errors)]
    return {
        "machine": machine(),
        "seconds": seconds,
        "elapsed_seconds": round(elapsed, 1),
        "exports_at_once": exports,
        "downloads_at_once": downloads,
        "status_rate": status_rate,
        "errors": len(errors),
        "error_samples": errors[:20],
        "exports_completed": load.exports_completed,
        "exports_checked": load.exports_checked,
        "downloads_completed": load.downloads_completed,
        "download_mb": round(load.downloads_completed * size / MB, 1),
        "status_requests": load.status_requests,
        "status_requests_per_second": round(load.status_requests / seconds, 1),
        "health": summary([ms for _, ms in sampler.samples]),
        "peak_rss_mb": round(load.peak_rss() / MB, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--exports", type=int, default=4, choices=range(1, len(EXPORT_KINDS) + 1))
    parser.add_argument("--downloads", type=int, default=16)
    parser.add_argument("--status-rate", type=float, default=200)
    args = parser.parse_args()
    with seeded_database(args.database_url, args.rows) as conninfo:
        report = run_load(
            conninfo,
            seconds=args.seconds,
            exports=args.exports,
            downloads=args.downloads,
            status_rate=args.status_rate,
        )
    report["rows_in_table"] = args.rows
    save_results("load", report)
    health = report["health"]
    print(
        f"{report['seconds']:g} s of load ({report['elapsed_seconds']:g} s with the last exports): "
        f"{args.exports} exports at once, {args.downloads} downloads, "
        f"{args.status_rate:g} status requests/s"
    )
    checked = f"{report['exports_completed']} ({report['exports_checked']})"
    status = f"{report['status_requests']} ({report['status_requests_per_second']})"
    latency = f"{health['p50_ms']} / {health['p99_ms']} / {health['max_ms']}"
    rows = [
        ("errors", report["errors"]),
        ("exports completed (file checked)", checked),
        ("downloads completed (checked)", report["downloads_completed"]),
        ("MB downloaded", report["download_mb"]),
        ("status requests (a second)", status),
        ("/health p50 / p99 / max ms", latency),
        ("peak RSS MB", report["peak_rss_mb"]),
    ]
    for label, value in rows:
        print(f"{label:<34} {value}")
    for line in report["error_samples"]:
        print("error:", line)
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
