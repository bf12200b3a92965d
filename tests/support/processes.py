"""What the tests of several real processes share (test_scaleout, test_takeover): settings
that make takeovers happen within seconds, where an export of the gated database is held,
the processes' logs, the job as ``export_jobs``, ``pg_stat_activity`` and ``pg_locks`` show
it, and the export's files.

The tests drive the processes synchronously (``tests.support.service``, ``worker``), so
every wait here is a plain poll with a deadline.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter/jobs/postgres_queue.py)
import httpx
import psycopg
import pytest
import trio
from psycopg.rows import dict_row

from exporter.export.rows import RANGE_BATCHES
from tests.support import (
    GATE_CLASS,
    GATE_EVERY,
    Gates,
    backends,
    rows_before_gate,
    wait_until_blocked_sync,
)
from tests.support.dbproxy import DatabaseProxy

# Short leases and frequent checkpoints: a takeover within seconds of a death.
LEASE_SECONDS = 2.0
BATCH_ROWS = 100
CHECKPOINT_INTERVAL = 0.05
ENV = {
    "LEASE_SECONDS": str(LEASE_SECONDS),
    "BATCH_ROWS": str(BATCH_ROWS),
    "CHECKPOINT_INTERVAL": str(CHECKPOINT_INTERVAL),
    "PROGRESS_INTERVAL": "0.05",
}
RANGE_IDS = BATCH_ROWS * RANGE_BATCHES  # ids per range: 5,000

# Where a full export of the gated database (30,000 rows) is held: past half-way, at the
# first row of a range, so the range before it ends with a checkpoint at the gate.
GATE = 20_001
ROWS_AT_GATE = rows_before_gate(GATE, BATCH_ROWS)  # 20,000
# One range earlier: held first, to let the checkpoint interval pass (see run_to_gate).
EARLY_GATE = GATE - RANGE_IDS
assert (GATE - 1) % RANGE_IDS == 0 and ROWS_AT_GATE == GATE - 1


# -- processes -----------------------------------------------------------------------------


# Named ``logs`` for the tests; a test module imports it by this name (``logs_fixture``) so
# that the tests' own ``logs`` argument does not shadow an import.
@pytest.fixture(name="logs")
def logs_fixture(tmp_path: Path) -> Iterator[Callable[[str], IO[bytes]]]:
    """A log file per process (its stderr); their ends are printed at teardown, which
    pytest shows when the test failed."""
    opened: dict[str, IO[bytes]] = {}

    def open_log(name: str) -> IO[bytes]:
        opened[name] = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        return opened[name]

    yield open_log
    for name, file in opened.items():
        file.close()
        print(f"----- {name} -----\n{log_text(tmp_path, name)[-8000:]}")


def log_text(folder: Path, name: str) -> str:
    return (folder / f"{name}.log").read_text(errors="replace")


@contextlib.contextmanager
def together(*managers: contextlib.AbstractContextManager[Any]) -> Iterator[list[Any]]:
    """Enter several process context managers at once, so their start-ups overlap; leave
    them in reverse order."""
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(len(managers)) as pool:
            futures = [pool.submit(manager.__enter__) for manager in managers]
        entered, error = [], None
        for manager, future in zip(managers, futures, strict=True):
            try:
                entered.append(future.result())
            except BaseException as exc:
                error = error or exc
                continue
            stack.push(manager)
        if error is not None:
            raise error
        yield entered


def owner_prefix(process: subprocess.Popen[bytes]) -> str:
    """How ``export_jobs.owner`` names the process (hostname:pid:random)."""
    return f"{socket.gethostname()}:{process.pid}:"


def parent_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if parent_pid(int(entry.name)) == pid:
                    found.add(int(entry.name))
    return found


class ThreadedProxy:
    """tests.support.dbproxy.DatabaseProxy, run by a trio loop in a thread of its own, for these
    synchronous tests (whose waits would otherwise stop the proxy's loop)."""

    def __init__(self, conninfo: str) -> None:
        self._upstream = conninfo
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._proxy: DatabaseProxy | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._proxy = DatabaseProxy(self._upstream, nursery)
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            await self._proxy.start()
            self._ready.set()
            await self._stop.wait()
            self._proxy.cut()
            nursery.cancel_scope.cancel()

    @property
    def conninfo(self) -> str:
        assert self._proxy is not None
        return self._proxy.conninfo

    def cut(self) -> None:
        assert self._proxy is not None
        trio.from_thread.run_sync(self._proxy.cut, trio_token=self._token)

    def __enter__(self) -> ThreadedProxy:
        self._thread.start()
        assert self._ready.wait(10), "the database proxy never started"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)


# -- the job as export_jobs, pg_stat_activity and pg_locks show it -----------------------------


def job_row(conninfo: str, export_id: str) -> dict[str, Any]:
    """The job's row of ``export_jobs``, with the database's clock as ``db_now``."""
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT *, now() AS db_now FROM export_jobs WHERE id = %s", (export_id,)
        ).fetchone()
    assert row is not None, export_id
    return row


