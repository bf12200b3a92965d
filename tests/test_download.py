"""Downloads, GET and HEAD /exports/{id}/download: headers, ranges, conditionals, gzip,
resume, zero-copy and its fallback, slow, stalled and vanished clients. A real Hypercorn
on loopback, real files, real curl.

Every test that is not about sendfile runs twice: with the files in a folder, and in an
object store with DOWNLOAD_MODE=proxy (the service streams the object), which must
answer exactly the same."""

from __future__ import annotations

import functools
import gzip
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from exporter.core.model import ExportRequest
from tests.support import (
    Oracle,
    S3Bucket,
    Server,
    StartServer,
    UsersLock,
    at_rest,
    count_tasks,
    curl,
    open_fds,
)

ENCODINGS = ["identity", "gzip"]


async def completed_export(server: Server, **params: str) -> str:
    export_id = await server.create(**params)
    doc = await server.wait_for(export_id, "completed", "failed")
    assert doc["status"] == "completed", doc["error"]
    return export_id


@pytest.fixture(params=["folder", "s3-proxy"])
async def server(request: pytest.FixtureRequest, start_server: StartServer) -> Server:
    if request.param == "folder":
        return await start_server()
    s3: S3Bucket = request.getfixturevalue("s3")
    server = await start_server(export_storage=s3.storage, download_mode="proxy")
    server.bucket = s3
    return server


@pytest.fixture
async def folder_server(start_server: StartServer) -> Server:
    return await start_server()


@pytest.fixture
async def export(server: Server) -> str:
    return await completed_export(server, country_code="US")


@pytest.fixture
async def folder_export(folder_server: Server) -> str:
    return await completed_export(folder_server, country_code="US")


def file_of(server: Server, export_id: str, encoding: str) -> bytes:
    if server.bucket is not None:
        return server.bucket.read(export_id, encoding)
    path = server.settings.export_dir / f"{export_id}.csv"
    if encoding == "gzip":
        path = path.with_name(path.name + ".gz")
    return path.read_bytes()


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_whole_file_and_headers(
    server: Server, oracle: Oracle, export: str, encoding: str
) -> None:
    url = f"{server.url}/exports/{export}/download"
    status, headers, body, _ = await curl("-H", f"Accept-Encoding: {encoding}", url)
    assert status == 200
    expected = oracle(ExportRequest(country_code="US"))
    if encoding == "gzip":
        assert headers["content-encoding"] == "gzip"
        assert gzip.decompress(body) == expected
        assert body == file_of(server, export, "gzip")  # made at export time, not per request
    else:
        assert "content-encoding" not in headers
        assert body == expected
    assert headers["content-length"] == str(len(body))
    assert headers["content-type"] == "text/csv; charset=utf-8"
    assert headers["content-disposition"] == f'attachment; filename="export_{export}.csv"'
    assert headers["accept-ranges"] == "bytes"
    assert headers["vary"] == "Accept-Encoding"
    assert re.fullmatch(r'"[^"]+"', headers["etag"])  # strong
    assert headers["last-modified"].endswith(" GMT")


async def test_gzip_and_identity_have_their_own_etags(server: Server, export: str) -> None:
    url = f"{server.url}/exports/{export}/download"
    _, identity, _, _ = await curl("-I", url)
    _, gzipped, _, _ = await curl("-I", "-H", "Accept-Encoding: gzip, deflate", url)
    assert identity["etag"] != gzipped["etag"]
    _, refused, _, _ = await curl("-I", "-H", "Accept-Encoding: gzip;q=0, identity", url)
    assert "content-encoding" not in refused
    assert refused["etag"] == identity["etag"]


@pytest.mark.slow  # waits half a second for a body that must not come
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_head_has_the_headers_and_no_body(server: Server, export: str, encoding: str) -> None:
    url = f"{server.url}/exports/{export}/download"
    status, headers, _, _ = await curl("-I", "-H", f"Accept-Encoding: {encoding}", url)
    assert status == 200
    assert headers["content-length"] == str(len(file_of(server, export, encoding)))
    # On the wire: the header block and then nothing, not one byte of body.
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            f"HEAD /exports/{export}/download HTTP/1.1\r\nHost: x\r\n"
            f"Accept-Encoding: {encoding}\r\n\r\n".encode()
        )
        received = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some()
        with trio.move_on_after(0.5):  # anything more would be a body
            received += await stream.receive_some()
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"\r\n\r\n") and received.count(b"\r\n\r\n") == 1


