"""The load that tests/test_load.py runs for a few seconds and bench/load.py for a minute,
against ``exporter serve`` as its own process, all at once:

- exports kept running, one of each of ``EXPORT_KINDS``: each time one completes, its file
  is downloaded by curl and checked (SHA-256) against PostgreSQL's own COPY of the same
  SELECT, then deleted, and another of the same kind starts;
- curl clients downloading an earlier export (``DOWNLOADED``) again and again at full
  speed, each copy checked;
- status requests at a rate, over ``STATUS_CONNECTIONS`` keep-alive connections;
- the service's memory (its process and children) sampled 10 times a second.

``Load`` keeps what was done and every error (the first 100); the caller decides what
passes and what it reports. (bench/ may import tests.support; tests may not import bench.)
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time

import httpx
import psutil
import trio

# The kinds of export kept running: filtered, so that each completes several times.
EXPORT_KINDS: list[dict[str, str]] = [
    {"country_code": "US", "columns": "id,email"},
    {"country_code": "DE", "delimiter": ";"},
    {"subscription_tier": "enterprise", "columns": "id,name,lifetime_value"},
    {"country_code": "FR", "delimiter": "\t", "quoteChar": "'"},
]
# The export the downloaders fetch again and again.
DOWNLOADED = {"country_code": "GB", "columns": "id,name,email"}
STATUS_CONNECTIONS = 32
MAX_ERRORS = 100


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


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and its descendants."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


async def curl_sha256(url: str, nice: int = 0) -> str | None:
    """SHA-256 of curl's download of ``url``, hashed by sha256sum on the way (None if curl
    failed); curl runs at ``nice`` when it is not 0."""
    pipeline = f"set -o pipefail; curl -sf --http1.1 '{url}' | sha256sum"
    command = ["bash", "-c", pipeline]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    result = await trio.run_process(command, capture_stdout=True, check=False)
    return result.stdout.split()[0].decode() if result.returncode == 0 else None


class Load:
    """The load's clients against the service at ``url`` (process ``pid``). ``expected``
    holds the SHA-256 of each of ``EXPORT_KINDS`` (as many as are kept running), and
    ``downloaded`` that of the file at ``download_url``; curl runs at ``nice``. Every
    ``until`` is a ``time.perf_counter()`` value."""

    def __init__(
        self,
        url: str,
        pid: int,
        expected: list[str],
        download_url: str,
        downloaded: str,
        *,
        nice: int = 0,
    ) -> None:
        self.url, self.pid, self.expected, self.nice = url, pid, expected, nice
        self.download_url, self.downloaded = download_url, downloaded
        self.errors: list[str] = []
        self.export_ids: list[str] = []
        self.exports_completed = self.exports_checked = self.downloads_completed = 0
        self.status_requests = 0
        self.rss_samples: list[tuple[float, int]] = []  # (seconds since origin, bytes)
        self.origin = time.perf_counter()

    def error(self, what: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(what)

    async def keep_exporting(self, client: httpx.AsyncClient, kind: int, until: float) -> None:
        params = EXPORT_KINDS[kind]
        while time.perf_counter() < until:
            response = await client.post("/exports/csv", params=params)
            if response.status_code != 202:
                self.error(f"POST {params}: {response.status_code}")
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
                self.error(f"export {params}: {doc['status']}: {doc['error']}")
                continue
            self.exports_completed += 1
            sha = await curl_sha256(f"{self.url}/exports/{export_id}/download", self.nice)
            if sha != self.expected[kind]:
                self.error(f"export {params}: its file differs from COPY's")
            self.exports_checked += 1
            await client.delete(f"/exports/{export_id}")  # keeps the disk from filling up

    async def keep_downloading(self, until: float) -> None:
        while time.perf_counter() < until:
            sha = await curl_sha256(self.download_url, self.nice)
            if sha != self.downloaded:
                self.error(f"download: {'curl failed' if sha is None else 'wrong bytes'}")
                continue
            self.downloads_completed += 1

    async def ask_status(self, rate: float, until: float) -> None:
        """``rate`` status requests a second over ``STATUS_CONNECTIONS`` keep-alive sockets,
        each for one of the last 16 exports started.

        Raw HTTP/1.1, like bench/health.py: an HTTP library's Python per request, in this
        busy process, could not keep up with the rate it is asked to make."""
        host, port = self.url.removeprefix("http://").split(":")
        interval = STATUS_CONNECTIONS / rate

        async def connection(offset: float) -> None:
            sock = None
            start = time.perf_counter() + offset
            for tick in itertools.count():
                if time.perf_counter() >= until:
                    break
                await trio.sleep(max(0.0, start + tick * interval - time.perf_counter()))
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
                    self.error(f"status: {response[:40]!r}")
                if not response or b"connection: close" in response.lower():
                    sock.close()  # Hypercorn ends a keep-alive connection after 1,000 requests
                    sock = None
            if sock is not None:
                sock.close()

        async with trio.open_nursery() as nursery:
            for index in range(STATUS_CONNECTIONS):
                nursery.start_soon(connection, index / rate)

    async def sample_rss(self, until: float = float("inf")) -> None:
        """The service's memory 10 times a second, until ``until`` or cancelled."""
        while time.perf_counter() < until:
            self.rss_samples.append((time.perf_counter() - self.origin, tree_rss(self.pid)))
            await trio.sleep(0.1)

    def peak_rss(self) -> int:
        return max(rss for _, rss in self.rss_samples)