def wait_row(
    conninfo: str,
    export_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,
    what: str = "",
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = job_row(conninfo, export_id)
        if predicate(row):
            return row
        assert time.monotonic() < deadline, f"{what or 'condition'} not met: {row}"
        time.sleep(0.02)


def gate_locks(conninfo: str, export_id: str, not_pid: int | None = None) -> list[tuple[int, bool]]:
    """The row gates the export's backend holds (granted) or waits for, as (row, granted):
    a backend that read the rows before a gate holds that gate's lock till its end."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT l.objid::int, l.granted FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE a.application_name = %s AND l.locktype = 'advisory' AND l.classid = %s"
            " AND a.pid IS DISTINCT FROM %s ORDER BY 1",
            (f"exporter {export_id}", GATE_CLASS, not_pid),
        ).fetchall()
    return [(int(row[0]), bool(row[1])) for row in rows]


def wait_for_gate_locks(
    conninfo: str, export_id: str, expected: list[tuple[int, bool]], not_pid: int | None = None
) -> None:
    deadline = time.monotonic() + 10
    while (locks := gate_locks(conninfo, export_id, not_pid)) != expected:
        assert time.monotonic() < deadline, locks
        time.sleep(0.02)


def export_pid(conninfo: str, export_id: str) -> int:
    found = backends(conninfo, export_id)
    assert len(found) == 1, found
    return int(found[0][0])


def wait_for_backend_gone(conninfo: str, pid: int, deadline: float) -> None:
    """Backend ``pid`` must have ended by ``deadline`` (time.monotonic)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} still there"
            time.sleep(0.02)


# -- files ------------------------------------------------------------------------------------


def files_of(folder: Path, export_id: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(export_id))


def part_files(folder: Path, export_id: str) -> dict[str, tuple[int, int, int]]:
    """The export's partial files: name → (inode, size, mtime_ns)."""
    found = {}
    for name in files_of(folder, export_id):
        if name.endswith(".part"):
            with contextlib.suppress(FileNotFoundError):
                stat = (folder / name).stat()
                found[name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return found


def first_difference(got: bytes, expected: bytes) -> str | None:
    """None if equal; else where they differ (a short message, not a diff of megabytes)."""
    if got == expected:
        return None
    at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    at = min(len(got), len(expected)) if at is None else at
    return (
        f"{len(got)} bytes instead of {len(expected)}, first difference at byte {at}:"
        f" {got[at : at + 60]!r} vs {expected[at : at + 60]!r}"
    )


def assert_export_files(folder: Path, export_id: str, expected: bytes) -> None:
    """The finished CSV and its gzip copy, nothing partial left, both COPY's bytes (the
    gzip copy decompressed by Python's gzip module and by gzip(1))."""
    assert files_of(folder, export_id) == [f"{export_id}.csv", f"{export_id}.csv.gz"]
    assert first_difference((folder / f"{export_id}.csv").read_bytes(), expected) is None
    packed = folder / f"{export_id}.csv.gz"
    assert first_difference(gzip.decompress(packed.read_bytes()), expected) is None
    unpacked = subprocess.run(["gzip", "-d", "-c", str(packed)], capture_output=True, check=True)
    assert first_difference(unpacked.stdout, expected) is None


def gzip_members(data: bytes) -> int:
    count = 0
    while data:
        unpacker = zlib.decompressobj(zlib.MAX_WBITS | 16)
        unpacker.decompress(data)
        assert unpacker.eof
        data, count = unpacker.unused_data, count + 1
    return count


def assert_gzip_downloads(url: str, expected: bytes) -> None:
    """The download with ``Content-Encoding: gzip`` decodes to the whole CSV in ordinary
    HTTP clients: httpx and curl --compressed (which, like browsers, read only the first
    member of a multi-member gzip stream)."""
    with httpx.Client(timeout=60) as client:
        response = client.get(url, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
    assert first_difference(response.content, expected) is None, "httpx"
    curl = subprocess.run(["curl", "-s", "-S", "--compressed", url], capture_output=True)
    assert curl.returncode == 0, curl.stderr
    assert first_difference(curl.stdout, expected) is None, "curl --compressed"


# -- holding an export of the gated database ---------------------------------------------------


def submit(client: httpx.Client, params: dict[str, str] | None = None) -> str:
    response = client.post("/exports/csv", params=params or {})
    assert response.status_code == 202, response.text
    return str(response.json()["exportId"])


def run_to_gate(admin_url: str, gates: Gates, export_id: str) -> dict[str, Any]:
    """With EARLY_GATE and GATE held before the export started: returns its row once it
    waits at GATE with a checkpoint recorded there (ROWS_AT_GATE rows, the CSV and its
    gzip copy durable up to them).

    A checkpoint is taken at a range's end only once CHECKPOINT_INTERVAL has passed since
    the last: the export is let through EARLY_GATE (one range before GATE) only after the
    interval has passed with it held there, so the range ending at GATE ends with one."""
    wait_until_blocked_sync(admin_url, export_id)
    wait_row(admin_url, export_id, lambda r: r["processed_rows"] == EARLY_GATE - 1)
    time.sleep(CHECKPOINT_INTERVAL * 2)  # the checkpoint timer runs out while it is held
    gates.release(EARLY_GATE)
    row = wait_row(
        admin_url,
        export_id,
        lambda r: r["checkpoint_rows"] == ROWS_AT_GATE and r["processed_rows"] == ROWS_AT_GATE,
        what="a checkpoint at the gate",
    )
    wait_for_gate_locks(
        admin_url, export_id, [(g, True) for g in held_before(GATE)] + [(GATE, False)]
    )
    assert row["status"] == "processing"
    assert row["checkpoint_last_id"] == ROWS_AT_GATE
    return row


def held_before(gate: int) -> list[int]:
    """The gates an export that read every row before ``gate`` has passed (and still
    holds, its transaction open)."""
    return list(range(GATE_EVERY + 1, gate, GATE_EVERY))