# Each rule of Range is pinned by tests/test_ranges.py (fast, no I/O); these check the same
# on the wire, and run in the full suite only, like the malformed ones below.
@pytest.mark.slow
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [("0-99", 0, 99), ("1000-", 1000, None), ("-500", -500, None), ("10-10", 10, 10)],
)
async def test_single_ranges(
    server: Server, export: str, encoding: str, spec: str, first: int, last: int | None
) -> None:
    data = file_of(server, export, encoding)
    size = len(data)
    start = first if first >= 0 else size + first
    end = size - 1 if last is None else last
    status, headers, body, _ = await curl(
        "-H", f"Accept-Encoding: {encoding}", "-H", f"Range: bytes={spec}",
        f"{server.url}/exports/{export}/download",
    )  # fmt: skip
    assert status == 206
    assert headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert body == data[start : end + 1]
    assert headers["content-length"] == str(end - start + 1)


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_unsatisfiable_range_is_416(server: Server, export: str, encoding: str) -> None:
    size = len(file_of(server, export, encoding))
    status, headers, _, _ = await curl(
        "-H", f"Accept-Encoding: {encoding}", "-H", f"Range: bytes={size}-",
        f"{server.url}/exports/{export}/download",
    )  # fmt: skip
    assert status == 416
    assert headers["content-range"] == f"bytes */{size}"
    assert headers["content-type"] == "application/problem+json"


@pytest.mark.slow
@pytest.mark.parametrize("header", ["bytes=abc", "items=0-1", "bytes=5-1", "bytes=0-1,5-9"])
async def test_malformed_or_multiple_ranges_get_the_whole_file(
    server: Server, export: str, header: str
) -> None:
    status, _, body, _ = await curl(
        "-H", f"Range: {header}", f"{server.url}/exports/{export}/download"
    )
    assert status == 200
    assert body == file_of(server, export, "identity")


async def test_conditionals(server: Server, export: str) -> None:
    url = f"{server.url}/exports/{export}/download"
    _, headers, _, _ = await curl("-I", url)
    etag, modified = headers["etag"], headers["last-modified"]

    status, _, body, _ = await curl("-H", f"If-None-Match: {etag}", url)
    assert status == 304 and body == b""
    status, _, _, _ = await curl("-H", 'If-None-Match: "other"', url)
    assert status == 200

    status, headers, body, _ = await curl("-H", "Range: bytes=0-9", "-H", f"If-Range: {etag}", url)
    assert status == 206 and len(body) == 10
    status, _, body, _ = await curl("-H", "Range: bytes=0-9", "-H", 'If-Range: "stale"', url)
    assert status == 200 and body == file_of(server, export, "identity")
    status, _, body, _ = await curl("-H", "Range: bytes=0-9", "-H", f"If-Range: {modified}", url)
    assert status == 206 and len(body) == 10
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    status, _, body, _ = await curl("-H", "Range: bytes=0-9", "-H", f"If-Range: {old}", url)
    assert status == 200


async def test_not_ready_and_gone(server: Server, users_lock: Callable[[], UsersLock]) -> None:
    lock = users_lock()
    export_id = await server.create()
    status, _, _, _ = await curl(f"{server.url}/exports/{export_id}/download")
    assert status == 409
    await server.client.delete(f"/exports/{export_id}")
    lock.release()
    status, headers, _, _ = await curl(f"{server.url}/exports/{export_id}/download")
    assert status == 410
    assert headers["content-type"] == "application/problem+json"


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_interrupted_download_resumes_byte_identical(
    server: Server, tmp_path: Path, encoding: str
) -> None:
    export_id = await completed_export(server)
    url = f"{server.url}/exports/{export_id}/download"
    expected = file_of(server, export_id, encoding)
    out = tmp_path / "download"
    accept = ["-H", f"Accept-Encoding: {encoding}"]
    # A slow first attempt, cut off part-way through: killed as soon as it has some bytes
    # (curl's rate limit lets a first burst through, so a fixed delay is not enough).
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                trio.run_process,
                ["curl", "-s", "--limit-rate", "100k", *accept, "-o", str(out), url],
                check=False,
            )
        )
        with trio.fail_after(10):
            while not out.exists() or out.stat().st_size == 0:
                await trio.sleep(0.005)
        nursery.cancel_scope.cancel()
    partial = out.stat().st_size
    assert 0 < partial < len(expected)
    await trio.run_process(["curl", "-s", "-f", "-C", "-", *accept, "-o", str(out), url])
    assert out.read_bytes() == expected


