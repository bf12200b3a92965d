"""Exports of declared datasets (a table, a view, a saved query) against `psql` of the same
SELECT, on a second schema that is not the seed's.

    .venv/bin/python -m bench.datasets [--orders 5000000] [--users 10000000] [--runs 3]
        [--since 2025-01-01T00:00:00Z] [--only NAME] [--database-url URL]

Without --database-url it uses the embedded PostgreSQL under bench/data/ (`seeded_database`:
`--users` seed users, made on first use). Beside them it makes `shop.orders` (`--orders`
rows generated inside PostgreSQL: a uuid key, `user_id` a foreign key to `users(id)`,
`placed_at`, `items` as jsonb, `total`, `status`; indexes, VACUUM ANALYZE) and the view
`shop.order_users` (security_invoker) joining each order to its user. The table's comment
records the sizes it was made for: a later run with the same sizes reuses it, another
makes it again; a `shop.orders` this script did not make is never replaced.

It writes a datasets file, bench/data/datasets.toml: `orders` (the table), `order_users`
(the view, key `id`), `orders_since` (a saved query over the join, a `since timestamptz`
parameter) and `users` (the seed's table). The service runs with `EXPORTER_DATASETS` set
to it. Each scenario is an export (`POST /datasets/NAME/exports`, the service's own
createdAt → completedAt) beside PostgreSQL's `COPY (SELECT …) TO STDOUT` run by psql into
a file, where the SELECT is the one the service runs
(`exporter.export.query.export_select`, the same FROM item, filters and saved-query
parameters written in as literals) and psql's session settings are the export's
(`PGOPTIONS`). psql's `COPY … TO STDOUT` into a file is what `\\copy … TO 'file'` does; it
is used because `\\copy` takes its statement from one line and a saved query may span
several. Each run is the pair psql, then the export (A B A B ...), and a scenario's
ratio is the export's seconds over psql's of the same run: min, median and max over
`--runs` runs. The files of every run must be byte-identical (cmp).

Prints a table and writes bench/results/datasets.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.jobs.postgres_queue)
import psycopg

from bench.common import DATA, EXPORTS, Service, machine, save_results, seeded_database, service
from exporter.core.datasets import Dataset, DatasetError, load_datasets_file
from exporter.core.request import parse_dataset_request
from exporter.export.catalog import resolve_datasets
from exporter.export.connection import libpq_options
from exporter.export.query import copy_of, export_select, from_item
from exporter.process.embedded import embedded_database

DATASETS_FILE = DATA / "datasets.toml"
# The comment on shop.orders: made by this script, for how many orders over how many users.
MARK = "bench.datasets:"
ORDERS_BATCH = 500_000

# (name, dataset, export parameters, the service's environment). Scenarios with the same
# environment follow each other: one service serves them in a run.
SCENARIOS: list[tuple[str, str, dict[str, str], dict[str, str]]] = [
    ("orders, all columns", "orders", {}, {}),
    ("order_users view", "order_users", {}, {}),
    ("orders_since query", "orders_since", {"since": "{since}"}, {}),
    ("users, US, 2 columns", "users", {"select": "id,email", "country_code": "eq.US"}, {}),
    ("users, all columns", "users", {}, {}),
    ("orders, all columns, ROW_SOURCE=copy", "orders", {}, {"ROW_SOURCE": "copy"}),
    ("order_users view, ROW_SOURCE=copy", "order_users", {}, {"ROW_SOURCE": "copy"}),
]

# Made empty, filled in batches, then given its keys and indexes (quicker than keeping them
# up to date through the inserts).
CREATE_ORDERS = """
CREATE SCHEMA IF NOT EXISTS shop;
CREATE TABLE shop.orders (
    id        uuid NOT NULL,
    user_id   integer NOT NULL,
    placed_at timestamptz NOT NULL,
    items     jsonb NOT NULL,
    total     numeric(12, 2) NOT NULL,
    status    text NOT NULL
);
COMMENT ON TABLE shop.orders IS 'bench.datasets: being made';
"""

# Orders first..last: a random (v4) uuid, a user drawn evenly from min_user..max_user, a
# time in 2023-2025, 1 to 4 lines of items (product names with commas, quotes, accents),
# the total of the lines, a status. Everything is made inside PostgreSQL.
INSERT_ORDERS = """
INSERT INTO shop.orders (id, user_id, placed_at, items, total, status)
SELECT gen_random_uuid(),
       %(min_user)s + floor(random() * (%(max_user)s - %(min_user)s + 1))::integer,
       timestamptz '2023-01-01 00:00:00+00' + random() * interval '1095 days',
       i.items,
       i.total,
       (ARRAY['placed', 'paid', 'paid', 'shipped', 'shipped', 'shipped', 'delivered',
              'delivered', 'cancelled', 'refunded'])[1 + floor(random() * 10)::integer]
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
CROSS JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object('sku', 'SKU-' || lpad(p::text, 5, '0'),
                                        'name', names[1 + p %% 10],
                                        'qty', 1 + (p + g) %% 3,
                                        'price', round(4.99 + (p %% 200) * 1.25, 2))
                     ORDER BY line) AS items,
           sum((1 + (p + g) %% 3) * round(4.99 + (p %% 200) * 1.25, 2))::numeric(12, 2) AS total
    FROM generate_series(1, 1 + (g %% 4)::integer) AS line,
         LATERAL (SELECT ((g * 7919 + line * 104729) %% 50000)::integer AS p) AS pick,
         LATERAL (SELECT ARRAY['Mug "Classic"', 'Socks, 3 pairs', 'Chef''s knife',
                               'Café beans 1 kg', 'Notebook A5', 'Cable USB-C 2 m',
                               'Lamp; brass', 'Tea - Earl Grey', 'Gift card 🎁',
                               'Backpack']) AS n(names)
) AS i
"""

FINISH_ORDERS = """
ALTER TABLE shop.orders ADD PRIMARY KEY (id);
ALTER TABLE shop.orders ADD FOREIGN KEY (user_id) REFERENCES users (id);
CREATE INDEX orders_user_id_idx ON shop.orders (user_id);
CREATE INDEX orders_placed_at_idx ON shop.orders (placed_at);
"""

ORDER_USERS = """
DROP VIEW IF EXISTS shop.order_users;
CREATE VIEW shop.order_users WITH (security_invoker = true) AS
SELECT o.id, o.placed_at, o.status, o.total, u.email, u.country_code
FROM shop.orders o JOIN users u ON u.id = o.user_id;
"""

DATASETS_TOML = '''\
# Written by bench.datasets (made again on every run): the datasets it measures.

[datasets.orders]
table = "shop.orders"
description = "Orders: one row an order, its lines as JSON"
filters = { status = ["eq", "in"], placed_at = ["gte", "lt"], user_id = ["eq", "in"] }

[datasets.order_users]
view = "shop.order_users"
key = "id"
description = "Orders with their user's email and country"
filters = { country_code = ["eq", "in"], placed_at = ["gte", "lt"] }

[datasets.orders_since]
query = """
SELECT o.id, o.placed_at, o.status, o.total, jsonb_array_length(o.items) AS item_count,
       u.email, u.country_code
