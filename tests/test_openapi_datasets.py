"""/openapi.json describes the declared datasets: a path of each, a parameter per filter
admitting exactly its operators and, once resolved, only values of the column's type
that the service accepts; and the real /datasets responses have the documented shapes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from exporter.core.datasets import OPERATORS, Column, Datasets, load_datasets_file
from exporter.core.request import DIALECT_PARAMETERS, SELECT, parse_dataset_request
from exporter.http.openapi import openapi_document
from tests.support import StartServer, copy_oracle, service

NOT_FILTERS = {SELECT, *(p.name for p in DIALECT_PARAMETERS)}

# A value of each kind, for an operator that takes one.
SAMPLES = {
    "integer": "7",
    "numeric": "1.5",
    "float": "2.5",
    "text": "abc",
    "boolean": "true",
    "uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "date": "2024-01-05",
    "timestamp": "2024-01-05T10:00:00",
    "timestamptz": "2024-01-05T10:00:00Z",
    "time": "10:00",
}


@pytest.fixture(scope="module")
def document(shop: tuple[Path, Datasets]) -> dict[str, Any]:
    return openapi_document(list(shop[1].values()))


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def schema_of(document: dict[str, Any], name: str) -> jsonschema.Validator:
    return validator(document, {"$ref": f"#/components/schemas/{name}"})


def parameters(document: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    operation = document["paths"][f"/datasets/{name}/exports"]["post"]
    return {p["name"]: p for p in operation["parameters"]}


def filter_text(operator: str, column: Column) -> str:
    """A filter with ``operator`` that ``column`` would accept were it allowed."""
    value = column.labels[0] if column.kind == "enum" else SAMPLES.get(column.kind, "x")
    if operator == "is":
        return "is.null"
    if operator in ("like", "ilike"):
        return f"{operator}.a*"
    if operator == "in":
        return f'in.({value},"{value}")'
    return f"{operator}.{value}"


def test_documents_are_valid_openapi_3_1(
    shop: tuple[Path, Datasets], document: dict[str, Any]
) -> None:
    validate(document)
    validate(openapi_document(load_datasets_file(shop[0])))


def test_one_path_per_dataset(shop: tuple[Path, Datasets], document: dict[str, Any]) -> None:
    names = list(shop[1])
    expected = {"/datasets"}
    expected |= {f"/datasets/{n}" for n in names} | {f"/datasets/{n}/exports" for n in names}
    paths = document["paths"]
    assert {p for p in paths if p.startswith("/datasets")} == expected
    assert set(paths["/datasets"]) == {"get"}
    for name in names:
        assert set(paths[f"/datasets/{name}"]) == {"get"}
        assert set(paths[f"/datasets/{name}/exports"]) == {"post"}
        created = paths[f"/datasets/{name}/exports"]["post"]["responses"]["202"]
        assert "Location" in created["headers"]
        schema = created["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ExportCreated"}
    # The same guard as /exports: API_TOKEN covers both.
    for path in expected:
        for operation in paths[path].values():
            assert operation["security"] == [{"bearer": []}, {}]
            assert {"401", "503"} <= set(operation["responses"])


def test_filter_parameters_admit_exactly_their_operators(
    shop: tuple[Path, Datasets], document: dict[str, Any]
) -> None:
    for dataset in shop[1].values():
        found = parameters(document, dataset.name)
        assert set(found) - NOT_FILTERS - set(dataset.params) == set(dataset.filters)
        for name, allowed in dataset.filters.items():
            column = dataset.column(name)
            assert column is not None
            parameter = found[name]
            assert column.type in parameter["description"]
            # Repeatable: placed_at=gte.X&placed_at=lt.Y.
            assert (parameter["style"], parameter["explode"]) == ("form", True)
            assert parameter["schema"]["type"] == "array"
            pattern = parameter["schema"]["items"]["pattern"]
            for operator in OPERATORS:
                text = filter_text(operator, column)
                for negated in ("", "not."):
                    admitted = re.search(pattern, negated + text) is not None
                    assert admitted == (operator in allowed), (dataset.name, name, text)


def test_filter_values_are_typed(document: dict[str, Any]) -> None:
    lines = parameters(document, "lines")
    total = lines["total"]["schema"]["items"]["pattern"]
    assert re.search(total, "gte.12.50") and not re.search(total, "gte.twelve")
    status = lines["status"]["schema"]["items"]["pattern"]
    assert re.search(status, 'in.(sad,"happy, \\"very\\"")')
    assert not re.search(status, "eq.glad")
    placed_at = lines["placed_at"]["schema"]["items"]["pattern"]
    assert re.search(placed_at, "lt.2024-01-02T00:00:00+01:00")
    assert not re.search(placed_at, "lt.yesterday")


def test_select_and_saved_query_parameters(
    shop: tuple[Path, Datasets], document: dict[str, Any]
) -> None:
    for dataset in shop[1].values():
        select = parameters(document, dataset.name)[SELECT]
        assert (select["style"], select["explode"]) == ("form", False)  # a,b,c
        assert select["schema"]["uniqueItems"] is True
        assert select["schema"]["items"]["enum"] == list(dataset.column_names)
    since = parameters(document, "recent")["since"]
    assert since["required"] is True
    assert "timestamp with time zone" in since["description"]
    body = document["paths"]["/datasets/recent/exports"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(parameters(document, "recent"))


def test_declared_datasets_are_described_by_name(shop: tuple[Path, Datasets]) -> None:
    """Before the database is reached only the file's names are known."""
    specs = load_datasets_file(shop[0])
    document = openapi_document(specs)
    for spec in specs:
        found = parameters(document, spec.name)
        assert set(found) - NOT_FILTERS - set(spec.params) == set(spec.filters)
        for name, allowed in spec.filters.items():
            pattern = found[name]["schema"]["items"]["pattern"]
            assert pattern == rf"^(not\.)?({'|'.join(allowed)})\."
        items = found[SELECT]["schema"]["items"]
        if spec.columns is not None:
            assert items["enum"] == list(spec.columns)
        else:
            assert "enum" not in items
    assert "timestamptz" in parameters(document, "recent")["since"]["description"]


