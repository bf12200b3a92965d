"""/health latency while two full exports run and clients download.

    .venv/bin/python -m bench.health [--rows 10000000] [--database-url URL] [--hz 20]
                                     [--downloads 2] [--exports 2] [--env NAME=VALUE ...]

An earlier, small export (country_code=US) is made first. Then a thread GETs /health
`--hz` times a second over one persistent connection (httpx), timing each request
(wall time, request sent to body read). After 3 s of that, `--downloads` curl clients
start downloading the earlier export at 5 MB/s each, over and over, and two full exports
start (the service runs two at once; `--exports N` for another number). Sampling stops
when the exports are completed. `--env NAME=VALUE` (repeatable) sets the service's
environment, e.g. `--env ROW_SOURCE=copy`; the results' names then carry the values.

Reports p50, p99 and max latency (ms) and the sample count, before the exports and
during them. Draws latency over time to bench/results/health.png, writes
bench/results/health.json, prints a table.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import threading
import time
from typing import Any

from bench.common import (
    RESULTS,
    add_env_option,
    machine,
    save_results,
    seeded_database,
    service,
    service_env,
)
from bench.memory import curl, every
from bench.plotting import line_chart
from tests.support.load import complete_response

EARLIER = {"country_code": "US"}
DOWNLOAD_RATE = "5M"
LEAD_SECONDS = 3.0
EXPORTS = 2


class HealthSampler(threading.Thread):
    """GET /health every ``1 / hz`` s; ``samples`` holds (seconds since ``origin``, ms)."""

    def __init__(self, url: str, hz: float, origin: float) -> None:
        super().__init__(daemon=True)
        self.url, self.hz, self.origin = url, hz, origin
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        # A raw keep-alive socket: an HTTP client library's own overhead (a millisecond or
        # more of Python per request, in this busy process) would be counted as the
        # server's latency.
        host, port = self.url.removeprefix("http://").split(":")
        request = f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        sock: socket.socket | None = None
        try:
            for _ in every(1 / self.hz):
                if self.stopping.is_set():
                    return
                started = time.perf_counter()
                try:
                    if sock is None:
                        sock = socket.create_connection((host, int(port)), timeout=30)
                    sock.sendall(request)
                    response = b""
                    while not complete_response(response):
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise ConnectionError("the server closed the connection")
                        response += chunk
                except OSError:
                    self.errors += 1
                    if sock is not None:
                        sock.close()
                        sock = None
                    continue
                elapsed = time.perf_counter() - started
                if not response.startswith(b"HTTP/1.1 200"):
                    self.errors += 1
                    continue
                self.samples.append((started - self.origin, elapsed * 1000))
                if b"connection: close" in response.lower():
                    # Hypercorn ends a keep-alive connection after 1,000 requests.
                    sock.close()
                    sock = None
        finally:
            if sock is not None:
                sock.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def summary(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "samples": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--hz", type=float, default=20, help="/health requests a second")
    parser.add_argument("--downloads", type=int, default=2, help="curl clients at 5 MB/s")
    parser.add_argument("--exports", type=int, default=EXPORTS, help="full exports at once")
    add_env_option(parser)
    args = parser.parse_args()
    env, name = service_env(args.env, "health")

    with (
        seeded_database(args.database_url, args.rows) as conninfo,
        service(conninfo, **env) as app,
    ):
        _, earlier_id = app.export(EARLIER)
        download_url = f"{app.url}/exports/{earlier_id}/download"
        origin = time.perf_counter()
        sampler = HealthSampler(app.url, args.hz, origin)
        sampler.start()
        time.sleep(LEAD_SECONDS)

        started = time.perf_counter() - origin
        clients = [curl(download_url, DOWNLOAD_RATE) for _ in range(args.downloads)]
        export_ids = []
        for _ in range(args.exports):
            response = app.client.post("/exports/csv")
            response.raise_for_status()
            export_ids.append(response.json()["exportId"])
        downloads_done = 0
        pending = set(export_ids)
        while pending:
            for i, client in enumerate(clients):
                if client.poll() is not None:  # finished: download it again
                    downloads_done += client.returncode == 0
                    clients[i] = curl(download_url, DOWNLOAD_RATE)
            for export_id in list(pending):
                doc = app.client.get(f"/exports/{export_id}/status").json()
                if doc["status"] in ("failed", "cancelled"):
                    raise RuntimeError(f"export {export_id} {doc['status']}: {doc['error']}")
                if doc["status"] == "completed":
                    pending.discard(export_id)
            time.sleep(0.1)
        ended = time.perf_counter() - origin
        sampler.stopping.set()
        sampler.join()
        for client in clients:
            client.terminate()
            client.wait()
        final = app.client.get(f"/exports/{export_ids[0]}/status").json()["progress"]
        earlier_bytes = app.client.get(f"/exports/{earlier_id}/status").json()["fileSize"]
        for export_id in [*export_ids, earlier_id]:
            app.client.delete(f"/exports/{export_id}")

    before = [ms for t, ms in sampler.samples if t < started]
    during = [ms for t, ms in sampler.samples if started <= t <= ended]
    report = {
        "machine": machine(),
        "rows": args.rows,
        "hz": args.hz,
        "downloads": args.downloads,
        "download_rate": DOWNLOAD_RATE,
        "earlier_export_params": EARLIER,
        "earlier_export_bytes": earlier_bytes,
        "exports": args.exports,
        "service_env": env,
        "export_rows": final["processedRows"],
        "exports_seconds": round(ended - started, 2),
        "downloads_completed": downloads_done,
        "errors": sampler.errors,
        "before_exports": summary(before),
        "during_exports": summary(during),
        "samples": [[round(t, 3), round(ms, 2)] for t, ms in sampler.samples],
    }
    save_results(name, report)
    line_chart(
        RESULTS / f"{name}.png",
        [t for t, _ in sampler.samples],
        [ms for _, ms in sampler.samples],
        title=(
            f"/health latency at {args.hz:g} Hz: {args.exports} full exports, "
            f"{args.downloads} downloads at {DOWNLOAD_RATE}/s"
        ),
        xlabel="time (s)",
        ylabel="latency (ms)",
        marks=[(started, "exports start"), (ended, "exports completed")],
        marker=".",
    )

    print(
        f"{args.exports} full exports of {report['export_rows']:,} rows in "
        f"{report['exports_seconds']:.1f} s; {args.downloads} clients at {DOWNLOAD_RATE}/s "
        f"completed {downloads_done} downloads of {earlier_bytes / 1e6:.1f} MB; "
        f"{sampler.errors} failed /health requests"
    )
    print(f"{'/health':<16} {'samples':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, key in (("before exports", "before_exports"), ("during exports", "during_exports")):
        r = report[key]
        if r["samples"]:
            print(
                f"{label:<16} {r['samples']:>8} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                f"{r['max_ms']:>8.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
