"""The API end to end: a real Hypercorn on loopback, the real database, real files."""

from __future__ import annotations

import json
import uuid

import pytest

from exporter.core.model import ExportRequest
from exporter.core.request import parse_export_request
from tests.support import ROW_SOURCE_PARAMS, SEED_ROWS, Oracle, Server, StartServer

# One filtered export (a few MB) runs in the fast suite; the others, whole-table ones among
# them, only in the full one.
MORE_EXPORTS = [
    {},
    {"subscription_tier": "pro", "delimiter": "\t"},
    {"columns": "email,lifetime_value,signup_date", "delimiter": "|", "quoteChar": "'"},
    {"country_code": "DE", "subscription_tier": "enterprise", "delimiter": ";"},
    {"columns": "name", "quoteChar": "'"},
    # A delimiter that occurs inside values and header names forces quoting everywhere.
    {"columns": "id,signup_date,lifetime_value", "delimiter": "0"},
    {"columns": "name,country_code", "delimiter": " "},
]


@pytest.mark.parametrize(
    "params",
    [
        {"country_code": "us", "columns": "id,name,email"},
        *(pytest.param(params, marks=pytest.mark.slow) for params in MORE_EXPORTS),
    ],
)
@pytest.mark.parametrize("row_source", ROW_SOURCE_PARAMS)
async def test_file_equals_postgres_copy(
    start_server: StartServer, oracle: Oracle, params: dict[str, str], row_source: str
) -> None:
    server = await start_server(row_source=row_source)
    export_id = await server.create(**params)
    doc = await server.wait_for(export_id, "completed", "failed")
    assert doc["status"] == "completed", doc["error"]
    response = await server.client.get(f"/exports/{export_id}/download")
    assert response.status_code == 200
    expected = oracle(parse_export_request(params))
    assert response.content == expected
    assert doc["fileSize"] == len(expected)
    # The seed has no line breaks inside values: one line a row, plus the header.
    assert doc["progress"]["processedRows"] == expected.count(b"\n") - 1


async def test_created_response_and_status_document(server: Server) -> None:
    response = await server.client.post("/exports/csv", params={"country_code": "fr"})
    assert response.status_code == 202
    body = response.json()
    export_id = body["exportId"]
    assert uuid.UUID(export_id).version == 4
    assert body["status"] == "pending"
    assert body["statusUrl"] == f"/exports/{export_id}/status"
    assert body["downloadUrl"] == f"/exports/{export_id}/download"
    assert response.headers["location"] == body["statusUrl"]

    doc = await server.wait_for(export_id, "completed")
    progress = doc["progress"]
    assert progress["percentage"] == 100
    assert progress["processedRows"] == progress["totalRows"] > 0
    assert progress["bytesWritten"] == doc["fileSize"]
    assert progress["etaSeconds"] == 0
    assert progress["rowsPerSecond"] > 0
    assert doc["request"] == {
        "country_code": "FR",
        "subscription_tier": None,
        "columns": list(ExportRequest().columns),
        "delimiter": ",",
        "quoteChar": '"',
        "neutralizeFormulas": False,
    }
    assert doc["error"] is None
    for stamp in ("createdAt", "startedAt", "completedAt", "expiresAt"):
        assert doc[stamp].endswith("Z")
    assert doc["createdAt"] <= doc["startedAt"] <= doc["completedAt"] < doc["expiresAt"]
    assert doc["downloadUrl"] == f"/exports/{export_id}/download"
    assert "queuePosition" not in doc


async def test_json_body_is_accepted(server: Server, oracle: Oracle) -> None:
    response = await server.client.post(
        "/exports/csv", json={"columns": ["id", "email"], "subscription_tier": "free"}
    )
    assert response.status_code == 202
    export_id = response.json()["exportId"]
    await server.wait_for(export_id, "completed")
    download = await server.client.get(f"/exports/{export_id}/download")
    assert download.content == oracle(
        ExportRequest(columns=("id", "email"), subscription_tier="free")
    )