def test_default_document_describes_users() -> None:
    paths = openapi_document()["paths"]
    assert {p for p in paths if p.startswith("/datasets")} == {
        "/datasets",
        "/datasets/users",
        "/datasets/users/exports",
    }


def test_every_admitted_value_is_an_export_postgresql_runs(
    database: str, shop: tuple[Path, Datasets], document: dict[str, Any]
) -> None:
    """What the schemas admit is accepted by the validation and runs as PostgreSQL's COPY."""
    datasets = shop[1]
    filtered = [d for d in datasets.values() if d.filters and d.name != "users"]

    @given(data=st.data())
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(data: st.DataObject) -> None:
        dataset = data.draw(st.sampled_from(filtered))
        found = parameters(document, dataset.name)
        params: dict[str, object] = {}
        for name in dataset.params:
            params[name] = data.draw(
                st.from_regex(found[name]["schema"]["pattern"], fullmatch=True)
            )
        for name in data.draw(st.sets(st.sampled_from(list(dataset.filters)), min_size=1)):
            pattern = found[name]["schema"]["items"]["pattern"]
            params[name] = data.draw(
                st.lists(st.from_regex(pattern, fullmatch=True), min_size=1, max_size=2)
            )
        names = found[SELECT]["schema"]["items"]["enum"]
        select = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
        params[SELECT] = ",".join(select)
        request = parse_dataset_request(dataset, params)
        copy_oracle(database, request, datasets)

    check()