FROM shop.orders o JOIN users u ON u.id = o.user_id
WHERE o.placed_at >= %(since)s AND o.status NOT LIKE 'cancel%%'
"""
key = "id"
params = { since = "timestamptz" }
description = "Orders placed since a time, not cancelled, with their user"
filters = { country_code = ["eq", "in"] }

[datasets.users]
table = "users"
description = "The seed's users"
filters = { country_code = ["eq", "neq", "in"], subscription_tier = ["eq", "in"] }
'''


def mark(orders: int, users: int) -> str:
    return f"{MARK} {orders} orders over {users} users"


def orders_comment(conn: psycopg.Connection[Any]) -> str | None:
    """shop.orders' comment ("" without one), or None when there is no shop.orders."""
    row = conn.execute(
        "SELECT to_regclass('shop.orders') IS NOT NULL,"
        " coalesce(obj_description(to_regclass('shop.orders'), 'pg_class'), '')"
    ).fetchone()
    assert row is not None
    return str(row[1]) if row[0] else None


def drop_orders(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DROP VIEW IF EXISTS shop.order_users")
    conn.execute("DROP TABLE IF EXISTS shop.orders")


def check_ours(comment: str | None) -> None:
    if comment is not None and not comment.startswith(MARK):
        sys.exit(
            "shop.orders exists and bench.datasets did not make it (its comment does not "
            f"start with {MARK!r}); not replacing it: use another database"
        )


def release_users(conninfo: str, users: int) -> None:
    """Drop our orders when the seed's users are about to be made again for another count:
    ``seeded_database`` truncates ``users``, which their foreign key would refuse."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        comment = orders_comment(conn)
        check_ours(comment)
        if comment is None:
            return
        row = conn.execute("SELECT count(*) FROM users").fetchone()
        assert row is not None
        if int(row[0]) != users:
            print("dropping shop.orders: the users are seeded again", file=sys.stderr)
            drop_orders(conn)


def make_orders(conninfo: str, orders: int, users: int) -> None:
    """shop.orders with ``orders`` rows over ``users`` users, and shop.order_users; kept
    from an earlier run when it was made for the same sizes."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        comment = orders_comment(conn)
        check_ours(comment)
        if comment != mark(orders, users):
            started = time.perf_counter()
            drop_orders(conn)
            conn.execute(CREATE_ORDERS.encode())
            row = conn.execute("SELECT min(id), max(id) FROM users").fetchone()
            assert row is not None and row[0] is not None, "no users to place orders"
            min_user, max_user = row
            for first in range(1, orders + 1, ORDERS_BATCH):
                last = min(first + ORDERS_BATCH - 1, orders)
                print(f"making shop.orders: {last:,} of {orders:,}…", file=sys.stderr)
                params = {"first": first, "last": last, "min_user": min_user, "max_user": max_user}
                conn.execute(INSERT_ORDERS, params)
            print("shop.orders: keys, indexes, VACUUM ANALYZE…", file=sys.stderr)
            conn.execute(FINISH_ORDERS.encode())
            conn.execute("VACUUM (ANALYZE) shop.orders")
            conn.execute(
                psycopg.sql.SQL("COMMENT ON TABLE shop.orders IS {}").format(
                    psycopg.sql.Literal(mark(orders, users))
                )
            )
            print(f"shop.orders made in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        conn.execute(ORDER_USERS.encode())


@contextlib.contextmanager
def shop_database(url: str | None, orders: int, users: int) -> Iterator[str]:
    """``seeded_database`` with ``users`` users, and the shop's orders beside them."""
    with contextlib.ExitStack() as stack:
        if url is None:
            url = stack.enter_context(embedded_database(DATA / "pgdata"))
        with psycopg.connect(url, autocommit=True) as conn:
            has_users = conn.execute("SELECT to_regclass('users') IS NOT NULL").fetchone()
        if has_users is not None and has_users[0]:
            release_users(url, users)
        conninfo = stack.enter_context(seeded_database(url, users))
        make_orders(conninfo, orders, users)
        yield conninfo


def psql_copy(conninfo: str, dataset: Dataset, params: dict[str, str], out: Path) -> float:
    """The export's SELECT through psql into ``out``; its seconds."""
    request = parse_dataset_request(dataset, params)
    with psycopg.connect(conninfo) as conn:
        select = export_select(dataset, request, from_item(conn, dataset, request))
        command = copy_of(select, request, header=True).as_string(conn)
    env = {**os.environ, "PGOPTIONS": libpq_options()}
    with out.open("wb") as file:
        started = time.perf_counter()
        psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", conninfo, "-c", command]
        subprocess.run(psql, check=True, env=env, stdout=file)
        return time.perf_counter() - started


def export(app: Service, dataset: str, params: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """POST an export of ``dataset`` and wait for it: (the service's seconds, createdAt to
    completedAt, and its status document). Polled twice a second, as bench.common does."""
    response = app.client.post(f"/datasets/{dataset}/exports", params=params)
    if response.status_code != 202:
        raise RuntimeError(f"POST /datasets/{dataset}/exports: {response.text}")
    export_id = str(response.json()["exportId"])
    while True:
        doc = app.client.get(f"/exports/{export_id}/status").json()
        if doc["status"] == "completed":
            created = dt.datetime.fromisoformat(doc["createdAt"])
            completed = dt.datetime.fromisoformat(doc["completedAt"])
            return (completed - created).total_seconds(), doc
        if doc["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"export {export_id} {doc['status']}: {doc['error']}")
        time.sleep(0.5)


def files_equal(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def summary(
    name: str, dataset: Dataset, row_source: str, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """A scenario over its runs: each run's pair, and the ratios' min, median and max."""
    ratios = [r["ratio"] for r in runs]
    return {
        "scenario": name,
        "dataset": dataset.name,
        "source": dataset.source,
        "resumable": dataset.resumable(row_source),
        "rows": runs[0]["rows"],
        "bytes": runs[0]["bytes"],
        "psql_seconds_median": round(statistics.median(r["psql_seconds"] for r in runs), 3),
        "export_seconds_median": round(statistics.median(r["export_seconds"] for r in runs), 3),
        "ratio_min": min(ratios),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_max": max(ratios),
        "identical": all(r["identical"] for r in runs),
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=5_000_000, help="rows of shop.orders")
    parser.add_argument("--users", type=int, default=10_000_000, help="the seed's users")
    parser.add_argument("--runs", type=int, default=3, help="psql/export pairs a scenario")
    parser.add_argument("--since", default="2025-01-01T00:00:00Z", help="orders_since's since")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--only", action="append", default=[], help="scenarios to run")
    args = parser.parse_args()
    scenarios = [s for s in SCENARIOS if not args.only or any(o in s[0] for o in args.only)]
    # One service for each environment in a run, its scenarios one after another.
    groups = [
        (dict(env), list(group))
        for env, group in itertools.groupby(scenarios, key=lambda s: tuple(sorted(s[3].items())))
    ]

    runs: dict[str, list[dict[str, Any]]] = {s[0]: [] for s in scenarios}
    with shop_database(args.database_url, args.orders, args.users) as conninfo:
        DATASETS_FILE.write_text(DATASETS_TOML, encoding="utf-8")
        try:
            datasets = resolve_datasets(conninfo, load_datasets_file(DATASETS_FILE))
        except DatasetError as error:  # each problem names the file, the dataset, the key
            print(f"the datasets do not resolve:\n{error}", file=sys.stderr)
            return 2
        baseline = DATA / "psql-datasets.csv"
        for run in range(1, args.runs + 1):
            for env, group in groups:
                with service(conninfo, EXPORTER_DATASETS=str(DATASETS_FILE), **env) as app:
                    for name, dataset, template, _ in group:
                        params = {k: v.format(since=args.since) for k, v in template.items()}
                        print(f"run {run}/{args.runs}: {name}…", file=sys.stderr)
                        psql_seconds = psql_copy(conninfo, datasets[dataset], params, baseline)
                        export_seconds, doc = export(app, dataset, params)
                        export_id = doc["exportId"]
                        identical = files_equal(EXPORTS / f"{export_id}.csv", baseline)
                        app.client.delete(f"/exports/{export_id}")
                        baseline.unlink()
                        runs[name].append(
                            {
                                "run": run,
                                "psql_seconds": round(psql_seconds, 3),
                                "export_seconds": round(export_seconds, 3),
                                "ratio": round(export_seconds / psql_seconds, 3),
                                "rows": doc["progress"]["processedRows"],
                                "bytes": doc["fileSize"],
                                "identical": identical,
                            }
                        )

    by_name = {s[0]: (s[1], s[3].get("ROW_SOURCE", "cursor")) for s in scenarios}
    results = [
        summary(name, datasets[by_name[name][0]], by_name[name][1], r) for name, r in runs.items()
    ]
    report = {
        "machine": machine(),
        "orders": args.orders,
        "users": args.users,
        "runs": args.runs,
        "since": args.since,
        "datasets_file": DATASETS_FILE.read_text(encoding="utf-8"),
        "results": results,
    }
    path = save_results("datasets", report)
    runs_text = f"{args.runs} run{'s' if args.runs != 1 else ''}"
    print(f"{args.orders:,} orders over {args.users:,} users, {runs_text}; {path}")
    print(
        f"{'scenario':<38} {'rows':>11} {'MB':>8} {'export s':>9} {'psql s':>8} "
        f"{'ratio min / median / max':>25} {'same':>5}"
    )
    for r in results:
        ratios = f"{r['ratio_min']:.2f} / {r['ratio_median']:.2f} / {r['ratio_max']:.2f}"
        print(
            f"{r['scenario']:<38} {r['rows']:>11,} {r['bytes'] / 1e6:>8.1f} "
            f"{r['export_seconds_median']:>9.2f} {r['psql_seconds_median']:>8.2f} "
            f"{ratios:>25} {r['identical']!s:>5}"
        )
    print("(seconds: medians over the runs; each ratio is one run's export s / psql s)")
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
