"""Exports in an S3-compatible object store (EXPORT_STORAGE=s3://bucket/prefix): streamed as
multipart uploads, downloaded through a redirect to the store or through the service,
removed with their jobs, and a store that goes away. The store is moto's S3 server, a
real S3 API on loopback in a process of its own; downloads are real curl."""

from __future__ import annotations

import gzip
import io
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from exporter.core.model import ExportRequest
from exporter.core.request import parse_export_request
from exporter.storage.s3 import _Buffer
from tests.support import (
    ROW_SOURCE_PARAMS,
    S3_CREDENTIALS,
    GatedDatabase,
    Gates,
    Oracle,
    S3Bucket,
    S3Server,
    Server,
    StartServer,
    backends,
    curl,
    service,
    wait_until_blocked,
    wait_until_blocked_sync,
)

SHAPES = [
    pytest.param({}, id="all"),
    pytest.param({"columns": "id,email,country_code", "country_code": "US"}, id="some"),
    pytest.param({"delimiter": ";", "neutralizeFormulas": "true"}, id="dialect"),
]


async def s3_server(start_server: StartServer, s3: S3Bucket, **overrides: Any) -> Server:
    return await start_server(export_storage=s3.storage, **overrides)


async def completed(server: Server, **params: str) -> str:
    export_id = await server.create(**params)
    doc = await server.wait_for(export_id, "completed", "failed", "cancelled")
    assert doc["status"] == "completed", doc
    return export_id


@pytest.mark.parametrize("row_source", ROW_SOURCE_PARAMS)
@pytest.mark.parametrize("params", SHAPES)
async def test_exports_download_through_the_redirect_byte_identical(
    start_server: StartServer,
    s3: S3Bucket,
    oracle: Oracle,
    params: dict[str, str],
    row_source: str,
) -> None:
    server = await s3_server(start_server, s3, row_source=row_source)
    export_id = await completed(server, **params)
    expected = oracle(parse_export_request(params))
    url = f"{server.url}/exports/{export_id}/download"

    status, headers, _, _ = await curl(url)
    assert status == 307
    assert headers["location"].startswith(s3.server.url)
    assert headers["cache-control"] == "private, no-store"

    status, headers, body, _ = await curl("-L", url)
    assert status == 200 and body == expected
    assert headers["content-type"] == "text/csv; charset=utf-8"
    assert headers["content-disposition"] == f'attachment; filename="export_{export_id}.csv"'

    status, headers, body, _ = await curl("-L", "-H", "Accept-Encoding: gzip", url)
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == expected

    status, headers, body, _ = await curl("-L", "-H", "Range: bytes=100-199", url)
    assert status == 206 and body == expected[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(expected)}"
    # Nothing is left but the two objects: every upload was completed.
    assert s3.uploads() == []
    assert s3.keys() == [s3.key(export_id), s3.key(export_id, "gzip")]


# -- nothing is left behind --------------------------------------------------------------------

# Where the big gated database holds an export: about 22 MB of CSV written before it, so
# the CSV's multipart upload has parts in the store.
GATE = 240_001


async def held_export(server: Server, gated: GatedDatabase, gates: Gates, s3: S3Bucket) -> str:
    """An export stopped at GATE, its CSV's upload open in the store with parts in it."""
    gates.hold(GATE)
    export_id = await server.create()
    await wait_until_blocked(gated.admin_url, export_id)
    with trio.fail_after(10):
        while s3.uploads() != [s3.key(export_id)] or not s3.parts(s3.key(export_id)):
            await trio.sleep(0.05)
    return export_id


async def test_cancel_mid_upload_leaves_no_upload_and_no_object(
    start_server: StartServer, s3: S3Bucket, big_gated_database: GatedDatabase, big_gates: Gates
) -> None:
    server = await s3_server(start_server, s3, conninfo=big_gated_database.url)
    export_id = await held_export(server, big_gated_database, big_gates, s3)
    response = await server.client.delete(f"/exports/{export_id}")
    assert response.status_code == 204
    assert (await server.status(export_id))["status"] == "cancelled"
    assert s3.uploads() == [] and s3.keys() == []


