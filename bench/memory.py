"""The server's memory (RSS) through a full export while slow clients download another.

    .venv/bin/python -m bench.memory [--rows 10000000] [--database-url URL] [--clients 4]
                                     [--rate 50k] [--env NAME=VALUE ...]

An earlier, small export (country_code=US) is made first; `--clients` curl processes then
download it at `--rate` each (`curl --limit-rate`), and a full export (POST /exports/csv,
no parameters) starts. Every 100 ms, from 1 s before that export until 1 s after it
completed, the RSS of the `exporter serve` process and its children (recursively, with
psutil; PostgreSQL is not one of them) is sampled together with the export's progress
(GET /exports/{id}/status). The curl clients are stopped when the export completes.

Reports the peak RSS, the RSS at 10% of the rows (the first sample at or after 10% of
processedRows/totalRows) and at 100% (the first sample that sees the export completed), and
the flatness: max - min RSS between those two samples. Draws RSS over time to
bench/results/memory.png, writes bench/results/memory.json, prints a table. `--env
NAME=VALUE` (repeatable) sets the service's environment, e.g. `--env BATCH_ROWS=20000`;
the results' names then carry the values.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from bench.common import (
    RESULTS,
    add_env_option,
    machine,
    save_results,
    seeded_database,
    service,
    service_env,
)
from bench.plotting import line_chart

SAMPLE_SECONDS = 0.1
# The export the slow clients download: small, so that it is made quickly.
EARLIER = {"country_code": "US"}
MB = 1e6


def tree_total(pid: int, measure: Callable[[psutil.Process], int]) -> int:
    """``measure`` summed over process ``pid`` and all its descendants."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += measure(process)
    return total


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and all its descendants."""
    return tree_total(pid, lambda process: int(process.memory_info().rss))


def every(seconds: float) -> Iterator[float]:
    """Yields every ``seconds`` (ticks missed while the caller was busy are skipped): the
    time since the first tick."""
    start = next_tick = time.perf_counter()
    while True:
        yield time.perf_counter() - start
        next_tick += seconds
        delay = next_tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.perf_counter()


def curl(url: str, rate: str, out: str = "/dev/null") -> subprocess.Popen[bytes]:
    """A download of ``url`` at ``rate`` bytes/s (curl's units: 50k, 5M) into ``out``."""
    return subprocess.Popen(
        ["curl", "-s", "-f", "--http1.1", "--limit-rate", rate, "-o", out, url],
        stdout=subprocess.DEVNULL,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", default="50k", help="each client's curl --limit-rate")
    add_env_option(parser)
    args = parser.parse_args()
    env, name = service_env(args.env, "memory")

    samples: list[dict[str, Any]] = []
    with (
        seeded_database(args.database_url, args.rows) as conninfo,
        service(conninfo, **env) as app,
    ):
        _, earlier_id = app.export(EARLIER)
        pid = app.process.pid
        clients = [
            curl(f"{app.url}/exports/{earlier_id}/download", args.rate) for _ in range(args.clients)
        ]
        export_id = None
        started = ended = None
        running_at_end = 0
        for t in every(SAMPLE_SECONDS):
            sample: dict[str, Any] = {"t": round(t, 3), "rss_mb": round(tree_rss(pid) / MB, 2)}
            if export_id is not None and ended is None:
                doc = app.client.get(f"/exports/{export_id}/status").json()
                if doc["status"] in ("failed", "cancelled"):
                    raise RuntimeError(f"export {export_id} {doc['status']}: {doc['error']}")
                progress = doc["progress"]
                done = doc["status"] == "completed"
                total = progress["totalRows"]
                sample["status"] = doc["status"]
                sample["processed_rows"] = progress["processedRows"]
                sample["total_rows"] = total
                fraction = progress["processedRows"] / total if total else 0.0
                sample["fraction"] = 1.0 if done else round(fraction, 4)
                if done:
                    ended = t
                    running_at_end = sum(c.poll() is None for c in clients)
                    for client in clients:
                        client.terminate()
            samples.append(sample)
            if export_id is None and t >= 1.0:
                started = t
                response = app.client.post("/exports/csv")
                response.raise_for_status()
                export_id = response.json()["exportId"]
            if ended is not None and t >= ended + 1.0:
                break
        for client in clients:
            client.wait()
        final = app.client.get(f"/exports/{export_id}/status").json()["progress"]
        app.client.delete(f"/exports/{export_id}")
        app.client.delete(f"/exports/{earlier_id}")
    assert started is not None and ended is not None

    during = [s for s in samples if "fraction" in s]
    at_10 = next(i for i, s in enumerate(samples) if s.get("fraction", 0.0) >= 0.1)
    at_100 = next(i for i, s in enumerate(samples) if s.get("status") == "completed")
    window = [s["rss_mb"] for s in samples[at_10 : at_100 + 1]]
    report = {
        "machine": machine(),
        "rows": args.rows,
        "clients": args.clients,
        "rate": args.rate,
        "service_env": env,
        "earlier_export_params": EARLIER,
        "sample_seconds": SAMPLE_SECONDS,
        "export_rows": final["processedRows"],
        "export_seconds": round(ended - started, 2),
        "clients_still_downloading_at_end": running_at_end,
        "rss_before_export_mb": samples[0]["rss_mb"],
        "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "rss_at_10_percent_mb": samples[at_10]["rss_mb"],
        "rss_at_100_percent_mb": samples[at_100]["rss_mb"],
        "flatness_mb": round(max(window) - min(window), 2),
        "rss_after_export_mb": samples[-1]["rss_mb"],
        "samples_during_export": len(during),
        "samples": samples,
    }
    save_results(name, report)
    line_chart(
        RESULTS / f"{name}.png",
        [s["t"] for s in samples],
        [s["rss_mb"] for s in samples],
        title=(
            f"exporter serve RSS: full export of {report['export_rows']:,} rows, "
            f"{args.clients} clients downloading at {args.rate}"
        ),
        xlabel="time (s)",
        ylabel="RSS (MB)",
        marks=[(started, "export starts"), (ended, "export completed")],
    )

    print(
        f"full export: {report['export_rows']:,} rows in {report['export_seconds']:.1f} s; "
        f"{args.clients} clients at {args.rate} ({running_at_end} still downloading at the end)"
    )
    print(f"{'RSS of exporter serve':<28} {'MB':>8}")
    for label, key in (
        ("before the export", "rss_before_export_mb"),
        ("at 10% of rows", "rss_at_10_percent_mb"),
        ("at 100% of rows", "rss_at_100_percent_mb"),
        ("peak", "rss_peak_mb"),
        ("flatness (10% → 100%)", "flatness_mb"),
        ("1 s after the export", "rss_after_export_mb"),
    ):
        print(f"{label:<28} {report[key]:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
