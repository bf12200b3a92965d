"""Exports in an S3-compatible object store (EXPORT_STORAGE=s3://bucket/prefix): streamed as
multipart uploads, downloaded through a redirect to the store or through the service,
removed with their jobs, and a store that goes away. The store is moto's S3 server, a
real S3 API on loopback in a process of its own; downloads are real curl."""

from __future__ import annotations

import gzip
from typing import Any

import pytest
import trio

from exporter.request import parse_export_request
from tests.support import (
    ROW_SOURCE_PARAMS,
    Oracle,
    S3Bucket,
    Server,
    StartServer,
    curl,
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
