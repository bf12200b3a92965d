"""Many slow clients downloading one export at once: the server's memory and open file
descriptors, and whether every client gets the file intact.

    .venv/bin/python -m bench.slow_clients [--rows 10000000] [--database-url URL]
                                           [--clients 8] [--rate 200k]
                                           [--params 'country_code=US&columns=id,email']
    .venv/bin/python -m bench.slow_clients --many 200,1000 [--rate 16k] [--seconds 30]
                                           [--params country_code=US]

One export is made (`--params`: its query string, a filtered one by default), then
`--clients` curl processes download it at once, at `--rate` each (`curl --limit-rate`), to
separate files in a temporary folder under the bench data folder. The RSS and the open
file descriptors (psutil's num_fds) of the `exporter serve` process and its children are
taken before the downloads, every 100 ms during them (the peak is reported), and 1 s after
the last one finished. Every downloaded file must be byte-identical to the export's file
in the export folder: the exit status is 1 if one is not (or a download failed). Writes
bench/results/slow_clients.json, prints a table.

`--many N,...`: for each N, N slow readers in one process of their own (trio, each on its
own connection, reading at `--rate` by sleeping between small reads) download the export
for `--seconds`, while /health is asked 10 times a second over a keep-alive socket (as
bench.health does). Reported against N: /health p50/p99/max during the downloads, and
the service's RSS over its idle RSS, per connection (the median of the second half of
the run, when every reader is connected). Writes bench/results/slow_clients_many.json.
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

from bench.common import (
    DATA,
    EXPORTS,
    bytes_per_second,
    machine,
    save_results,
    seeded_database,
    service,
)
from bench.health import HealthSampler, summary
from bench.memory import every, tree_rss, tree_total

MB = 1e6


def tree_fds(pid: int) -> int:
    """Open file descriptors of process ``pid`` and all its descendants."""
    return tree_total(pid, lambda process: int(process.num_fds()))


def snapshot(pid: int) -> dict[str, float]:
    return {"rss_mb": round(tree_rss(pid) / MB, 2), "fds": tree_fds(pid)}


async def _slow_reader(host: str, port: int, path: str, rate: int, got: list[int]) -> None:
    import trio

    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        started = trio.current_time()
        received = 0
        while data := await stream.receive_some(4096):
            received += len(data)
            got[0] += len(data)
            # Sleep until `rate` would have allowed what was received so far.
            await trio.sleep_until(started + received / rate)


def _readers_child(url: str, count: int, rate: int, seconds: float) -> None:
    """N slow readers (this module run with --readers-child): prints one line when all are
    connected, then a JSON line of bytes read and errors when --seconds are over."""
    import trio

    parts = urllib.parse.urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    got, errors = [0], [0]

    async def one() -> None:
        try:
            await _slow_reader(host, port, path, rate, got)
        except OSError:
            errors[0] += 1

    async def run() -> None:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one)
                    await trio.sleep(0.001)
                print("connected", flush=True)
                await trio.sleep_forever()

    trio.run(run)
    print(json.dumps({"bytes": got[0], "errors": errors[0]}), flush=True)


def many(args: argparse.Namespace, params: dict[str, str]) -> int:
    counts = [int(n) for n in args.many.split(",")]
    results: list[dict[str, Any]] = []
    with seeded_database(args.database_url, args.rows) as conninfo, service(conninfo) as app:
        _, export_id = app.export(params)
        url = f"{app.url}/exports/{export_id}/download"
        pid = app.process.pid
        for count in counts:
            time.sleep(2)
            idle = tree_rss(pid)
            origin = time.perf_counter()
            sampler = HealthSampler(app.url, 10, origin)
            sampler.start()
            child = subprocess.Popen(
                [sys.executable, "-m", "bench.slow_clients", "--readers-child", url,
                 str(count), str(bytes_per_second(args.rate)), str(args.seconds)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "connected"
            connected = time.perf_counter() - origin
            rss: list[tuple[float, int]] = []
            for t in every(0.1):
                if child.poll() is not None:
                    break
                rss.append((t, tree_rss(pid)))
            ended = time.perf_counter() - origin
            figures = json.loads(child.stdout.read().splitlines()[-1])
            sampler.stopping.set()
            sampler.join()
            steady = sorted(value for t, value in rss[len(rss) // 2 :])
            median = steady[len(steady) // 2] if steady else idle
            during = [ms for t, ms in sampler.samples if connected <= t <= ended]
            results.append(
                {
                    "clients": count,
                    "rate": args.rate,
                    "seconds": args.seconds,
                    "idle_rss_mb": round(idle / MB, 1),
                    "steady_rss_mb": round(median / MB, 1),
                    "rss_per_connection_kb": round((median - idle) / count / 1024, 1),
                    "health": summary(during),
                    "health_errors": sampler.errors,
                    "bytes_read": figures["bytes"],
                    "reader_errors": figures["errors"],
                }
            )
        app.client.delete(f"/exports/{export_id}")
    report = {"machine": machine(), "rows": args.rows, "params": params, "results": results}
    save_results("slow_clients_many", report)
    print(f"slow readers at {args.rate}/s for {args.seconds:g} s each, one export ({params})")
    print(
        f"{'clients':>8} {'idle MB':>8} {'steady MB':>10} {'KB/conn':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'errors':>7}"
    )
    for r in results:
        h = r["health"]
        print(
            f"{r['clients']:>8} {r['idle_rss_mb']:>8.1f} {r['steady_rss_mb']:>10.1f} "
            f"{r['rss_per_connection_kb']:>8.1f} {h['p50_ms'] or 0:>7.1f} {h['p99_ms'] or 0:>7.1f}"
            f" {h['max_ms'] or 0:>7.1f} {r['reader_errors'] + r['health_errors']:>7}"
        )
    return 0 if all(r["reader_errors"] + r["health_errors"] == 0 for r in results) else 1


def main() -> int:
    if sys.argv[1:2] == ["--readers-child"]:
        url, count, rate, seconds = sys.argv[2:6]
        _readers_child(url, int(count), int(rate), float(seconds))
        return 0
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
    parser.add_argument("--many", help="N,... slow readers in one process (see above)")
    parser.add_argument("--seconds", type=float, default=30, help="with --many: per N")
    args = parser.parse_args()
    params = dict(urllib.parse.parse_qsl(args.params, keep_blank_values=True))
    if args.many:
        return many(args, params)

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
    save_results("slow_clients", report)

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
