"""Download throughput and server CPU: sendfile against the chunked fallback, gzip against
identity, on one full export (919 MB for 10M rows).

    .venv/bin/python -m bench.downloads [--rows 10000000] [--database-url URL] [--repeat 3]

One export is made, then downloaded over loopback with curl (to /dev/null) by a service
with zero-copy on, and by one with ZERO_COPY=0, `--repeat` times each, alternating so that
the machine's noise falls on both alike. Reports the best and median of throughput and
the service's CPU seconds per GB sent. Writes bench/results/downloads.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from typing import Any

from bench.common import EXPORTS, Service, machine, save_results, seeded_database, service


def download(app: Service, export_id: str, encoding: str) -> dict[str, float]:
    cpu_before = app.cpu_seconds()
    out = subprocess.run(
        ["curl", "-s", "-f", "--http1.1", "-H", f"Accept-Encoding: {encoding}",
         "-o", "/dev/null", "-w", "%{time_total} %{size_download}",
         f"{app.url}/exports/{export_id}/download"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    cpu = app.cpu_seconds() - cpu_before
    seconds, size = (float(x) for x in out.split())
    return {"seconds": seconds, "bytes": size, "cpu_seconds_per_gb": cpu / (size / 1e9)}


def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    rates = [r["bytes"] / r["seconds"] / 1e6 for r in runs]
    cpu = [r["cpu_seconds_per_gb"] for r in runs]
    return {
        "bytes": int(runs[0]["bytes"]),
        "seconds_median": round(statistics.median(r["seconds"] for r in runs), 3),
        "mb_per_second_best": round(max(rates)),
        "mb_per_second_median": round(statistics.median(rates)),
        "cpu_seconds_per_gb_median": round(statistics.median(cpu), 3),
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    runs: dict[str, list[dict[str, float]]] = {
        "sendfile identity": [],
        "fallback identity": [],
        "sendfile gzip": [],
        "fallback gzip": [],
    }
    with seeded_database(args.database_url, args.rows) as conninfo:
        with service(conninfo) as app:
            _, export_id = app.export({})
        csv = EXPORTS / f"{export_id}.csv"
        for _ in range(args.repeat):
            for mode, zero_copy in (("sendfile", "1"), ("fallback", "0")):
                with service(conninfo, ZERO_COPY=zero_copy) as app:
                    for encoding in ("identity", "gzip"):
                        runs[f"{mode} {encoding}"].append(download(app, export_id, encoding))
        with service(conninfo) as app:
            app.client.delete(f"/exports/{export_id}")

    results = {name: summary(r) for name, r in runs.items()}
    report = {
        "machine": machine(),
        "rows": args.rows,
        "csv_bytes": csv.stat().st_size if csv.exists() else results["sendfile identity"]["bytes"],
        "results": results,
    }
    save_results("downloads", report)
    print(f"{'download':<20} {'MB':>8} {'s (median)':>11} {'MB/s best':>10} {'MB/s med':>9} "
          f"{'CPU s/GB':>9}")  # fmt: skip
    for name, r in results.items():
        print(
            f"{name:<20} {r['bytes'] / 1e6:>8.1f} {r['seconds_median']:>11.2f} "
            f"{r['mb_per_second_best']:>10} {r['mb_per_second_median']:>9} "
            f"{r['cpu_seconds_per_gb_median']:>9.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
