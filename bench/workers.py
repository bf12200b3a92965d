"""Exports in worker processes (`WORKERS`) against the all-in-one service, in one run.

    .venv/bin/python -m bench.workers [--rows 10000000] [--database-url URL] [--hz 20]
                                      [--downloads 2]

Two parts, each service started fresh, one after the other:

1. /health and the API process's memory. For the all-in-one `exporter serve` and then
   `exporter serve` with WORKERS=2: an earlier, small export (country_code=US) is made
   first; then /health is sampled `--hz` times a second on a keep-alive socket (as
   bench/health.py does), and the RSS of the process `service` started (the API process
   only, not its children) 5 times a second, together with that of its children (the
   workers). After 3 s, `--downloads` curl clients download the earlier export at 5 MB/s
   each, over and over, and two full exports start. Sampling stops when both completed.
   Reports /health p50/p99/max before and during the exports, the API process's peak and
   median RSS and CPU seconds during them, and the workers' peak RSS.
2. Throughput. `psql \\copy` of one full export (the baseline), then 4 full exports
   POSTed at once with WORKERS=1 and with WORKERS=2 (each worker runs
   MAX_CONCURRENT_EXPORTS, default 2, at a time: one worker runs 2 then 2, two run all
   4 at once). Wall time is the service's own, from the first export's createdAt to the
   last one's completedAt; rows/s is all 4 exports' rows over it. Every file must be
   byte-identical to psql's.

Status is polled every 0.5 s (each request costs the API process CPU). Every export must
end completed; all are deleted at the end. Writes bench/results/workers.json, prints
tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from bench.common import (
    DATA,
    EXPORTS,
    Service,
    machine,
    save_results,
    seeded_database,
    service,
)
from bench.health import HealthSampler, summary
from bench.memory import curl, every
from bench.throughput import files_equal, psql_copy
from exporter.core.request import parse_export_request

EARLIER = {"country_code": "US"}
DOWNLOAD_RATE = "5M"
LEAD_SECONDS = 3.0
HEALTH_EXPORTS = 2
HEALTH_WORKERS = 2
THROUGHPUT_EXPORTS = 4
THROUGHPUT_WORKERS = (1, 2)
POLL_SECONDS = 0.5
RSS_SECONDS = 0.2
# A warm-up export of no rows (no user has this country code): the path works end to end
# and the workers are up before anything is timed.
WARM_UP = {"country_code": "ZZ"}
MB = 1e6


class RssSampler(threading.Thread):
    """Every ``RSS_SECONDS``: the RSS of process ``pid`` and of each of its descendants.
    ``samples`` holds (seconds since ``origin``, the process's bytes, {child pid: bytes})."""

    def __init__(self, pid: int, origin: float) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.origin = origin
        self.samples: list[tuple[float, int, dict[int, int]]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        for _ in every(RSS_SECONDS):
            if self.stopping.is_set():
                return
            t = time.perf_counter() - self.origin
            try:
                own = int(self.process.memory_info().rss)
                children = self.process.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            rss = {}
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss[child.pid] = int(child.memory_info().rss)
            self.samples.append((t, own, rss))


def cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of process ``pid`` and each of its descendants, by pid."""
    root = psutil.Process(pid)
    seconds = {}
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def children(pid: int) -> list[int]:
    """The pids of process ``pid``'s descendants (none once it has exited)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def wait_for_workers(app: Service, workers: int, timeout: float = 30.0) -> int:
    """Wait until the API process has ``workers`` children (0: none expected), then make
    the warm-up export; returns how many children it has."""
    deadline = time.monotonic() + timeout
    while workers and len(children(app.process.pid)) < workers:
        if time.monotonic() > deadline:
            print(
                f"warning: WORKERS={workers} but the API process has "
                f"{len(children(app.process.pid))} children after {timeout:.0f} s",
                file=sys.stderr,
            )
            break
        time.sleep(0.2)
    _, warm_up_id = app.export(WARM_UP)
    app.client.delete(f"/exports/{warm_up_id}")
    return len(children(app.process.pid))


def post_export(app: Service, ids: list[str]) -> str:
    response = app.client.post("/exports/csv")
    response.raise_for_status()
    export_id = str(response.json()["exportId"])
    ids.append(export_id)
    return export_id


def check(doc: dict[str, Any]) -> bool:
    """Whether the export is completed; raises if it failed or was cancelled."""
    if doc["status"] in ("failed", "cancelled", "expired"):
        raise RuntimeError(f"export {doc['exportId']} {doc['status']}: {doc['error']}")
    return bool(doc["status"] == "completed")


def wait_completed(
    app: Service, export_ids: list[str], between: Callable[[], None]
) -> dict[str, dict[str, Any]]:
    """Poll the exports gently (every POLL_SECONDS, calling ``between`` each time) until
    every one is completed; returns their final status documents."""
    pending = set(export_ids)
    docs: dict[str, dict[str, Any]] = {}
    while pending:
        time.sleep(POLL_SECONDS)
        between()
        for export_id in list(pending):
            doc = app.client.get(f"/exports/{export_id}/status").json()
            if check(doc):
                pending.discard(export_id)
                docs[export_id] = doc
    return docs


def delete_all(app: Service, ids: list[str]) -> list[str]:
    """DELETE every export of ``ids``; returns those whose CSV file is still there."""
    for export_id in ids:
        with contextlib.suppress(Exception):
            app.client.delete(f"/exports/{export_id}")
    return [i for i in ids if (EXPORTS / f"{i}.csv").exists()]


def timestamp(doc: dict[str, Any], key: str) -> dt.datetime:
    return dt.datetime.fromisoformat(doc[key])


def mb(value: float) -> float:
    return round(value / MB, 1)


def health_run(conninfo: str, label: str, env: dict[str, str], hz: float, downloads: int) -> Any:
    """Part 1 for one way of running the service: see the module's docstring."""
    workers = int(env.get("WORKERS", "0"))
    ids: list[str] = []
    with service(conninfo, **env) as app:
        try:
            pid = app.process.pid
            children_at_start = wait_for_workers(app, workers)
            _, earlier_id = app.export(EARLIER)
            ids.append(earlier_id)
            download_url = f"{app.url}/exports/{earlier_id}/download"
            origin = time.perf_counter()
            sampler = HealthSampler(app.url, hz, origin)
            rss = RssSampler(pid, origin)
            sampler.start()
            rss.start()
            time.sleep(LEAD_SECONDS)

            cpu_before = cpu_seconds(pid)
            started = time.perf_counter() - origin
            clients = [curl(download_url, DOWNLOAD_RATE) for _ in range(downloads)]
            export_ids = [post_export(app, ids) for _ in range(HEALTH_EXPORTS)]
            downloads_done = 0

            def download_again() -> None:
                nonlocal downloads_done
                for i, client in enumerate(clients):
                    if client.poll() is not None:  # finished: download it again
                        downloads_done += client.returncode == 0
                        clients[i] = curl(download_url, DOWNLOAD_RATE)

            docs = wait_completed(app, export_ids, download_again)
            ended = time.perf_counter() - origin
            cpu_after = cpu_seconds(pid)
            sampler.stopping.set()
            rss.stopping.set()
            sampler.join()
            rss.join()
            for client in clients:
                client.terminate()
                client.wait()
            earlier_bytes = app.client.get(f"/exports/{earlier_id}/status").json()["fileSize"]
        finally:
            left = delete_all(app, ids)
            worker_pids = children(pid)
    still_running = [p for p in worker_pids if psutil.pid_exists(p)]

    before = [ms for t, ms in sampler.samples if t < started]
    during = [ms for t, ms in sampler.samples if started <= t <= ended]
    api_rss = [own for t, own, _ in rss.samples if started <= t <= ended]
    api_rss_before = [own for t, own, _ in rss.samples if t < started]
    per_worker: dict[int, int] = {}
    workers_total: list[int] = []
    workers_before = [sum(child_rss.values()) for t, _, child_rss in rss.samples if t < started]
    for t, _, child_rss in rss.samples:
        if started <= t <= ended:
            workers_total.append(sum(child_rss.values()))
            for child, value in child_rss.items():
                per_worker[child] = max(per_worker.get(child, 0), value)
    worker_cpu = sum(
        seconds - cpu_before.get(p, 0.0) for p, seconds in cpu_after.items() if p != pid
    )
    export_seconds = [
        (timestamp(d, "completedAt") - timestamp(d, "createdAt")).total_seconds()
        for d in docs.values()
    ]
    return {
        "label": label,
        "env": env,
        "worker_processes_at_start": children_at_start,
        "worker_processes_seen": len(per_worker),
        "export_rows": [d["progress"]["processedRows"] for d in docs.values()],
        "export_seconds": [round(s, 2) for s in export_seconds],
        "exports_wall_seconds": round(ended - started, 2),
        "earlier_export_bytes": earlier_bytes,
        "downloads_completed": downloads_done,
        "health_errors": sampler.errors,
        "health_before": summary(before),
        "health_during": summary(during),
        "api_rss_before_mb": mb(statistics.median(api_rss_before)) if api_rss_before else None,
        "api_rss_peak_mb": mb(max(api_rss)),
        "api_rss_median_mb": mb(statistics.median(api_rss)),
        "api_cpu_seconds": round(cpu_after.get(pid, 0.0) - cpu_before.get(pid, 0.0), 2),
        "workers_cpu_seconds": round(worker_cpu, 2),
        "workers_rss_before_mb": mb(statistics.median(workers_before)) if per_worker else None,
        "worker_rss_peak_mb": mb(max(per_worker.values())) if per_worker else None,
        "worker_rss_peaks_mb": [mb(value) for value in per_worker.values()],
        "worker_cpu_seconds_each": [
            round(seconds - cpu_before.get(p, 0.0), 2)
            for p, seconds in cpu_after.items()
            if p != pid
        ],
        "workers_rss_total_peak_mb": mb(max(workers_total)) if per_worker else None,
        "rss_samples": len(api_rss),
        "files_left_after_delete": left,
        "worker_processes_left_after_stop": still_running,
    }


def throughput_run(conninfo: str, workers: int, baseline: Any) -> Any:
    """Part 2 for WORKERS=``workers``: see the module's docstring."""
    ids: list[str] = []
    with service(conninfo, WORKERS=str(workers)) as app:
        try:
            pid = app.process.pid
            children_at_start = wait_for_workers(app, workers)
            cpu_before = cpu_seconds(pid)
            started = time.perf_counter()
            export_ids = [post_export(app, ids) for _ in range(THROUGHPUT_EXPORTS)]
            most_children = children_at_start

            def count_children() -> None:
                nonlocal most_children
                most_children = max(most_children, len(children(pid)))

            docs = wait_completed(app, export_ids, count_children)
            client_wall = time.perf_counter() - started
            cpu_after = cpu_seconds(pid)
            identical = [files_equal(EXPORTS / f"{i}.csv", baseline) for i in export_ids]
        finally:
            left = delete_all(app, ids)
            worker_pids = children(pid)
    still_running = [p for p in worker_pids if psutil.pid_exists(p)]

    ordered = [docs[i] for i in export_ids]
    first = min(timestamp(d, "createdAt") for d in ordered)
    wall = (max(timestamp(d, "completedAt") for d in ordered) - first).total_seconds()
    spans = [
        (
            (timestamp(d, "startedAt") - first).total_seconds(),
            (timestamp(d, "completedAt") - first).total_seconds(),
        )
        for d in ordered
    ]
    # The most exports running at once: at some export's start, those started and not done.
    at_once = max(sum(s <= start < e for s, e in spans) for start, _ in spans)
    rows = sum(d["progress"]["processedRows"] for d in ordered)
    return {
        "label": f"WORKERS={workers}",
        "workers": workers,
        "worker_processes_at_start": children_at_start,
        "worker_processes_most": most_children,
        "exports": THROUGHPUT_EXPORTS,
        "rows": rows,
        "bytes": sum(d["fileSize"] for d in ordered),
        "wall_seconds": round(wall, 2),
        "client_wall_seconds": round(client_wall, 2),
        "rows_per_second": round(rows / wall),
        "most_running_at_once": at_once,
        "spans_seconds": [[round(s, 2), round(e, 2)] for s, e in spans],
        "api_cpu_seconds": round(cpu_after.get(pid, 0.0) - cpu_before.get(pid, 0.0), 2),
        "workers_cpu_seconds": round(
            sum(s - cpu_before.get(p, 0.0) for p, s in cpu_after.items() if p != pid), 2
        ),
        "identical": all(identical),
        "files_left_after_delete": left,
        "worker_processes_left_after_stop": still_running,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--hz", type=float, default=20, help="/health requests a second")
    parser.add_argument("--downloads", type=int, default=2, help="curl clients at 5 MB/s")
    args = parser.parse_args()
    # The all-in-one runs must not inherit a WORKERS of the caller's environment.
    os.environ.pop("WORKERS", None)

    with seeded_database(args.database_url, args.rows) as conninfo:
        health = [
            health_run(conninfo, "all-in-one", {}, args.hz, args.downloads),
            health_run(
                conninfo,
                f"WORKERS={HEALTH_WORKERS}",
                {"WORKERS": str(HEALTH_WORKERS)},
                args.hz,
                args.downloads,
            ),
        ]
        baseline = DATA / "psql.csv"
        try:
            psql_seconds = psql_copy(conninfo, parse_export_request({}), baseline)
            psql_bytes = baseline.stat().st_size
            throughput = [throughput_run(conninfo, n, baseline) for n in THROUGHPUT_WORKERS]
        finally:
            baseline.unlink(missing_ok=True)

    psql_rows_per_second = args.rows / psql_seconds
    for r in throughput:
        r["vs_psql_rows_per_second"] = round(r["rows_per_second"] / psql_rows_per_second, 2)
        r["ratio_to_psql_per_export"] = round(r["wall_seconds"] / (r["exports"] * psql_seconds), 2)
    one, two = throughput
    report = {
        "machine": machine(),
        "rows": args.rows,
        "hz": args.hz,
        "downloads": args.downloads,
        "download_rate": DOWNLOAD_RATE,
        "poll_seconds": POLL_SECONDS,
        "rss_sample_seconds": RSS_SECONDS,
        "health": health,
        "psql": {
            "seconds": round(psql_seconds, 3),
            "bytes": psql_bytes,
            "rows_per_second": round(psql_rows_per_second),
        },
        "throughput": throughput,
        "speedup_2_workers_over_1": round(one["wall_seconds"] / two["wall_seconds"], 2),
    }
    save_results("workers", report)

    print(f"{machine()}; {args.rows:,} rows")
    print(
        f"\n/health at {args.hz:g} Hz and API process RSS during {HEALTH_EXPORTS} full exports "
        f"+ {args.downloads} downloads at {DOWNLOAD_RATE}/s"
    )
    print(
        f"{'service':<12} {'procs':>7} {'exports s':>9} {'samples':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'API RSS peak':>12} {'median':>7} {'API CPU s':>9} "
        f"{'worker RSS peak':>15} {'all workers':>11}"
    )
    for h in health:
        d = h["health_during"]
        worker_peak = "-" if h["worker_rss_peak_mb"] is None else f"{h['worker_rss_peak_mb']:.1f}"
        workers_all = (
            "-"
            if h["workers_rss_total_peak_mb"] is None
            else f"{h['workers_rss_total_peak_mb']:.1f}"
        )
        print(
            f"{h['label']:<12} {h['worker_processes_seen']:>7} {h['exports_wall_seconds']:>9.1f} "
            f"{d['samples']:>7} {d['p50_ms']:>7.1f} {d['p99_ms']:>7.1f} {d['max_ms']:>7.1f} "
            f"{h['api_rss_peak_mb']:>12.1f} {h['api_rss_median_mb']:>7.1f} "
            f"{h['api_cpu_seconds']:>9.1f} {worker_peak:>15} {workers_all:>11}"
        )
    for h in health:
        b = h["health_before"]
        print(
            f"  {h['label']}: before the exports p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, "
            f"API RSS {h['api_rss_before_mb']} MB, workers' RSS {h['workers_rss_before_mb']} MB; "
            f"{h['health_errors']} failed /health "
            f"requests; {h['downloads_completed']} downloads completed"
        )

    print(
        f"\n{THROUGHPUT_EXPORTS} full exports at once; psql \\copy of one: "
        f"{psql_seconds:.2f} s ({psql_rows_per_second:,.0f} rows/s, {psql_bytes / MB:.1f} MB)"
    )
    print(
        f"{'WORKERS':>7} {'processes':>9} {'at once':>7} {'rows':>11} {'wall s':>8} "
        f"{'rows/s':>10} {'x psql rows/s':>13} {'wall/(4 psql)':>13} {'API CPU s':>9} "
        f"{'workers CPU s':>13} {'same':>5}"
    )
    for r in throughput:
        print(
            f"{r['workers']:>7} {r['worker_processes_most']:>9} {r['most_running_at_once']:>7} "
            f"{r['rows']:>11,} {r['wall_seconds']:>8.2f} {r['rows_per_second']:>10,} "
            f"{r['vs_psql_rows_per_second']:>13.2f} {r['ratio_to_psql_per_export']:>13.2f} "
            f"{r['api_cpu_seconds']:>9.1f} {r['workers_cpu_seconds']:>13.1f} "
            f"{r['identical']!s:>5}"
        )
    print(f"WORKERS=2 over WORKERS=1: {report['speedup_2_workers_over_1']:.2f}x")

    problems = [
        f"{part['label']}: {what}"
        for part in [*health, *throughput]
        for what, bad in (
            ("files left after DELETE", part["files_left_after_delete"]),
            (
                "worker processes left after the service stopped",
                part["worker_processes_left_after_stop"],
            ),
        )
        if bad
    ]
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0 if all(r["identical"] for r in throughput) else 1


if __name__ == "__main__":
    sys.exit(main())
