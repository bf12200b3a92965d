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
bounded. (The load is tests.support.load's; bench/load.py runs it for a minute, for the
figures of bench/README.md.)
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import trio

from exporter.core.request import parse_export_request
from tests.support import copy_oracle, service
from tests.support.load import DOWNLOADED, EXPORT_KINDS, Load, complete_response

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LOAD_SECONDS = 8.0
DOWNLOADERS = 16
STATUS_RATE = 200
HEALTH_HZ = 20


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


def test_load_with_no_errors_and_every_file_right(database: str, tmp_path: Path) -> None:
    def sha(params: dict[str, str]) -> str:
        return hashlib.sha256(copy_oracle(database, parse_export_request(params))).hexdigest()

    expected = [sha(params) for params in EXPORT_KINDS]
    downloaded_sha = sha(DOWNLOADED)
    with service(database, export_dir=tmp_path / "exports") as app:
        downloaded = app.export(DOWNLOADED)
        download_url = f"{app.url}/exports/{downloaded}/download"
        load = Load(app.url, app.process.pid, expected, download_url, downloaded_sha)
        health = HealthTimer(app.url)
        health.start()

        async def main() -> None:
            until = time.perf_counter() + LOAD_SECONDS
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
                        nursery.start_soon(load.keep_downloading, until)
                    nursery.start_soon(load.ask_status, STATUS_RATE, until)
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
    assert load.peak_rss() < 150_000_000, f"peak RSS {load.peak_rss() / 1e6:.0f} MB"
