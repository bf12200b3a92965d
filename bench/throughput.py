"""Time full exports through the HTTP API against `psql \\copy` of the same SELECT.

    .venv/bin/python -m bench.throughput [--rows 10000000] [--database-url URL]

Without --database-url it uses an embedded PostgreSQL under bench/data/ (seeded on first
use, kept for later runs). The service runs as a separate `exporter serve` process, as in
production. For each scenario, in the same run: psql's \\copy to a file, then the export
(POST → status completed); the files must be byte-identical. Prints a table and writes
bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter/__init__.py)
import httpx
import psycopg

from exporter.embedded import embedded_database
from exporter.query import export_select
from exporter.request import ExportRequest, parse_export_request
from exporter.schema import apply_schema, count_users, seed_users

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"

SCENARIOS: list[tuple[str, dict[str, str]]] = [
    ("all columns", {}),
    ("US, 2 columns", {"country_code": "US", "columns": "id,email"}),
    ("tab + single quote", {"delimiter": "\t", "quoteChar": "'"}),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with embedded_database(DATA / "pgdata") as conninfo:
            yield conninfo


def psql_copy(conninfo: str, request: ExportRequest, out: Path) -> float:
    select, params = export_select(request)
    with psycopg.connect(conninfo) as conn:
        text = select.as_string(conn)
        # Parameters inlined as literals: \copy takes no bind parameters.
        for name, value in params.items():
            text = text.replace(f"%({name})s", psycopg.sql.Literal(value).as_string(conn))
        d = psycopg.sql.Literal(request.delimiter).as_string(conn)
        q = psycopg.sql.Literal(request.quote_char).as_string(conn)
    command = f"\\copy ({text}) TO '{out}' WITH (FORMAT csv, HEADER true, DELIMITER {d}, QUOTE {q})"
    env = {**os.environ, "PGOPTIONS": "-c TimeZone=UTC -c DateStyle=ISO,MDY"}
    started = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", conninfo, "-c", command], check=True, env=env)
    return time.perf_counter() - started


def api_export(client: httpx.Client, params: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    response = client.post("/exports/csv", params=params)
    response.raise_for_status()
    export_id = response.json()["exportId"]
    while True:
        doc = client.get(f"/exports/{export_id}/status").json()
        if doc["status"] == "completed":
            return time.perf_counter() - started, export_id
        if doc["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"export {export_id} {doc['status']}: {doc['error']}")
        time.sleep(0.05)


def files_equal(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    args = parser.parse_args()

    DATA.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    exports = DATA / "exports"
    exports.mkdir(exist_ok=True)
    results: list[dict[str, Any]] = []
    with database(args.database_url) as conninfo:
        apply_schema(conninfo, "schema")
        if count_users(conninfo) != args.rows:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("TRUNCATE users RESTART IDENTITY")
            print(f"seeding {args.rows:,} users…", file=sys.stderr)
            seed_users(conninfo, args.rows)
        apply_schema(conninfo, "indexes")

        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": conninfo,
            "EXPORT_DIR": str(exports),
            "BIND": f"127.0.0.1:{port}",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "exporter", "serve"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                for _ in range(100):
                    with contextlib.suppress(httpx.TransportError):
                        if client.get("/health").status_code == 200:
                            break
                    time.sleep(0.1)
                for name, params in SCENARIOS:
                    request = parse_export_request(params)
                    baseline = DATA / "psql.csv"
                    psql_seconds = psql_copy(conninfo, request, baseline)
                    api_seconds, export_id = api_export(client, params)
                    produced = exports / f"{export_id}.csv"
                    size = produced.stat().st_size
                    rows = client.get(f"/exports/{export_id}/status").json()["progress"][
                        "processedRows"
                    ]
                    results.append(
                        {
                            "scenario": name,
                            "params": params,
                            "rows": rows,
                            "bytes": size,
                            "psql_seconds": round(psql_seconds, 3),
                            "export_seconds": round(api_seconds, 3),
                            "ratio": round(api_seconds / psql_seconds, 2),
                            "export_rows_per_second": round(rows / api_seconds),
                            "export_mb_per_second": round(size / api_seconds / 1e6, 1),
                            "identical": files_equal(produced, baseline),
                        }
                    )
                    client.delete(f"/exports/{export_id}")
                    baseline.unlink()
        finally:
            server.terminate()
            server.wait(30)

    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}",
        "rows_in_table": args.rows,
        "results": results,
    }
    (RESULTS / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{'scenario':<20} {'rows':>11} {'MB':>8} {'psql s':>8} {'export s':>9} "
        f"{'ratio':>6} {'rows/s':>10} {'same':>5}"
    )
    for r in results:
        print(
            f"{r['scenario']:<20} {r['rows']:>11,} {r['bytes'] / 1e6:>8.1f} "
            f"{r['psql_seconds']:>8.2f} {r['export_seconds']:>9.2f} {r['ratio']:>6.2f} "
            f"{r['export_rows_per_second']:>10,} {r['identical']!s:>5}"
        )
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
