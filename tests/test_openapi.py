"""/openapi.json describes the real API: its routes, and the shapes of real responses."""

from __future__ import annotations

import re
import uuid
from typing import Any

import jsonschema
from openapi_spec_validator import validate

from exporter.core.config import Settings
from exporter.http.app import create_app
from tests.support import Server


def schema_of(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def test_document_is_valid_openapi_3_1() -> None:
    from exporter.http.openapi import openapi_document

    validate(openapi_document())


def test_paths_and_methods_match_the_routes() -> None:
    from exporter.http.openapi import openapi_document

    app = create_app(Settings(), "postgresql://unused")
    routes: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", "{id}", rule.rule)
        for method in rule.methods or ():
            if method not in ("OPTIONS",):
                routes.add((path, method.lower()))
    documented = {
        (path, method) for path, item in openapi_document()["paths"].items() for method in item
    }
    # Quart answers HEAD for every GET route on its own; only the download documents it.
    routes = {(p, m) for p, m in routes if m != "head" or p.endswith("/download")}
    routes.add(("/health", "get"))  # answered ahead of Quart, by health.health_fast_path
    assert routes == documented


async def test_real_responses_conform(server: Server) -> None:
    document = (await server.client.get("/openapi.json")).json()
    created = await server.client.post("/exports/csv", params={"columns": "id,email"})
    schema_of(document, "ExportCreated").validate(created.json())
    export_id = created.json()["exportId"]
    schema_of(document, "ExportStatus").validate(await server.status(export_id))
    schema_of(document, "ExportStatus").validate(await server.wait_for(export_id, "completed"))
    problem = await server.client.post("/exports/csv", params={"delimiter": "ab"})
    schema_of(document, "Problem").validate(problem.json())
    missing = await server.client.get(f"/exports/{uuid.uuid4()}/status")
    schema_of(document, "Problem").validate(missing.json())
    schema_of(document, "Health").validate((await server.client.get("/health")).json())
