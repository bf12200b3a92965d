"""Many slow clients downloading one export at once: the server's memory and open file
descriptors, and whether every client gets the file intact.

    .venv/bin/python -m bench.slow_clients [--rows 10000000] [--database-url URL]
                                           [--clients 8] [--rate 200k]
                                           [--params 'country_code=US&columns=id,email']

One export is made (`--params`: its query string, a filtered one by default), then
`--clients` curl processes download it at once, at `--rate` each (`curl --limit-rate`), to
separate files in a temporary folder under the bench data folder. The RSS and the open
file descriptors (psutil's num_fds) of the `exporter serve` process and its children are
taken before the downloads, every 100 ms during them (the peak is reported), and 1 s after
the last one finished. Every downloaded file must be byte-identical to the export's file
in the export folder: the exit status is 1 if one is not (or a download failed). Writes
bench/results/slow_clients.json, prints a table.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from bench.common import DATA, EXPORTS, RESULTS, machine, seeded_database, service
from bench.memory import every, tree_rss, tree_total

MB = 1e6


def tree_fds(pid: int) -> int:
    """Open file descriptors of process ``pid`` and all its descendants."""
    return tree_total(pid, lambda process: int(process.num_fds()))


def snapshot(pid: int) -> dict[str, float]:
    return {"rss_mb": round(tree_rss(pid) / MB, 2), "fds": tree_fds(pid)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", default="200k", help="each client's curl --limit-rate")
    parser.add_argument(
        "--params",
        default="country_code=US&columns=id,email",
        help="the export's query string ('' for all)",
    )
    args = parser.parse_args()
    params = dict(urllib.parse.parse_qsl(args.params, keep_blank_values=True))

    with (
        seeded_database(args.database_url, args.rows) as conninfo,
        service(conninfo) as app,
        tempfile.TemporaryDirectory(dir=DATA, prefix="slow-clients-") as folder,
    ):
        _, export_id = app.export(params)
        csv = EXPORTS / f"{export_id}.csv"
        pid = app.process.pid
        before = snapshot(pid)
        outputs = [Path(folder) / f"client-{i}.csv" for i in range(args.clients)]
        curls = [
            subprocess.Popen(
                ["curl", "-s", "-f", "--http1.1", "--limit-rate", args.rate, "-o", str(out),
                 "-w", "%{http_code} %{size_download} %{time_total}",
                 f"{app.url}/exports/{export_id}/download"],
                stdout=subprocess.PIPE, text=True,
            )
            for out in outputs
        ]  # fmt: skip
        samples: list[dict[str, float]] = []
        for t in every(0.1):
            samples.append({"t": round(t, 3), **snapshot(pid)})
            if all(c.poll() is not None for c in curls):
                break
        downloads_seconds = samples[-1]["t"]
        time.sleep(1)
        after = snapshot(pid)
        clients: list[dict[str, Any]] = []
        for process, out in zip(curls, outputs, strict=True):
            written = process.communicate()[0].split()
            clients.append(
                {
                    "exit_code": process.returncode,
                    "http_status": int(written[0]) if written else None,
                    "bytes": int(written[1]) if written else 0,
                    "seconds": float(written[2]) if written else None,
                    "identical": out.exists() and filecmp.cmp(out, csv, shallow=False),
                }
            )
        size = csv.stat().st_size
        app.client.delete(f"/exports/{export_id}")

    during = {
        "rss_mb": max(s["rss_mb"] for s in samples),
        "fds": max(s["fds"] for s in samples),
    }
    identical = sum(c["identical"] and c["exit_code"] == 0 for c in clients)
    seconds = [c["seconds"] for c in clients if c["seconds"] is not None]
    report = {
        "machine": machine(),
        "rows": args.rows,
        "clients": args.clients,
        "rate": args.rate,
        "params": params,
        "export_bytes": size,
        "downloads_seconds": downloads_seconds,
        "before": before,
        "during_peak": during,
        "after": after,
        "identical_files": identical,
        "client_results": clients,
        "samples": samples,
    }
    (RESULTS / "slow_clients.json").write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"{args.clients} clients at {args.rate} downloading a {size / MB:.1f} MB export "
        f"({args.params or 'all rows'}): {min(seconds, default=0):.1f}"
        f" to {max(seconds, default=0):.1f} s each; {identical}/{args.clients} files identical"
    )
    print(f"{'exporter serve':<22} {'RSS MB':>8} {'open fds':>9}")
    for label, figures in (
        ("before downloads", before),
        ("during (peak)", during),
        ("after (+1 s)", after),
    ):
        print(f"{label:<22} {figures['rss_mb']:>8.1f} {figures['fds']:>9}")
    return 0 if identical == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())
