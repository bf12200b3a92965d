"""What the benchmarks share: a seeded database, the service as a separate process."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.jobs.postgres_queue)
import httpx
import psycopg

from exporter.process.embedded import embedded_database
from exporter.process.schema import apply_schema, count_users, seed_users
from tests import support

HERE = Path(__file__).resolve().parent
# BENCH_DATA: another folder for the embedded database and exports (e.g. a small one).
DATA = Path(os.environ.get("BENCH_DATA") or HERE / "data")
RESULTS = HERE / "results"
EXPORTS = DATA / "exports"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def save_results(name: str, report: dict[str, Any]) -> Path:
    """``report`` as bench/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def add_env_option(parser: argparse.ArgumentParser) -> None:
    """``--env NAME=VALUE`` (repeatable): the service's environment for this run."""
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")


def service_env(items: list[str], script: str) -> tuple[dict[str, str], str]:
    """``--env``'s settings, and the name of the run's results, which carries their values
    (``memory-20000-0`` for ``--env BATCH_ROWS=20000 --env CHANNEL_BATCHES=0``)."""
    env = dict(item.split("=", 1) for item in items)
    return env, "-".join([script, *(value.lower() for value in env.values())])


def bytes_per_second(text: str) -> int:
    """A rate as curl's ``--limit-rate`` writes it (``16k``, ``5M``, ``2048``), in bytes/s."""
    units = {"k": 1024, "m": 1024 * 1024}
    return int(float(text[:-1]) * units[text[-1].lower()]) if text[-1].isalpha() else int(text)


@contextlib.contextmanager
def seeded_database(url: str | None, rows: int) -> Iterator[str]:
    """``url``, or an embedded server under bench/data/ (kept between runs), with ``rows``
    users."""
    for folder in (DATA, RESULTS, EXPORTS):
        folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        conninfo = url or stack.enter_context(embedded_database(DATA / "pgdata"))
        apply_schema(conninfo, "schema")
        if count_users(conninfo) != rows:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("TRUNCATE users RESTART IDENTITY")
            print(f"seeding {rows:,} users…", file=sys.stderr)
            seed_users(conninfo, rows)
        apply_schema(conninfo, "indexes")
        yield conninfo


@dataclasses.dataclass
class Service:
    url: str
    process: subprocess.Popen[bytes]
    client: httpx.Client

    def cpu_seconds(self) -> float:
        """User + system CPU time of the service process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def export(self, params: dict[str, str]) -> tuple[float, str]:
        """POST an export and wait for it; returns (seconds, export id).

        The seconds are the service's own, createdAt to completedAt, so that polling can
        be gentle: every status request takes the GIL from the export for a moment, and
        polling at 20 Hz made exports measurably (about 20%) slower.
        """
        response = self.client.post("/exports/csv", params=params)
        response.raise_for_status()
        export_id = str(response.json()["exportId"])
        while True:
            doc = self.client.get(f"/exports/{export_id}/status").json()
            if doc["status"] == "completed":
                created = dt.datetime.fromisoformat(doc["createdAt"])
                completed = dt.datetime.fromisoformat(doc["completedAt"])
                return (completed - created).total_seconds(), export_id
            if doc["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"export {export_id} {doc['status']}: {doc['error']}")
            time.sleep(0.5)


@contextlib.contextmanager
def service(
    conninfo: str, export_dir: Path = EXPORTS, stderr: Any = subprocess.DEVNULL, **env: str
) -> Iterator[Service]:
    """``exporter serve`` as its own process, as in production, until the block ends:
    started and stopped the way the tests do it (``tests.support.service``)."""
    with support.service(conninfo, export_dir, stderr, **env) as running:
        yield Service(running.url, running.process, running.client)