async def test_failed_export_leaves_no_upload_and_no_object(
    start_server: StartServer, s3: S3Bucket, big_gated_database: GatedDatabase, big_gates: Gates
) -> None:
    server = await s3_server(start_server, s3, conninfo=big_gated_database.url)
    export_id = await held_export(server, big_gated_database, big_gates, s3)
    ((pid, _, _),) = backends(big_gated_database.admin_url, export_id)
    with psycopg.connect(big_gated_database.admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    doc = await server.wait_for(export_id, "failed")
    assert "database ended the export's connection" in doc["error"]
    assert s3.uploads() == [] and s3.keys() == []


async def test_delete_and_expiry_remove_the_objects(
    start_server: StartServer, s3: S3Bucket
) -> None:
    server = await s3_server(start_server, s3, export_ttl=1.0, janitor_interval=0.2)
    deleted = await completed(server, country_code="US")
    assert s3.keys() == [s3.key(deleted), s3.key(deleted, "gzip")]
    assert (await server.client.delete(f"/exports/{deleted}")).status_code == 204
    assert s3.keys() == []
    expiring = await completed(server, country_code="FR")
    assert s3.keys() == [s3.key(expiring), s3.key(expiring, "gzip")]
    await server.wait_for(expiring, "expired", timeout=10)
    assert s3.keys() == []
    status, _, _, _ = await curl(f"{server.url}/exports/{expiring}/download")
    assert status == 410


async def test_head_answers_from_the_objects_metadata(
    start_server: StartServer, s3: S3Bucket
) -> None:
    server = await s3_server(start_server, s3)
    export_id = await completed(server, country_code="US")
    url = f"{server.url}/exports/{export_id}/download"
    for encoding in ("identity", "gzip"):
        status, headers, body, _ = await curl("-I", "-H", f"Accept-Encoding: {encoding}", url)
        assert status == 200 and body == b""
        assert headers["content-length"] == str(len(s3.read(export_id, encoding)))
        assert headers["accept-ranges"] == "bytes" and headers["etag"].startswith('"')
        assert headers.get("content-encoding") == ("gzip" if encoding == "gzip" else None)


# -- the store goes away, or is not there ------------------------------------------------------


@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A store of this test's own, which it may stop and start again."""
    store = S3Server()
    store.start()
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    try:
        yield S3Bucket(store, store.new_bucket())
    finally:
        store.stop()


@pytest.mark.slow
async def test_store_stopped_mid_export_fails_it_naming_the_store(
    start_server: StartServer,
    own_s3: S3Bucket,
    big_gated_database: GatedDatabase,
    big_gates: Gates,
    database: str,
) -> None:
    s3 = own_s3
    server = await s3_server(start_server, s3, conninfo=big_gated_database.url)
    export_id = await held_export(server, big_gated_database, big_gates, s3)
    await trio.to_thread.run_sync(s3.server.stop)
    big_gates.release(GATE)
    doc = await server.wait_for(export_id, "failed", timeout=60)
    assert doc["error"].startswith(f"the export store {s3.storage} could not be reached")
    assert (await server.client.get("/health")).status_code == 200
    ready = await server.client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["exportStore"] == "down"
    assert s3.storage in ready.json()["detail"]

    # Back (moto's store starts empty: the bucket is made again, as an operator would).
    await trio.to_thread.run_sync(s3.server.start)
    s3.server.client.create_bucket(Bucket=s3.name)
    assert (await server.client.get("/ready")).status_code == 200
    export_id = await completed(server, country_code="US")
    _, _, body, _ = await curl("-L", f"{server.url}/exports/{export_id}/download")
    assert body == big_gated_database.oracle(ExportRequest(country_code="US"))


async def test_missing_bucket_is_named_in_ready_and_in_the_failed_export(
    start_server: StartServer, s3: S3Bucket
) -> None:
    server = await start_server(export_storage="s3://no-such-bucket/exports")
    ready = await server.client.get("/ready")
    assert ready.status_code == 503
    expected = "the export store s3://no-such-bucket/exports has no bucket named 'no-such-bucket'"
    assert ready.json()["detail"] == expected
    export_id = await server.create(country_code="US")
    doc = await server.wait_for(export_id, "failed", "completed")
    assert doc["status"] == "failed" and doc["error"] == expected


# -- a restart continues the upload ------------------------------------------------------------


def checkpoint_of(database: str, export_id: str) -> tuple[int, int, int]:
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT checkpoint_rows, checkpoint_csv_bytes, checkpoint_gzip_bytes"
            " FROM export_jobs WHERE id = %s",
            (export_id,),
        ).fetchone()
    assert row is not None
    return (row[0] or 0, row[1] or 0, row[2] or 0)