async def test_sendfile_is_used_on_http_1_1(folder_server: Server, folder_export: str) -> None:
    server, export = folder_server, folder_export
    size = len(file_of(server, export, "identity"))
    before = await server.download_bytes("sendfile")
    status, _, body, line = await curl("--http1.1", f"{server.url}/exports/{export}/download")
    assert status == 200 and line.startswith("HTTP/1.1")
    assert len(body) == size
    assert await server.download_bytes("sendfile") - before == size


async def test_fallback_without_zero_copy_gives_the_same_bytes(
    folder_server: Server, folder_export: str
) -> None:
    server, export = folder_server, folder_export
    """HTTP/2 (h2c with prior knowledge) has no zero-copy: the chunked fallback serves it."""
    expected = file_of(server, export, "identity")
    before = await server.download_bytes("sendfile")
    status, _, body, line = await curl(
        "--http2-prior-knowledge", f"{server.url}/exports/{export}/download"
    )
    assert line.startswith("HTTP/2") and status == 200
    assert body == expected
    assert await server.download_bytes("sendfile") == before
    status, _, body, _ = await curl(
        "--http2-prior-knowledge", "-H", "Range: bytes=-100",
        f"{server.url}/exports/{export}/download",
    )  # fmt: skip
    assert status == 206 and body == expected[-100:]


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
async def test_slow_client_is_served_to_the_end_with_flat_memory(
    server: Server, tmp_path: Path
) -> None:
    export_id = await completed_export(server)
    expected = file_of(server, export_id, "identity")
    assert len(expected) > 10_000_000  # tens of MB: the seed makes it so
    out = tmp_path / "slow.csv"
    rate = 2_000_000  # bytes/s: several seconds for the whole file
    samples: list[int] = []
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def download() -> None:
            await trio.run_process(
                ["curl", "-s", "-f", "--limit-rate", str(rate), "-o", str(out),
                 f"{server.url}/exports/{export_id}/download"],
            )  # fmt: skip
            done.set()

        nursery.start_soon(download)
        while not done.is_set():
            samples.append(rss_bytes())
            await trio.sleep(0.05)
    assert out.read_bytes() == expected
    assert len(samples) > 20
    # The whole file went out; the server's memory did not follow it.
    growth = max(samples) - samples[0]
    assert growth < 8_000_000, f"RSS grew by {growth / 1e6:.1f} MB while sending"


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["--http1.1", "--http2-prior-knowledge"])
async def test_vanished_client_leaves_nothing_behind(
    server: Server, tmp_path: Path, protocol: str
) -> None:
    export_id = await completed_export(server)
    url = f"{server.url}/exports/{export_id}/download"
    await curl("-I", url)  # warm up: the connection pool, the file in the page cache
    fds, tasks = await at_rest(open_fds, count_tasks)  # the warm-up's connection ended
    with trio.move_on_after(1.0):
        await trio.run_process(
            ["curl", "-s", protocol, "--limit-rate", "200k", "-o", str(tmp_path / "x"), url],
            check=False,
        )
    # curl is gone (killed by the cancelled scope); everything it held is released.
    with trio.fail_after(5):
        while open_fds() > fds or count_tasks() > tasks:
            await trio.sleep(0.05)
    assert (await curl("-I", url))[0] == 200  # and the server carries on


def test_curl_is_available() -> None:
    assert subprocess.run(["curl", "--version"], capture_output=True).returncode == 0


async def test_zero_copy_can_be_switched_off(start_server: StartServer) -> None:
    """ZERO_COPY=0: HTTP/1.1 downloads take the chunked path, with the same bytes."""
    server = await start_server(zero_copy=False)
    export_id = await completed_export(server, subscription_tier="enterprise")
    expected = file_of(server, export_id, "identity")
    before = await server.download_bytes("sendfile")
    status, _, body, _ = await curl("--http1.1", f"{server.url}/exports/{export_id}/download")
    assert status == 200 and body == expected
    assert await server.download_bytes("sendfile") == before
