"""How to read COPY's output in the service's process: three readers, each beside the threads
an export runs (a writer and an isal compressor), against `psql \\copy` to a file.

    .venv/bin/python -m bench.copy_readers [--rows 10000000] [--repeat 1]

The readers, each feeding blocks of about 5,000 rows into a queue of four to a writer
thread (file write, then the block handed to a compressor thread: isal's raw deflate),
as the pipeline's reader, writer and compressor do:

- libpq: psycopg's `PQgetCopyData` called non-blocking, one row per call, waiting with
  `poll` (the service's reader before asyncpg);
- asyncpg: `copy_from_query` on an asyncio loop in the reader's thread, the service's
  reader (`exporter.export.copy_reader`);
- psql pipe: `psql \\copy … TO STDOUT` in a process of its own, its output read from a
  pipe in large reads.

Each reader's file must be byte-identical to psql's. Prints a table (wall and CPU
seconds of this process, ratio to psql) and writes bench/results/copy_readers.json.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg, which exporter.export.pipeline imports)
from isal import isal_zlib

from bench.common import DATA, machine, save_results, seeded_database
from exporter.export.connection import libpq_options, open_text_connection
from exporter.export.copy_reader import CopyReader, connect_arguments

SELECT = (
    "SELECT id, name, email, signup_date, country_code, subscription_tier, lifetime_value"
    " FROM users ORDER BY id"
)
BLOCK_ROWS = 5000
ENV = {**os.environ, "PGOPTIONS": libpq_options()}
_F_SETPIPE_SZ = 1031

Blocks = queue.Queue[bytes | None]


def write_and_compress(blocks: Blocks, path: str) -> None:
    """The writer: each block to the file, then to the compressor's thread."""
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    deflate = isal_zlib.compressobj(isal_zlib.ISAL_DEFAULT_COMPRESSION, isal_zlib.DEFLATED, -15)
    to_compress: Blocks = queue.Queue(2)

    def compress() -> None:
        while (block := to_compress.get()) is not None:
            deflate.compress(block)

    compressor = threading.Thread(target=compress)
    compressor.start()
    while (block := blocks.get()) is not None:
        os.write(out, block)
        to_compress.put(block)
    to_compress.put(None)
    compressor.join()
    os.close(out)


def read_libpq(conninfo: str, blocks: Blocks) -> None:
    conn = open_text_connection(conninfo, "bench libpq")
    pgconn = conn.pgconn
    poll = select.poll()
    poll.register(pgconn.socket, select.POLLIN)
    pgconn.send_query(f"COPY ({SELECT}) TO STDOUT WITH (FORMAT csv)".encode())
    while pgconn.is_busy():
        poll.poll()
        pgconn.consume_input()
    pgconn.get_result()
    lines: list[memoryview] = []
    while True:
        size, line = pgconn.get_copy_data(1)
        if size > 0:
            lines.append(line)
            if len(lines) == BLOCK_ROWS:
                blocks.put(b"".join(lines))
                lines = []
        elif size == 0:
            poll.poll()
            pgconn.consume_input()
        else:
            break
    if lines:
        blocks.put(b"".join(lines))
    conn.close()


def read_asyncpg(conninfo: str, blocks: Blocks) -> None:
    conn = open_text_connection(conninfo, "bench asyncpg")
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None
    reader = CopyReader(connect_arguments(conninfo, "bench asyncpg"), row[0].decode(), BLOCK_ROWS)
    try:
        reader.start()
        reader.open(SELECT, ",", '"')
        while True:
            _, block = reader.read()
            if not block:
                break
            blocks.put(block)
    finally:
        reader.close()
        conn.close()


def read_psql_pipe(conninfo: str, blocks: Blocks) -> None:
    command = f"\\copy ({SELECT}) TO STDOUT WITH (FORMAT csv)"
    with subprocess.Popen(
        ["psql", "-X", "-q", conninfo, "-c", command], stdout=subprocess.PIPE, env=ENV
    ) as psql:
        assert psql.stdout is not None
        fd = psql.stdout.fileno()
        fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
        pieces: list[bytes] = []
        size = 0
        while data := os.read(fd, 1 << 20):
            pieces.append(data)
            size += len(data)
            if size >= 460_000:
                blocks.put(b"".join(pieces))
                pieces, size = [], 0
        if pieces:
            blocks.put(b"".join(pieces))
    assert psql.returncode == 0


READERS: dict[str, Callable[[str, Blocks], None]] = {
    "libpq, a call per row": read_libpq,
    "asyncpg (the service's)": read_asyncpg,
    "psql pipe": read_psql_pipe,
}


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def psql_copy(conninfo: str, path: str) -> float:
    started = time.perf_counter()
    command = f"\\copy ({SELECT}) TO '{path}' WITH (FORMAT csv)"
    subprocess.run(["psql", "-X", "-q", conninfo, "-c", command], check=True, env=ENV)
    return time.perf_counter() - started


def run_reader(conninfo: str, reader: Callable[[str, Blocks], None], path: str) -> dict[str, Any]:
    blocks: Blocks = queue.Queue(4)
    cpu, started = cpu_seconds(), time.perf_counter()
    writer = threading.Thread(target=write_and_compress, args=(blocks, path))
    writer.start()
    try:
        reader(conninfo, blocks)
    finally:
        blocks.put(None)
        writer.join()
    return {"seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu}


def same(a: str, b: str) -> bool:
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with seeded_database(args.database_url, args.rows) as conninfo:
        baseline = str(DATA / "copy_readers_psql.csv")
        out = str(DATA / "copy_readers.csv")
        for round_ in range(args.repeat):
            psql_seconds = psql_copy(conninfo, baseline)
            results.append({"round": round_, "reader": "psql \\copy to a file",
                            "seconds": psql_seconds, "cpu_seconds": 0.0, "ratio": 1.0,
                            "identical": True})  # fmt: skip
            for name, reader in READERS.items():
                print(f"round {round_ + 1}: {name}…", file=sys.stderr)
                figures = run_reader(conninfo, reader, out)
                figures |= {"round": round_, "reader": name, "identical": same(out, baseline)}
                figures["ratio"] = figures["seconds"] / psql_seconds
                results.append(figures)
        for path in (baseline, out):
            os.unlink(path)
    report = {"machine": machine(), "rows": args.rows, "results": results}
    save_results("copy_readers", report)
    print(f"{machine()}; {args.rows:,} rows; reader + writer + isal compressor in threads")
    print(f"{'reader':<26} {'round':>5} {'seconds':>8} {'x psql':>7} {'CPU s':>7} {'same':>5}")
    for r in results:
        print(
            f"{r['reader']:<26} {r['round'] + 1:>5} {r['seconds']:>8.2f} {r['ratio']:>7.2f}"
            f" {r['cpu_seconds']:>7.2f} {r['identical']!s:>5}"
        )
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
