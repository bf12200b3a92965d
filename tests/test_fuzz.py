"""Property-based fuzzing of the whole API from its own ``/openapi.json`` (schemathesis).

Schemathesis reads the document the service serves and generates requests from it, valid
and invalid, against ``exporter serve`` running as its own process: no response may be a
5xx, every response must match the document (status, headers, content type, body schema),
and every error must be ``application/problem+json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support import service

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def api_url(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exports = tmp_path_factory.mktemp("fuzz") / "exports"
    # Few exports at once, so that the generated POSTs queue instead of loading the machine.
    with service(database, export_dir=exports, MAX_CONCURRENT_EXPORTS="1") as app:
        yield app.url


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


OPERATIONS = [
    ("POST", "/exports/csv"),
    ("GET", "/exports"),
    ("GET", "/"),
    ("GET", "/exports/{id}/status"),
    ("GET", "/exports/{id}/events"),
    ("GET", "/exports/{id}/download"),
    ("HEAD", "/exports/{id}/download"),
    ("DELETE", "/exports/{id}"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/datasets"),
    ("GET", "/datasets/users"),
    ("POST", "/datasets/users/exports"),
]


def errors_are_problem_json(ctx: Any, response: schemathesis.Response, case: Any) -> None:
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type == "application/problem+json", (
            f"{case.method} {case.formatted_path} → {response.status_code} as {content_type!r}"
        )


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    documented = {
        (result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()
    }
    assert documented == set(OPERATIONS)


CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # Without parameters or a body there is nothing to break on purpose.
    if mode == GenerationMode.POSITIVE or path.startswith("/exports")
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_api_conforms_to_its_openapi_document(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    # Hypothesis drives the cases (valid ones, then ones that break the document on
    # purpose); schemathesis checks each response against the document.
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(
            additional_checks=[errors_are_problem_json],
            # A few rules are beyond what JSON Schema can say of a query string (no
            # duplicate columns in "id,id", quoteChar unlike delimiter): requests that
            # break only those are schema-valid yet rightly refused with a 400.
            excluded_checks=[positive_data_acceptance],
        )

    check()
