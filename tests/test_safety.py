"""Bad input and safety: injection, traversal, oversized and non-UTF-8 input, the optional
bearer token, expiry of old files, CSV formula injection."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import trio

from exporter.core.model import ExportRequest
from tests.support import ROW_SOURCE_PARAMS, Oracle, Server, StartServer, curl


def table_counts(database: str) -> tuple[int, int]:
    with psycopg.connect(database) as conn:
        users = conn.execute("SELECT count(*) FROM users").fetchone()
        jobs = conn.execute("SELECT count(*) FROM export_jobs").fetchone()
    assert users is not None and jobs is not None
    return users[0], jobs[0]


INJECTIONS = {
    "country_code": ["US' OR '1'='1", "U'", "US;--", "' OR 1=1 --"],
    "subscription_tier": ["pro'; DROP TABLE users; --", "pro' OR 'a'='a", "PRO"],
    "columns": [
        "id; DROP TABLE users",
        'id,"name"',
        "id,(SELECT 1)",
        "id,pg_sleep(10)",
        "*",
        "id,email FROM users; --",
    ],
    "delimiter": ["',", "\n", "\r", "é", ""],
    "quoteChar": ["''", "\r\n", "ü", ""],
    "neutralizeFormulas": ["maybe", "1; DROP TABLE users"],
}


@pytest.mark.parametrize("as_json", [False, True])
async def test_injection_through_every_parameter_is_refused(
    server: Server, database: str, as_json: bool
) -> None:
    before = table_counts(database)
    for param, values in INJECTIONS.items():
        for value in values:
            if as_json:
                response = await server.client.post("/exports/csv", json={param: value})
            else:
                response = await server.client.post("/exports/csv", params={param: value})
            assert response.status_code == 400, (param, value, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert [e["param"] for e in response.json()["errors"]] == [param]
    assert table_counts(database) == before  # nothing ran, no job was made


async def test_query_and_body_must_agree(server: Server) -> None:
    response = await server.client.post(
        "/exports/csv", params={"delimiter": "|"}, json={"delimiter": ";"}
    )
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"param": "delimiter", "message": "given differently in the query string and the body"}
    ]
    same = await server.client.post(
        "/exports/csv", params={"country_code": "NZ"}, json={"country_code": "NZ"}
    )
    assert same.status_code == 202


TRAVERSALS = [
    "../../../../etc/passwd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%252F..%252Fetc%252Fpasswd",
    "....//....//etc/passwd",
    "00000000-0000-4000-8000-000000000000%2F..%2F..%2Fpyproject.toml",
    "%00",
    "..",
]


async def test_path_traversal_through_the_id_reads_nothing(server: Server) -> None:
    for raw in TRAVERSALS:
        for route in ("/download", "/status"):
            url = f"{server.url}/exports/{raw}{route}"
            status, _, body, _ = await curl("--path-as-is", url)
            assert status == 404, (url, status)
            assert b"root:" not in body and b"[project]" not in body
        status, _, _, _ = await curl("--path-as-is", "-X", "DELETE", f"{server.url}/exports/{raw}")
        assert status == 404


async def test_oversized_query_string_and_body_are_refused(server: Server) -> None:
    # Raw: HTTP clients refuse to send a request line this long themselves.
    sock = trio.socket.socket()
    host, port = server.url.removeprefix("http://").split(":")
    await sock.connect((host, int(port)))
    line = f"POST /exports/csv?country_code={'U' * 200_000} HTTP/1.1\r\nHost: x\r\n\r\n"
    with contextlib.suppress(OSError):  # the server may close before reading it all
        await sock.send(line.encode())
    with trio.fail_after(10):
        head = await sock.recv(64)
    sock.close()
    assert head.startswith((b"HTTP/1.1 400", b"HTTP/1.1 414", b"HTTP/1.1 431")), head
    body = json.dumps({"columns": "id," * 300_000})
    response = await server.client.post(
        "/exports/csv", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert (await server.client.get("/health")).status_code == 200


async def test_non_utf8_input_is_a_clear_400(server: Server) -> None:
    status, _, body, _ = await curl("-X", "POST", f"{server.url}/exports/csv?country_code=%FF%FE")
    assert status == 400
    assert json.loads(body)["errors"][0]["param"] == "country_code"
    response = await server.client.post("/exports/csv", content=b'{"country_code": "\xff\xfe"}')
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


# -- the optional bearer token ------------------------------------------------------------


async def test_api_token_guards_every_exports_route(start_server: StartServer) -> None:
    server = await start_server(api_token="s3cret-token")
    export_id = await server.create(country_code="NZ")  # the fixture's client has the token
    await server.wait_for(export_id, "completed")
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        for method, path in [
            ("POST", "/exports/csv"),
            ("GET", f"/exports/{export_id}/status"),
            ("GET", f"/exports/{export_id}/download"),
            ("HEAD", f"/exports/{export_id}/download"),
            ("DELETE", f"/exports/{export_id}"),
        ]:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "Basic s3cret-token"},
                {"Authorization": "Bearer s3cret-tokenX"},
            ):
                response = await anonymous.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"].startswith("Bearer")
                if method != "HEAD":
                    assert response.json()["status"] == 401
        for path in ("/health", "/ready", "/metrics", "/openapi.json"):
            assert (await anonymous.get(path)).status_code == 200
        authorised = await anonymous.get(
            f"/exports/{export_id}/status", headers={"Authorization": "Bearer s3cret-token"}
        )
        assert authorised.status_code == 200
    # curl with the token downloads the file (the zero-copy path checks it too).
    status, _, body, _ = await curl(
        "-H", "Authorization: Bearer s3cret-token", f"{server.url}/exports/{export_id}/download"
    )
    expected = (await server.client.get(f"/exports/{export_id}/download")).content
    assert status == 200 and body == expected


# -- files expire ---------------------------------------------------------------------------


@pytest.mark.slow  # waits for the files to expire
async def test_expired_files_are_removed_and_gone(start_server: StartServer) -> None:
    server = await start_server(export_ttl=1.0, janitor_interval=0.2)
    export_id = await server.create(country_code="NZ")
    doc = await server.wait_for(export_id, "completed")
    assert (await server.client.get(f"/exports/{export_id}/download")).status_code == 200
    assert sorted(p.name for p in server.settings.export_dir.iterdir()) == [
        f"{export_id}.csv",
        f"{export_id}.csv.gz",
    ]
    doc = await server.wait_for(export_id, "expired", timeout=10)
    assert "downloadUrl" not in doc
    response = await server.client.get(f"/exports/{export_id}/download")
    assert response.status_code == 410
    assert response.json()["exportStatus"] == "expired"
    assert list(server.settings.export_dir.iterdir()) == []
    assert (await server.client.delete(f"/exports/{export_id}")).status_code == 204
    assert (await server.status(export_id))["status"] == "expired"


# -- CSV formula injection --------------------------------------------------------------------

HOSTILE = [
    ('=HYPERLINK("http://x","y")', "eq@example.test"),
    ("+1+2", "+plus@example.test"),
    ("-2+3", "minus@example.test"),
    ("@SUM(1)", "at@example.test"),
    ("\tTAB", "tab@example.test"),
    ("\rCR", "cr@example.test"),
    ('Plain, "quoted" name', "plain@example.test"),
]


@pytest.fixture
def hostile_users(database: str) -> Iterator[None]:
    """Users whose values start like spreadsheet formulas, in a country of their own."""
    with psycopg.connect(database, autocommit=True) as conn:
        for name, email in HOSTILE:
            conn.execute(
                "INSERT INTO users (name, email, country_code) VALUES (%s, %s, 'ZZ')",
                (name, email),
            )
    try:
        yield
    finally:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("DELETE FROM users WHERE country_code = 'ZZ'")


@pytest.mark.usefixtures("hostile_users")
@pytest.mark.parametrize("row_source", ROW_SOURCE_PARAMS)
async def test_neutralize_formulas(
    start_server: StartServer, oracle: Oracle, row_source: str
) -> None:
    # With ROW_SOURCE=copy too: such an export is read through the cursor instead.
    server = await start_server(row_source=row_source)
    params = {"country_code": "ZZ", "columns": "id,name,email"}
    plain = await server.create(**params)
    response = await server.client.post("/exports/csv", json={**params, "neutralizeFormulas": True})
    assert response.status_code == 202
    guarded = response.json()["exportId"]
    for export_id in (plain, guarded):
        assert (await server.wait_for(export_id, "completed"))["status"] == "completed"
    plain_csv = (await server.client.get(f"/exports/{plain}/download")).content
    guarded_csv = (await server.client.get(f"/exports/{guarded}/download")).content
    request = ExportRequest(country_code="ZZ", columns=("id", "name", "email"))
    assert plain_csv == oracle(request)  # off by default: exactly COPY's bytes

    original = list(csv.reader(io.StringIO(plain_csv.decode(), newline="")))
    neutral = list(csv.reader(io.StringIO(guarded_csv.decode(), newline="")))
    assert len(neutral) == len(original) == len(HOSTILE) + 1
    changed = 0
    for before_row, after_row in zip(original, neutral, strict=True):
        for before, after in zip(before_row, after_row, strict=True):
            if before[:1] in ("=", "+", "-", "@", "\t", "\r"):
                assert after == "'" + before
                changed += 1
            else:
                assert after == before  # every other cell as COPY wrote it
    assert changed == 7  # six names and one email
    doc = await server.status(guarded)
    assert doc["request"]["neutralizeFormulas"] is True