async def test_served_document_and_real_responses_conform(
    start_server: StartServer, shop: tuple[Path, Datasets]
) -> None:
    path, datasets = shop
    server = await start_server(exporter_datasets=path)
    with trio.fail_after(30):  # resolved at the first contact with the database
        while (listed := await server.client.get("/datasets")).status_code == 503:
            await trio.sleep(0.05)
    document = (await server.client.get("/openapi.json")).json()
    assert document == json.loads(json.dumps(openapi_document(list(datasets.values()))))
    schema_of(document, "DatasetList").validate(listed.json())
    assert [d["name"] for d in listed.json()["datasets"]] == list(datasets)
    for name in datasets:
        described = await server.client.get(f"/datasets/{name}")
        assert described.status_code == 200
        operation = document["paths"][f"/datasets/{name}"]["get"]
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        validator(document, schema).validate(described.json())
        schema_of(document, "Dataset").validate(described.json())

    params = {
        "select": "order_id,line_no,status",
        "status": 'in.(sad,"happy, \\"very\\"")',
        "placed_at": ["gte.2024-01-01T01:00:00Z", "lt.2024-01-01T02:00:00Z"],
    }
    created = await server.client.post("/datasets/lines/exports", params=params)
    assert created.status_code == 202, created.text
    schema_of(document, "ExportCreated").validate(created.json())
    export_id = created.json()["exportId"]
    schema_of(document, "ExportStatus").validate(await server.status(export_id))
    done = await server.wait_for(export_id, "completed")
    schema_of(document, "ExportStatus").validate(done)
    assert done["dataset"] == "lines" and len(done["filters"]) == 3
    wrong = await server.client.post("/datasets/lines/exports", params={"status": "gt.sad"})
    assert wrong.status_code == 400
    schema_of(document, "Problem").validate(wrong.json())


# -- fuzzing the datasets' operations from the served document -------------------------------


@pytest.fixture(scope="module")
def datasets_api(
    database: str, shop: tuple[Path, Datasets], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    exports = tmp_path_factory.mktemp("fuzz-datasets") / "exports"
    with service(
        database, export_dir=exports, MAX_CONCURRENT_EXPORTS="1", EXPORTER_DATASETS=str(shop[0])
    ) as app:
        yield schemathesis.openapi.from_url(f"{app.url}/openapi.json")


def errors_are_problem_json(ctx: Any, response: schemathesis.Response, case: Any) -> None:
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type == "application/problem+json", (
            f"{case.method} {case.formatted_path} → {response.status_code} as {content_type!r}"
        )


def _beyond_the_schema(case: schemathesis.Case[Any]) -> bool:
    """Whether a request breaks a rule no JSON Schema of its parts can say: the same name
    in the query string and the body, quoteChar equal to delimiter, a name selected twice
    in a body's string."""
    query = dict(case.query or {})
    body = case.body if isinstance(case.body, dict) else {}
    if set(query) & set(body):
        return True
    merged = {**query, **body}
    if merged.get("delimiter", ",") == merged.get("quoteChar", '"'):
        return True
    select = merged.get(SELECT, [])
    names = select.split(",") if isinstance(select, str) else select
    return len(names) != len(set(names))


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_dataset_operations_conform_to_the_document(
    datasets_api: Any, mode: GenerationMode
) -> None:
    """No 5xx, every response as documented; in positive mode every request the schemas
    admit is accepted (the filters' values are typed for that). Negative mode does not
    insist on a rejection: the schemas admit only the canonical forms of the values, and
    the service also accepts a few others (``eq.+5``)."""
    operations = [
        result.ok()
        for result in datasets_api.get_all_operations()
        if result.ok().path.startswith("/datasets")
        and (mode == GenerationMode.POSITIVE or result.ok().method.upper() == "POST")
    ]
    assert operations
    strategy = st.one_of(*(op.as_strategy(generation_mode=mode) for op in operations))

    @given(case=strategy)
    @settings(
        max_examples=30 * len(operations),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: schemathesis.Case[Any]) -> None:
        excluded: list[Any] = [negative_data_rejection]
        if mode == GenerationMode.NEGATIVE or _beyond_the_schema(case):
            excluded.append(positive_data_acceptance)
        case.call_and_validate(
            additional_checks=[errors_are_problem_json], excluded_checks=excluded
        )

    check()