@pytest.mark.slow
@pytest.mark.parametrize("then", ["continue", "cancel"])
def test_sigterm_keeps_the_uploads_and_the_restart_continues_them(
    s3: S3Bucket, big_gated_database: GatedDatabase, big_gates: Gates, tmp_path: Path, then: str
) -> None:
    """A checkpoint needs both files to have grown by a part (5 MiB) since the last one;
    with ranges of 10,000 ids the held export has one with both files in parts. Cancelled
    while it waits to be continued instead, its uploads are aborted at once."""
    gated = big_gated_database
    settings = {**s3.env, "BATCH_ROWS": "200", "CHECKPOINT_INTERVAL": "0.000001"}
    csv_key, gz_key = "", ""
    with service(gated.url, tmp_path, keep_queue=True, **settings) as app:
        big_gates.hold(GATE)
        response = app.client.post("/exports/csv")
        assert response.status_code == 202
        export_id = response.json()["exportId"]
        csv_key, gz_key = s3.key(export_id), s3.key(export_id, "gzip")
        wait_until_blocked_sync(gated.admin_url, export_id)
        deadline = time.monotonic() + 10
        while not checkpoint_of(gated.admin_url, export_id)[2]:
            assert time.monotonic() < deadline, "no checkpoint with the gzip copy in parts"
            time.sleep(0.05)
        app.process.send_signal(signal.SIGTERM)
        assert app.process.wait(10) == 0
    rows, csv_bytes, gzip_bytes = checkpoint_of(gated.admin_url, export_id)
    # Handed back with both uploads open, their parts up to the checkpoint in the store.
    assert s3.uploads() == sorted([csv_key, gz_key]) and s3.keys() == []
    assert sum(s3.parts(csv_key)) >= csv_bytes and sum(s3.parts(gz_key)) >= gzip_bytes
    big_gates.release(GATE)

    if then == "cancel":
        with service(gated.url, tmp_path, MAX_CONCURRENT_EXPORTS="0", **settings) as app:
            assert app.client.delete(f"/exports/{export_id}").status_code == 204
            assert app.client.get(f"/exports/{export_id}/status").json()["status"] == "cancelled"
        assert s3.uploads() == [] and s3.keys() == []
        return
    with service(gated.url, tmp_path, **settings) as app:
        doc = app.wait_for(export_id, "completed", "failed", timeout=60)
        assert doc["status"] == "completed", doc
        assert doc["attempt"] == 1 and doc["resumedFromRows"] == rows > 0
        _, _, body, _ = trio.run(curl, "-L", f"{app.url}/exports/{export_id}/download")
    expected = gated.oracle(ExportRequest())
    assert body == expected
    assert gzip.decompress(s3.read(export_id, "gzip")) == expected
    assert s3.uploads() == [] and s3.keys() == sorted([csv_key, gz_key])


# -- the upload's buffer -----------------------------------------------------------------------


@given(
    pieces=st.lists(st.binary(max_size=50), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=10),
)
def test_the_buffer_gives_back_what_was_written_in_order(
    pieces: list[bytes], cuts: list[int]
) -> None:
    buffer = _Buffer()
    for piece in pieces:
        buffer.append(piece)
    written = b"".join(pieces)
    taken = b""
    for cut in cuts:
        part = buffer.take(min(cut, buffer.size))
        assert len(part) == min(cut, len(written) - len(taken))
        taken += part.read()
        assert buffer.size == len(written) - len(taken)
    taken += buffer.take(buffer.size).read()
    assert taken == written


@given(
    pieces=st.lists(st.binary(max_size=40), max_size=12),
    reads=st.lists(st.tuples(st.integers(-5, 300), st.integers(0, 90)), max_size=8),
)
def test_a_part_body_reads_like_a_file_from_anywhere(
    pieces: list[bytes], reads: list[tuple[int, int]]
) -> None:
    """What the client does with it: sizes it, reads it in blocks, seeks back to retry."""
    buffer = _Buffer()
    for piece in pieces:
        buffer.append(piece)
    data = b"".join(pieces)
    body = buffer.take(len(data))
    assert body.seek(0, io.SEEK_END) == len(data) == len(body)
    for offset, count in reads:
        at = body.seek(offset)
        assert at == min(max(offset, 0), len(data)) == body.tell()
        assert body.read(count) == data[at : at + count]
        assert body.tell() == min(at + count, len(data))
    body.seek(0)
    assert body.read() == data


# -- boto3 only for a bucket -------------------------------------------------------------------

LOADS_BOTO3 = """
import sys
from exporter.http.app import create_app
from exporter.core.config import Settings
create_app(Settings.from_env(), "postgresql://unused")
print("botocore" in sys.modules)
"""


@pytest.mark.parametrize(("storage", "loaded"), [("", False), ("s3://exports/x", True)])
def test_boto3_is_loaded_only_for_a_bucket(storage: str, loaded: bool, tmp_path: Path) -> None:
    """About 37 MB of RSS: a service with a folder store does not pay for it."""
    env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "PATH": ""}
    env |= {"EXPORT_STORAGE": storage, "EXPORT_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", LOADS_BOTO3], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == [str(loaded)]
