"""The memory of an `exporter worker` process: idle, and after it ran an export.

    .venv/bin/python -m bench.worker_memory [--rows 300000] [--database-url URL]
                                            [--rounds 3] [--tree PATH ...]

An API process (`exporter serve` with MAX_CONCURRENT_EXPORTS=0, from this checkout) takes
the exports; for each `--tree` (a checkout of the project: this one by default; give an
older one's to compare, e.g. a `git worktree` of an earlier commit) a worker is started
from that tree, its RSS read 2 s after its /health answers, then one full export of
`--rows` users is run by it and its RSS read again 1 s after it completed. The trees take
turns, `--rounds` times, so a drift of the machine touches all of them alike. Writes
bench/results/worker_memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from bench.common import EXPORTS, machine, save_results, seeded_database, service
from tests.support import free_port

HERE = Path(__file__).resolve().parent.parent


def _wait_for(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} never answered")
        time.sleep(0.1)


def _mib(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def measure(tree: Path, conninfo: str, api: httpx.Client) -> tuple[float, float]:
    """(idle RSS, RSS after one full export) of a worker started from ``tree``, in MiB."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": conninfo, "EXPORT_DIR": str(EXPORTS)}
    env["PYTHONPATH"] = str(tree)
    command = [sys.executable, "-m", "exporter", "worker", "--bind", f"127.0.0.1:{port}"]
    worker = subprocess.Popen(command, cwd=tree, env=env, stderr=subprocess.DEVNULL)
    try:
        _wait_for(f"http://127.0.0.1:{port}/health")
        time.sleep(2)
        idle = _mib(worker.pid)
        export_id = api.post("/exports/csv").json()["exportId"]
        while (status := api.get(f"/exports/{export_id}/status").json()["status"]) != "completed":
            if status in ("failed", "cancelled"):
                raise SystemExit(f"export {export_id} {status}")
            time.sleep(0.2)
        time.sleep(1)
        after = _mib(worker.pid)
        api.delete(f"/exports/{export_id}")
        return idle, after
    finally:
        worker.terminate()
        worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--database-url")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, action="append", help="a checkout (default: this)")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in args.tree or [HERE]]
    runs: dict[str, list[tuple[float, float]]] = {str(tree): [] for tree in trees}
    with (
        seeded_database(args.database_url, args.rows) as conninfo,
        service(conninfo, MAX_CONCURRENT_EXPORTS="0") as api,
    ):
        for _ in range(args.rounds):
            for tree in trees:
                runs[str(tree)].append(measure(tree, conninfo, api.client))
    print(f"worker RSS, MiB ({machine()}; {args.rows:,} rows)")
    print(f"{'tree':<40} {'idle':>16} {'after an export':>18}")
    for tree, figures in runs.items():
        idle = [f[0] for f in figures]
        after = [f[1] for f in figures]
        print(f"{tree[-40:]:<40} {min(idle):>7}-{max(idle):<8} {min(after):>8}-{max(after):<8}")
    save_results("worker_memory", {"machine": machine(), "rows": args.rows, "runs": runs})


if __name__ == "__main__":
    main()
