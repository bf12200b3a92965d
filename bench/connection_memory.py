"""What one slow download holds in the server's Python heap, by the package that allocated it.

    .venv/bin/python -m bench.connection_memory [--clients 500] [--rate 16k] [--settle 25]
                                                [--rows 10000000] [--database-url URL]

The service runs with tracemalloc on (8 frames) and a signal handler, installed through a
``sitecustomize`` module on its PYTHONPATH, that writes a heap snapshot on SIGUSR1. One
export (country_code=US) is made; a snapshot is taken; `--clients` slow readers (those of
bench.slow_clients --many, in a process of their own) start downloading it at `--rate`;
after `--settle` seconds (every request has been answered and is streaming) a second
snapshot is taken. The difference, divided by the number of clients, is grouped by the
package of the allocating frame. tracemalloc slows the service a lot: this measures what
is held, not how fast. Writes bench/results/connection_memory.json, prints a table.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.common import bytes_per_second, machine, save_results, seeded_database, service

SITECUSTOMIZE = """
import os, signal, tracemalloc

def _snapshot(signum, frame):
    import gc
    gc.collect()
    folder = os.environ["BENCH_SNAPSHOT_DIR"]
    count = len(os.listdir(folder))
    tracemalloc.take_snapshot().dump(os.path.join(folder, f"{count:03d}.snapshot"))

signal.signal(signal.SIGUSR1, _snapshot)
"""


def package(filename: str) -> str:
    """The installed package, ``exporter``, or the standard library module of a frame."""
    if match := re.search(r"site-packages/([^/]+)", filename):
        return match.group(1)
    if "<attrs generated" in filename:
        return "trio"  # trio's classes are attrs classes: their __init__ is generated
    if f"{os.sep}exporter{os.sep}" in filename:
        return "exporter"
    return "stdlib " + Path(filename).name


def take_snapshot(pid: int, folder: Path) -> tracemalloc.Snapshot:
    before = set(folder.iterdir())
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(folder.iterdir()) - before
        if new:
            path = new.pop()
            time.sleep(1)  # the dump is written by then
            return tracemalloc.Snapshot.load(str(path))
        time.sleep(0.2)
    raise RuntimeError("the service wrote no heap snapshot")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rate", default="16k")
    parser.add_argument("--settle", type=float, default=25.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        hook, snapshots = Path(scratch, "hook"), Path(scratch, "snapshots")
        hook.mkdir()
        snapshots.mkdir()
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        with (
            seeded_database(args.database_url, args.rows) as conninfo,
            service(
                conninfo,
                PYTHONPATH=str(hook),
                PYTHONTRACEMALLOC="8",
                BENCH_SNAPSHOT_DIR=str(snapshots),
            ) as app,
        ):
            _, export_id = app.export({"country_code": "US"})
            url = f"{app.url}/exports/{export_id}/download"
            time.sleep(2)
            before = take_snapshot(app.process.pid, snapshots)
            seconds = args.settle + 30  # the readers outlive the second snapshot
            readers = subprocess.Popen(
                [sys.executable, "-m", "bench.slow_clients", "--readers-child", url,
                 str(args.clients), str(bytes_per_second(args.rate)), str(seconds)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert readers.stdout is not None
            assert readers.stdout.readline().strip() == "connected"
            time.sleep(args.settle)
            during = take_snapshot(app.process.pid, snapshots)
            readers.wait()
            app.client.delete(f"/exports/{export_id}")

    by_package: collections.Counter[str] = collections.Counter()
    for stat in during.compare_to(before, "traceback"):
        by_package[package(stat.traceback[-1].filename)] += stat.size_diff
    per_connection = {
        name: round(size / args.clients / 1024, 2) for name, size in by_package.most_common()
    }
    total = round(sum(by_package.values()) / args.clients / 1024, 1)
    report = {
        "machine": machine(),
        "clients": args.clients,
        "rate": args.rate,
        "settle_seconds": args.settle,
        "python_heap_kb_per_connection": total,
        "by_package_kb_per_connection": per_connection,
    }
    save_results("connection_memory", report)
    print(f"Python heap held per slow download ({args.clients} at {args.rate}/s): {total} KB")
    for name, kb in per_connection.items():
        if abs(kb) >= 0.1:
            print(f"{kb:>8.1f} KB  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
