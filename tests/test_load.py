"""A short load against ``exporter serve`` as its own process, all at once for a few seconds:

- 4 exports kept running: each time one completes, its file is downloaded by curl and
  checked (SHA-256) against PostgreSQL's own COPY of the same SELECT, then deleted, and
  another of the same kind starts;
- 16 curl clients downloading an earlier export again and again at full speed, each copy
  checked;
- 200 status requests a second over 32 keep-alive connections;
- /health timed 20 times a second from a thread of its own, the service's memory (its
  process and children) sampled 10 times a second.

Nothing may fail, every file must be right, /health must stay prompt and the memory
bounded. (bench/load.py runs the same kind of load for a minute, for the figures of
bench/README.md.)
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import socket
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from exporter.core.request import parse_export_request
from tests.support import copy_oracle, service

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LOAD_SECONDS = 8.0
# The kinds of export kept running: filtered, so that each completes several times.
EXPORT_KINDS: list[dict[str, str]] = [
    {"country_code": "US", "columns": "id,email"},
    {"country_code": "DE", "delimiter": ";"},
    {"subscription_tier": "enterprise", "columns": "id,name,lifetime_value"},
    {"country_code": "FR", "delimiter": "\t", "quoteChar": "'"},
]
DOWNLOADED = {"country_code": "GB", "columns": "id,name,email"}
DOWNLOADERS = 16
STATUS_RATE = 200
STATUS_CONNECTIONS = 32
HEALTH_HZ = 20


def complete_response(response: bytes) -> bool:
    """Whether ``response`` holds a whole HTTP response (headers and Content-Length body)."""
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


class HealthTimer(threading.Thread):
    """GET /health ``HEALTH_HZ`` times a second on a raw keep-alive socket (an HTTP library's
    own Python, in this busy process, would be counted as the server's latency)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.host, self.port = url.removeprefix("http://").split(":")
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        request = f"GET /health HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        sock: socket.socket | None = None
        while not self.stopping.wait(1 / HEALTH_HZ):
            started = time.perf_counter()
            try:
                if sock is None:
                    sock = socket.create_connection((self.host, int(self.port)), timeout=30)
                sock.sendall(request)
                response = b""
                while not complete_response(response):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("the server closed the connection")
                    response += chunk
            except OSError as error:
                self.errors.append(f"/health: {error}")
                if sock is not None:
                    sock.close()
                sock = None
                continue
            self.latencies.append(time.perf_counter() - started)
            if not response.startswith(b"HTTP/1.1 200"):
                self.errors.append(f"/health: {response[:40]!r}")
            if b"connection: close" in response.lower():  # Hypercorn's 1,000th request
                sock.close()
                sock = None
        if sock is not None:
            sock.close()


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and its descendants."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


async def curl_sha256(url: str) -> str | None:
    """SHA-256 of curl's download of ``url`` (None if curl failed)."""
    pipeline = f"set -o pipefail; curl -sf --http1.1 '{url}' | sha256sum"
    result = await trio.run_process(["bash", "-c", pipeline], capture_stdout=True, check=False)
    return result.stdout.split()[0].decode() if result.returncode == 0 else None


class Load:
    def __init__(self, url: str, pid: int, expected: list[str]) -> None:
        self.url, self.pid, self.expected = url, pid, expected
        self.errors: list[str] = []
        self.export_ids: list[str] = []
        self.exports_completed = self.exports_checked = self.downloads_completed = 0
        self.status_requests = 0
        self.rss: list[int] = []

    async def keep_exporting(self, client: httpx.AsyncClient, kind: int, until: float) -> None:
        params = EXPORT_KINDS[kind]
        while time.monotonic() < until:
            response = await client.post("/exports/csv", params=params)
            if response.status_code != 202:
                self.errors.append(f"POST {params}: {response.status_code}")
                await trio.sleep(1)
                continue
            export_id = response.json()["exportId"]
            self.export_ids.append(export_id)
            while True:  # the status requests below keep it company; this one waits gently
                await trio.sleep(0.5)
                doc = (await client.get(f"/exports/{export_id}/status")).json()
                if doc["status"] not in ("pending", "processing"):
                    break
            if doc["status"] != "completed":
                self.errors.append(f"export {params}: {doc['status']}: {doc['error']}")
                continue
            self.exports_completed += 1
            if await curl_sha256(f"{self.url}/exports/{export_id}/download") != self.expected[kind]:
                self.errors.append(f"export {params}: its file differs from COPY's")
            self.exports_checked += 1
            await client.delete(f"/exports/{export_id}")  # keeps the disk from filling up

    async def keep_downloading(self, url: str, sha: str, until: float) -> None:
        while time.monotonic() < until:
            got = await curl_sha256(url)
            if got != sha:
                self.errors.append(f"download: {'curl failed' if got is None else 'wrong bytes'}")
                continue
            self.downloads_completed += 1

    async def ask_status(self, until: float) -> None:
        """``STATUS_RATE`` status requests a second, raw HTTP/1.1 over keep-alive sockets."""
        host, port = self.url.removeprefix("http://").split(":")
        interval = STATUS_CONNECTIONS / STATUS_RATE

        async def connection(offset: float) -> None:
            sock = None
            start = time.monotonic() + offset
            for tick in itertools.count():
                if time.monotonic() >= until:
                    break
                await trio.sleep(max(0.0, start + tick * interval - time.monotonic()))
                if not self.export_ids:
                    continue
                if sock is None:
                    sock = trio.socket.socket()
                    await sock.connect((host, int(port)))
                export_id = random.choice(self.export_ids[-16:])
                await sock.send(
                    f"GET /exports/{export_id}/status HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                )
                response = b""
                while not complete_response(response):
                    chunk = await sock.recv(65536)
                    if not chunk:
                        break
                    response += chunk
                self.status_requests += 1
                if not response.startswith(b"HTTP/1.1 200"):
                    self.errors.append(f"status: {response[:40]!r}")
                if not response or b"connection: close" in response.lower():
                    sock.close()
                    sock = None
            if sock is not None:
                sock.close()

        async with trio.open_nursery() as nursery:
            for index in range(STATUS_CONNECTIONS):
                nursery.start_soon(connection, index / STATUS_RATE)

    async def sample_rss(self) -> None:
        while True:
            self.rss.append(tree_rss(self.pid))
            await trio.sleep(0.1)


def test_load_with_no_errors_and_every_file_right(database: str, tmp_path: Path) -> None:
    def sha(params: dict[str, str]) -> str:
        return hashlib.sha256(copy_oracle(database, parse_export_request(params))).hexdigest()

    expected = [sha(params) for params in EXPORT_KINDS]
    downloaded_sha = sha(DOWNLOADED)
    with service(database, export_dir=tmp_path / "exports") as app:
        downloaded = app.export(DOWNLOADED)
        download_url = f"{app.url}/exports/{downloaded}/download"
        load = Load(app.url, app.process.pid, expected)
        health = HealthTimer(app.url)
        health.start()

        async def main() -> None:
            until = time.monotonic() + LOAD_SECONDS
            limits = httpx.Limits(max_connections=len(EXPORT_KINDS) + 1)
            async with (
                httpx.AsyncClient(base_url=app.url, timeout=60, limits=limits) as client,
                trio.open_nursery() as watcher,
            ):
                watcher.start_soon(load.sample_rss)  # until the last export has been checked
                async with trio.open_nursery() as nursery:
                    for kind in range(len(EXPORT_KINDS)):
                        nursery.start_soon(load.keep_exporting, client, kind, until)
                    for _ in range(DOWNLOADERS):
                        nursery.start_soon(
                            load.keep_downloading, download_url, downloaded_sha, until
                        )
                    nursery.start_soon(load.ask_status, until)
                watcher.cancel_scope.cancel()

        trio.run(main)
        health.stopping.set()
        health.join()

    errors = load.errors + health.errors
    assert errors == [], errors[:20]
    assert load.exports_completed >= len(EXPORT_KINDS)
    assert load.exports_checked == load.exports_completed
    assert load.downloads_completed >= DOWNLOADERS
    # Sent open-loop at 200/s over 32 keep-alive connections: the service must have kept
    # answering them all along (ten a second at the very least). How many it answers is a
    # figure for bench/load.py, not a test: it depends on the machine and what else runs.
    assert load.status_requests >= 10 * LOAD_SECONDS
    assert health.latencies and max(health.latencies) < 1.0, max(health.latencies)
    assert max(load.rss) < 150_000_000, f"peak RSS {max(load.rss) / 1e6:.0f} MB"
