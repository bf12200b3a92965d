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
was done; writes bench/results/load.json and prints a table. ``run_load`` is what the test
suite runs in a shorter form.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from bench.common import EXPORTS, machine, save_results, seeded_database, service
from bench.health import HealthSampler, complete_response, summary
from bench.memory import tree_rss
from exporter.core.request import parse_export_request
from exporter.export.query import copy_statement

# The kinds of export kept running: filtered, so that a minute sees several complete.
EXPORT_KINDS: list[dict[str, str]] = [
    {"country_code": "US", "columns": "id,email"},
    {"country_code": "DE", "delimiter": ";"},
    {"subscription_tier": "enterprise", "columns": "id,name,lifetime_value"},
    {"country_code": "FR", "delimiter": "\t", "quoteChar": "'"},
]
DOWNLOADED = {"country_code": "GB", "columns": "id,name,email"}
STATUS_CONNECTIONS = 32
MB = 1e6


def oracle_sha256(conninfo: str, params: dict[str, str]) -> str:
    """SHA-256 of what PostgreSQL's COPY writes for the export ``params`` describe."""
    statement, values = copy_statement(parse_export_request(params))
    digest = hashlib.sha256()
    with (
        psycopg.connect(conninfo, options="-c TimeZone=UTC -c DateStyle=ISO,MDY") as conn,
        conn.cursor().copy(statement, values) as copy,
    ):
        for chunk in copy:
            digest.update(chunk)
    return digest.hexdigest()


# The clients' processes run at this nice: on loopback they share the 2 cores with the
# service, and clients elsewhere would not take its CPU (0: as ordinary processes).
CLIENT_NICE = int(os.environ.get("LOAD_CLIENT_NICE", "0"))


async def curl_sha256(url: str) -> str | None:
    """curl's download of ``url``, hashed by sha256sum on the way (None if curl failed)."""
    pipeline = f"set -o pipefail; curl -sf --http1.1 '{url}' | sha256sum"
    result = await trio.run_process(
        ["nice", "-n", str(CLIENT_NICE), "bash", "-c", pipeline],
        capture_stdout=True,
        check=False,
    )
    return result.stdout.split()[0].decode() if result.returncode == 0 else None


class Load:
    def __init__(self, url: str, pid: int, expected: dict[int, str], downloaded: str) -> None:
        self.url, self.pid = url, pid
        self.expected = expected  # export kind → SHA-256
        self.downloaded_url, self.downloaded_sha = downloaded, expected[-1]
        self.errors: list[str] = []
        self.export_ids: list[str] = []
        self.exports_completed = self.exports_checked = 0
        self.downloads_completed = self.download_bytes = 0
        self.status_requests = 0
        self.rss_samples: list[tuple[float, int]] = []
        self.origin = time.perf_counter()

    def error(self, what: str) -> None:
        if len(self.errors) < 100:
            self.errors.append(what)

    async def keep_exporting(self, client: httpx.AsyncClient, kind: int, until: float) -> None:
        params = EXPORT_KINDS[kind]
        while time.perf_counter() < until:
            response = await client.post("/exports/csv", params=params)
            if response.status_code != 202:
                self.error(f"POST {params}: {response.status_code}")
                await trio.sleep(1)
                continue
            export_id = response.json()["exportId"]
            self.export_ids.append(export_id)
            while True:  # the status requests below keep it company; this waits gently
                await trio.sleep(0.5)
                doc = (await client.get(f"/exports/{export_id}/status")).json()
                if doc["status"] not in ("pending", "processing"):
                    break
            if doc["status"] != "completed":
                self.error(f"export {params}: {doc['status']}: {doc['error']}")
                continue
            self.exports_completed += 1
            sha = await curl_sha256(f"{self.url}/exports/{export_id}/download")
            if sha != self.expected[kind]:
                self.error(f"export {params}: its file differs from COPY's")
            self.exports_checked += 1
            await client.delete(f"/exports/{export_id}")  # keep the disk from filling

    async def keep_downloading(self, until: float, size: int) -> None:
        while time.perf_counter() < until:
            sha = await curl_sha256(self.downloaded_url)
            if sha != self.downloaded_sha:
                self.error(f"download: {'curl failed' if sha is None else 'wrong bytes'}")
                continue
            self.downloads_completed += 1
            self.download_bytes += size

    async def ask_status(self, rate: float, until: float) -> None:
        """``rate`` status requests a second over ``STATUS_CONNECTIONS`` keep-alive sockets.

        Raw HTTP/1.1, like bench/health.py: an HTTP library's Python per request, in this
        busy process, could not keep up with the rate it is asked to make."""
        host, port = self.url.removeprefix("http://").split(":")

        async def connection(offset: float) -> None:
            interval = STATUS_CONNECTIONS / rate
            sock = None
            start = time.perf_counter() + offset
            for tick in itertools.count():
                if time.perf_counter() >= until:
                    break
                await trio.sleep(max(0.0, start + tick * interval - time.perf_counter()))
                if not self.export_ids:
                    continue
                if sock is None:
                    sock = trio.socket.socket()
                    await sock.connect((host, int(port)))
                export_id = random.choice(self.export_ids[-16:])
                await sock.send(
                    f"GET /exports/{export_id}/status HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                )
                response = b""
                while not complete_response(response):
                    chunk = await sock.recv(65536)
                    if not chunk:
                        break
                    response += chunk
                self.status_requests += 1
                if not response.startswith(b"HTTP/1.1 200"):
                    self.error(f"status: {response[:40]!r}")
                if not response or b"connection: close" in response.lower():
                    sock.close()  # Hypercorn ends a keep-alive connection after 1,000 requests
                    sock = None
            if sock is not None:
                sock.close()

        async with trio.open_nursery() as nursery:
            for index in range(STATUS_CONNECTIONS):
                nursery.start_soon(connection, index / rate)

    async def sample_rss(self, until: float) -> None:
        while time.perf_counter() < until:
            self.rss_samples.append((time.perf_counter() - self.origin, tree_rss(self.pid)))
            await trio.sleep(0.1)


def run_load(
    conninfo: str,
    *,
    seconds: float,
    exports: int = 4,
    downloads: int = 16,
    status_rate: float = 200,
    export_dir: Path = EXPORTS,
) -> dict[str, Any]:
    """The load for ``seconds`` against a fresh ``exporter serve``; the report."""
    expected = {kind: oracle_sha256(conninfo, EXPORT_KINDS[kind]) for kind in range(exports)}
    expected[-1] = oracle_sha256(conninfo, DOWNLOADED)
    export_dir.mkdir(parents=True, exist_ok=True)
    with service(conninfo, export_dir=export_dir) as app:
        _, downloaded_id = app.export(DOWNLOADED)
        size = int(app.client.get(f"/exports/{downloaded_id}/status").json()["fileSize"])
        downloaded_url = f"{app.url}/exports/{downloaded_id}/download"
        load = Load(app.url, app.process.pid, expected, downloaded_url)
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
                    nursery.start_soon(load.keep_downloading, until, size)
                nursery.start_soon(load.ask_status, status_rate, until)
                # RSS until the last export has been checked, not only for ``seconds``.
                async with trio.open_nursery() as watcher:
                    watcher.start_soon(load.sample_rss, float("inf"))
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
        "download_mb": round(load.download_bytes / MB, 1),
        "status_requests": load.status_requests,
        "status_requests_per_second": round(load.status_requests / seconds, 1),
        "health": summary([ms for _, ms in sampler.samples]),
        "peak_rss_mb": round(max(rss for _, rss in load.rss_samples) / MB, 1),
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