async def test_download_headers(server: Server) -> None:
    export_id = await server.create(columns="id")
    doc = await server.wait_for(export_id, "completed")
    response = await server.client.get(
        f"/exports/{export_id}/download", headers={"accept-encoding": "identity"}
    )
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-length"] == str(doc["fileSize"])
    assert (
        response.headers["content-disposition"] == f'attachment; filename="export_{export_id}.csv"'
    )
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.content.count(b"\n") == SEED_ROWS + 1


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("columns=id;drop table users", "columns"),
        ("columns=id,id", "columns"),
        ("delimiter=||", "delimiter"),
        ("delimiter=%0A", "delimiter"),
        ("delimiter=%27&quoteChar=%27", "quoteChar"),
        ("subscription_tier=gold", "subscription_tier"),
        ("country_code=USA", "country_code"),
        ("country=US", "country"),
        ("columns=id&columns=email", "columns"),
    ],
)
async def test_invalid_parameters_are_named(server: Server, query: str, param: str) -> None:
    response = await server.client.post(f"/exports/csv?{query}")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 400
    assert problem["title"] and problem["type"]
    assert param in [e["param"] for e in problem["errors"]]
    assert param in problem["detail"]
    assert "Traceback" not in response.text and "SELECT" not in response.text


async def test_invalid_json_body(server: Server) -> None:
    response = await server.client.post(
        "/exports/csv", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["param"] == "body"
    response = await server.client.post("/exports/csv", json=["id"])
    assert response.status_code == 400


async def test_injection_attempts_are_refused_and_the_table_survives(server: Server) -> None:
    attempts = {
        "columns": "id; DROP TABLE users; --",
        "country_code": "'; DROP TABLE users; --",
    }
    for param, value in attempts.items():
        response = await server.client.post("/exports/csv", params={param: value})
        # Refused up front, naming the parameter, with nothing of the service's SQL or code
        # in the answer.
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert [e["param"] for e in problem["errors"]] == [param]
        assert param in problem["detail"]
        assert "SELECT" not in response.text and "Traceback" not in response.text
    # ... and the users table is whole: an export of it still has every row.
    export_id = await server.create(columns="id")
    doc = await server.wait_for(export_id, "completed", "failed")
    assert doc["status"] == "completed", doc["error"]
    assert doc["progress"]["processedRows"] == SEED_ROWS


@pytest.mark.parametrize(
    "path",
    [
        "/exports/{uuid}/status",
        "/exports/not-a-uuid/status",
        "/exports/../../etc/passwd/status",
        "/exports/{uuid}/download",
        "/exports/%2e%2e%2fsecret/download",
    ],
)
async def test_unknown_or_malformed_id_is_404(server: Server, path: str) -> None:
    response = await server.client.get(path.format(uuid=uuid.uuid4()))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


async def test_delete_unknown_is_404(server: Server) -> None:
    response = await server.client.delete(f"/exports/{uuid.uuid4()}")
    assert response.status_code == 404
    response = await server.client.delete("/exports/xyz")
    assert response.status_code == 404


async def test_delete_completed_removes_file(server: Server) -> None:
    export_id = await server.create(columns="id", country_code="JP")
    await server.wait_for(export_id, "completed")
    path = server.settings.export_dir / f"{export_id}.csv"
    assert path.exists()
    assert (await server.client.delete(f"/exports/{export_id}")).status_code == 204
    assert not path.exists()
    assert (await server.status(export_id))["status"] == "cancelled"
    download = await server.client.get(f"/exports/{export_id}/download")
    assert download.status_code == 410
    assert download.headers["content-type"] == "application/problem+json"
    assert (await server.client.delete(f"/exports/{export_id}")).status_code == 204


async def test_health_and_unknown_route(server: Server) -> None:
    response = await server.client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    response = await server.client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    response = await server.client.put("/exports/csv")
    assert response.status_code == 405
    assert json.loads(response.text)["status"] == 405


async def test_list_of_recent_exports(server: Server) -> None:
    ids = [await server.create(country_code=code) for code in ("NZ", "GB", "FR")]
    for export_id in ids:
        await server.wait_for(export_id, "completed")
    response = await server.client.get("/exports", params={"limit": 2})
    assert response.status_code == 200
    listed = response.json()["exports"]
    assert [doc["exportId"] for doc in listed] == ids[:0:-1]  # newest first, two of them
    assert listed[0] == await server.status(ids[2])  # the same documents as GET status
    default = (await server.client.get("/exports")).json()["exports"]
    assert [doc["exportId"] for doc in default][:3] == ids[::-1]
    for bad in ("0", "101", "x", "-1"):
        response = await server.client.get("/exports", params={"limit": bad})
        assert response.status_code == 400
        assert response.json()["errors"][0]["param"] == "limit"
