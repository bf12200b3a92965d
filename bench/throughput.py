"""Time full exports through the HTTP API against `psql \\copy` of the same SELECT.

    .venv/bin/python -m bench.throughput [--rows 10000000] [--database-url URL]

Without --database-url it uses an embedded PostgreSQL under bench/data/ (seeded on first
use, kept for later runs). The service runs as a separate `exporter serve` process, as in
production. For each scenario, in the same run: psql's \\copy to a file, then the export
(POST → status completed); the files must be byte-identical. Once per run, `\\copy users
to …` (the plain table dump: no ORDER BY, no expressions) is timed too: the physical floor
of reading the table out of PostgreSQL, and each export is given as a ratio to both.
`--only NAME` (repeatable) runs the scenarios whose name contains NAME. Prints a table and
writes bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.jobs.postgres_queue)
import psycopg

from bench.common import DATA, EXPORTS, machine, save_results, seeded_database, service
from exporter.core.datasets import USERS
from exporter.core.model import ExportRequest
from exporter.core.request import parse_export_request
from exporter.export.catalog import resolve_datasets
from exporter.export.connection import libpq_options
from exporter.export.query import export_select, from_item

# (name, export parameters, the service's environment)
SCENARIOS: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("all columns", {}, {}),
    ("all columns, no gzip", {}, {"GZIP_EXPORTS": "0"}),
    ("all columns, ROW_SOURCE=copy", {}, {"ROW_SOURCE": "copy"}),
    ("US, 2 columns", {"country_code": "US", "columns": "id,email"}, {}),
    ("tab + single quote", {"delimiter": "\t", "quoteChar": "'"}, {}),
]


def psql_copy(conninfo: str, request: ExportRequest, out: Path) -> float:
    dataset = resolve_datasets(conninfo, [USERS])[USERS.name]
    with psycopg.connect(conninfo) as conn:
        # The export's own SELECT: its values are literals already (\copy takes no
        # bind parameters).
        text = export_select(dataset, request, from_item(conn, dataset, request)).as_string(conn)
        d = psycopg.sql.Literal(request.delimiter).as_string(conn)
        q = psycopg.sql.Literal(request.quote_char).as_string(conn)
    command = f"\\copy ({text}) TO '{out}' WITH (FORMAT csv, HEADER true, DELIMITER {d}, QUOTE {q})"
    env = {**os.environ, "PGOPTIONS": libpq_options()}
    started = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", conninfo, "-c", command], check=True, env=env)
    return time.perf_counter() - started


def psql_dump(conninfo: str, out: Path) -> float:
    r"""``\copy users to``: the table as it lies, the floor any export of it stands on."""
    command = f"\\copy users TO '{out}' WITH (FORMAT csv, HEADER true)"
    env = {**os.environ, "PGOPTIONS": libpq_options()}
    started = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", conninfo, "-c", command], check=True, env=env)
    return time.perf_counter() - started


def files_equal(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--only", action="append", default=[], help="scenarios to run")
    args = parser.parse_args()
    scenarios = [s for s in SCENARIOS if not args.only or any(o in s[0] for o in args.only)]

    results: list[dict[str, Any]] = []
    with seeded_database(args.database_url, args.rows) as conninfo:
        dump = DATA / "dump.csv"
        floor_seconds = psql_dump(conninfo, dump)
        dump.unlink()
        for name, params, env in scenarios:
            request = parse_export_request(params)
            baseline = DATA / "psql.csv"
            psql_seconds = psql_copy(conninfo, request, baseline)
            with service(conninfo, **env) as app:
                api_seconds, export_id = app.export(params)
                identical = files_equal(EXPORTS / f"{export_id}.csv", baseline)
                doc = app.client.get(f"/exports/{export_id}/status").json()
                app.client.delete(f"/exports/{export_id}")
            size = doc["fileSize"]
            rows = doc["progress"]["processedRows"]
            results.append(
                {
                    "scenario": name,
                    "params": params,
                    "rows": rows,
                    "bytes": size,
                    "psql_seconds": round(psql_seconds, 3),
                    "export_seconds": round(api_seconds, 3),
                    "ratio": round(api_seconds / psql_seconds, 2),
                    "floor_seconds": round(floor_seconds, 3),
                    "ratio_to_floor": round(api_seconds / floor_seconds, 2),
                    "export_rows_per_second": round(rows / api_seconds),
                    "export_mb_per_second": round(size / api_seconds / 1e6, 1),
                    "identical": identical,
                }
            )
            baseline.unlink()

    report = {"machine": machine(), "rows_in_table": args.rows, "results": results}
    save_results("throughput", report)
    print(f"psql \\copy users (the plain table dump, the floor): {floor_seconds:.2f} s")
    print(
        f"{'scenario':<28} {'rows':>11} {'MB':>8} {'psql s':>8} {'export s':>9} "
        f"{'ratio':>6} {'/floor':>7} {'rows/s':>10} {'same':>5}"
    )
    for r in results:
        print(
            f"{r['scenario']:<28} {r['rows']:>11,} {r['bytes'] / 1e6:>8.1f} "
            f"{r['psql_seconds']:>8.2f} {r['export_seconds']:>9.2f} {r['ratio']:>6.2f} "
            f"{r['ratio_to_floor']:>7.2f} {r['export_rows_per_second']:>10,} "
            f"{r['identical']!s:>5}"
        )
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
