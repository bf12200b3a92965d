"""The OpenAPI 3.1 description of the API, served at ``/openapi.json``.

Kept true by ``tests/test_openapi.py``, which compares its paths and methods with the
app's real routes and checks real responses against its schemas, and by
``tests/test_openapi_datasets.py`` for the datasets' paths.

Each declared dataset has paths of its own (``/datasets/NAME``, ``/datasets/NAME/exports``)
made from what is known of it: a resolved ``Dataset`` gives its columns' names and
PostgreSQL types, so each filter's values are described by the column's kind; a bare
``DatasetSpec`` (the database not reached yet) gives only the names the file declares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import exporter
from exporter.core.datasets import OPERATORS, USERS, Column, Dataset, DatasetSpec
from exporter.core.model import TIERS, ExportStatus
from exporter.core.request import DIALECT_PARAMETERS, PARAMETERS, SELECT
from exporter.http.documents import DEFAULT_LIST_LIMIT, EVENT_INTERVAL, MAX_LIST_LIMIT

__all__ = ["openapi_document"]

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _PROBLEM}},
    }


def _id_parameter() -> dict[str, Any]:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "The exportId returned when the export was created (a UUID v4).",
        "schema": {"type": "string", "format": "uuid"},
    }


# Every export parameter, from the one table that validation reads too.
_EXPORT_PARAMETERS: list[dict[str, Any]] = [
    {"name": p.name, "in": "query", "description": p.description, "schema": p.query_schema}
    for p in PARAMETERS
]

_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {p.name: p.json_schema for p in PARAMETERS},
}

_STATUS_ENUM = [str(status) for status in ExportStatus]
_TIME = {"type": ["string", "null"], "format": "date-time"}

_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "exportStatus": {"type": "string", "enum": _STATUS_ENUM},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["param", "message"],
                    "properties": {"param": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    },
    "ExportRequest": {
        "type": "object",
        "required": ["country_code", "subscription_tier", "columns", "delimiter", "quoteChar"],
        "properties": {
            "country_code": {"type": ["string", "null"]},
            "subscription_tier": {"type": ["string", "null"], "enum": [*TIERS, None]},
            # Any dataset's columns, those of a dataset since removed from the file too.
            "columns": {"type": "array", "items": {"type": "string"}},
            "delimiter": {"type": "string"},
            "quoteChar": {"type": "string"},
            "neutralizeFormulas": {"type": "boolean"},
            # Only in a request made in a dataset's form (POST /datasets/NAME/exports).
            "dataset": {"type": "string"},
            "filters": {"type": "array", "items": {"$ref": "#/components/schemas/Filter"}},
            "params": {
                "type": "object",
                "description": "A saved query's parameters, each as the text of its value.",
                "additionalProperties": {"type": "string"},
            },
        },
    },
    "Filter": {
        "type": "object",
        "additionalProperties": False,
        "required": ["column", "operator", "value", "not"],
        "properties": {
            "column": {"type": "string"},
            "operator": {"type": "string", "enum": list(OPERATORS)},
            "value": {
                "description": "The value in the column type's canonical text; a list for "
                "in; null, not_null, true or false for is.",
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            },
            "not": {"type": "boolean"},
        },
    },
    "ExportCreated": {
        "type": "object",
        "required": ["exportId", "status", "statusUrl", "downloadUrl"],
        "properties": {
            "exportId": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": [ExportStatus.PENDING.value]},
            "statusUrl": {"type": "string"},
            "downloadUrl": {"type": "string"},
        },
    },
    "ExportStatus": {
        "type": "object",
        "required": [
            "exportId",
            "status",
            "progress",
            "request",
            "dataset",
            "filters",
            "error",
            "createdAt",
            "startedAt",
            "completedAt",
            "expiresAt",
        ],
        "properties": {
            "exportId": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": _STATUS_ENUM},
            "progress": {
                "type": "object",
                "required": [
                    "processedRows",
                    "totalRows",
                    "percentage",
                    "bytesWritten",
                    "rowsPerSecond",
                    "etaSeconds",
                ],
                "properties": {
                    "processedRows": {"type": "integer", "minimum": 0},
                    "totalRows": {"type": ["integer", "null"], "minimum": 0},
                    "percentage": {"type": "number", "minimum": 0, "maximum": 100},
                    "bytesWritten": {"type": "integer", "minimum": 0},
                    "rowsPerSecond": {"type": ["number", "null"], "minimum": 0},
                    "etaSeconds": {"type": ["number", "null"], "minimum": 0},
                },
            },
            "request": {"$ref": "#/components/schemas/ExportRequest"},
            "dataset": {"type": "string", "description": "The dataset exported."},
            "filters": {
                "type": "array",
                "description": "Every filter of the export, as col=[not.]op.value.",
                "items": {"type": "string"},
            },
            "error": {"type": ["string", "null"]},
            "createdAt": {"type": "string", "format": "date-time"},
            "startedAt": _TIME,
            "completedAt": _TIME,
            "expiresAt": _TIME,
            "statusUrl": {"type": "string"},
            "fileSize": {"type": "integer", "minimum": 0},
            "downloadUrl": {"type": "string"},
            "queuePosition": {"type": ["integer", "null"], "minimum": 1},
            "attempt": {
                "type": "integer",
                "minimum": 0,
                "description": "Starts so far: the first, and one per takeover by another "
                "process after the one running it stopped without handing it back.",
            },
            "resumedFromRows": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "The rows the current start continued after, from its last "
                "checkpoint; null when it started from the first row.",
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "exports": {
                "type": "object",
                "properties": {
                    "running": {"type": "integer"},
                    "queued": {"type": "integer"},
                },
            },
        },
    },
    "Ready": {
        "type": "object",
        "required": ["status", "database", "exportStore"],
        "properties": {
            "status": {"type": "string", "enum": ["ready"]},
            "database": {"type": "string", "enum": ["up"]},
            "exportStore": {"type": "string", "enum": ["up"]},
        },
    },
    # Dataset.describe(), key for key.
    "Dataset": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "name",
            "description",
            "source",
            "key",
            "columns",
            "defaultColumns",
            "filters",
            "params",
            "maxRows",
            "resumable",
            "exportsUrl",
        ],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "source": {"type": "string", "enum": ["table", "view", "query"]},
            "key": {
                "type": "array",
                "minItems": 1,
                "description": "The columns that order the rows and mark checkpoints.",
                "items": {"type": "string"},
            },
            "columns": {
                "type": "array",
                "description": "The exposed columns, with their PostgreSQL types.",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "type"],
                    "properties": {"name": {"type": "string"}, "type": {"type": "string"}},
                },
            },
            "defaultColumns": {"type": "array", "items": {"type": "string"}},
            "filters": {
                "type": "object",
                "description": "The filterable columns and their operators.",
                "additionalProperties": {
                    "type": "array",
                    "items": {"type": "string", "enum": list(OPERATORS)},
                },
            },
            "params": {
                "type": "object",
                "description": "A saved query's parameters and their PostgreSQL types.",
                "additionalProperties": {"type": "string"},
            },
            "maxRows": {"type": ["integer", "null"], "minimum": 1},
            "resumable": {
                "type": "boolean",
                "description": (
                    "An export of it checkpoints, and resumes after a takeover (with"
                    " ROW_SOURCE=copy, only a dataset whose key order an index gives)."
                ),
            },
            "exportsUrl": {"type": "string"},
        },
    },
    "DatasetList": {
        "type": "object",
        "additionalProperties": False,
        "required": ["datasets"],
        "properties": {
            "datasets": {"type": "array", "items": {"$ref": "#/components/schemas/Dataset"}}
        },
    },
}


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "description": description, "schema": {"type": "string"}}


_DOWNLOAD_PARAMETERS: list[dict[str, Any]] = [
    _id_parameter(),
    _header("Accept-Encoding", "gzip (q>0) gets the gzip copy made during the export."),
    _header("Range", "One range: bytes=a-b, bytes=a- or bytes=-n (of the chosen encoding)."),
    _header("If-Range", "An ETag or HTTP date; Range applies only if it still matches."),
    _header("If-None-Match", "ETags; a match gives 304 Not Modified."),
]


_DOWNLOAD_HEADERS: dict[str, Any] = {
    name: {"schema": {"type": "string"}}
    for name in (
        "Content-Length",
        "Content-Disposition",
        "Content-Encoding",
        "Accept-Ranges",
        "ETag",
        "Last-Modified",
        "Vary",
    )
}


def openapi_document(datasets: Sequence[Dataset | DatasetSpec] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, as ``GET /openapi.json`` serves it, with the
    paths of ``datasets`` (default: the built-in ``users``, as declared)."""
    document = _document([USERS] if datasets is None else datasets)
    for path, operations in document["paths"].items():
        # API_TOKEN guards both (exporter.http.app).
        if path.startswith(("/exports", "/datasets")):
            for operation in operations.values():
                # Optional: {} admits a request without credentials (no API_TOKEN set).
                operation["security"] = [{"bearer": []}, {}]
                operation["responses"]["401"] = _problem_response(
                    "API_TOKEN is set and the bearer token is missing or wrong."
                )
                # Every one of them may need the job database.
                operation["responses"].setdefault(
                    "503",
                    _problem_response(
                        "The job database (or, for downloads, the export store) is unreachable."
                    ),
                )
    return document


def _document(datasets: Sequence[Dataset | DatasetSpec]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "exporter",
            "version": exporter.__version__,
            "description": "Exports PostgreSQL datasets (tables, views, saved queries) to "
            "CSV in the background and serves the files. Errors are "
            "application/problem+json (RFC 9457).",
        },
        "paths": {
            **_export_paths(),
            **_one_export_paths(),
            **_dataset_paths(datasets),
            **_service_paths(),
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Needed on /exports and /datasets routes when the service "
                    "has an API_TOKEN; without one the service must sit behind an "
                    "authenticating proxy.",
                }
            },
        },
    }


def _export_paths() -> dict[str, Any]:
    """Starting exports, and listing them."""
    return {
        "/exports/csv": {
            "post": {
                "operationId": "createExport",
                "summary": "Start an export (parameters in the query string or a JSON body)",
                "parameters": _EXPORT_PARAMETERS,
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _REQUEST_SCHEMA}},
                },
                "responses": {
                    "202": {
                        "description": "Accepted; the export runs in the background.",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ExportCreated"}
                            }
                        },
                    },
                    "400": _problem_response("A parameter is invalid; errors names it."),
                    "413": _problem_response("The request body is too large."),
                    "429": _problem_response("The queue is full; see Retry-After."),
                    "503": _problem_response("The job database is unreachable."),
                },
            }
        },
        "/exports": {
            "get": {
                "operationId": "listExports",
                "summary": "The most recent exports, newest first, as status documents",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "description": f"How many (default {DEFAULT_LIST_LIMIT}).",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIST_LIMIT,
                            "default": DEFAULT_LIST_LIMIT,
                        },
                    }
                ],
                "responses": {
                    "200": {
                        "description": "Recent exports.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["exports"],
                                    "properties": {
                                        "exports": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/ExportStatus"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "400": _problem_response(
                        f"limit is not a whole number from 1 to {MAX_LIST_LIMIT}."
                    ),
                },
            }
        },
    }


def _one_export_paths() -> dict[str, Any]:
    """One export: its status, events, download and cancel."""
    return {
        "/exports/{id}/status": {
            "get": {
                "operationId": "getExportStatus",
                "summary": "Status and progress of an export",
                "parameters": [_id_parameter()],
                "responses": {
                    "200": {
                        "description": "The export's status.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ExportStatus"}
                            }
                        },
                    },
                    "404": _problem_response("No such export."),
                    "503": _problem_response("The job database is unreachable."),
                },
            }
        },
        "/exports/{id}/events": {
            "get": {
                "operationId": "exportEvents",
                "summary": "Live progress as Server-Sent Events",
                "description": "A text/event-stream: an `event: progress` every "
                f"{EVENT_INTERVAL} s while the export is pending or processing, then one "
                "`event: status` when it has ended, and the stream closes. The `data` "
                "of each event is the status document (ExportStatus) as one line of JSON.",
                "parameters": [_id_parameter()],
                "responses": {
                    "200": {
                        "description": "The event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "404": _problem_response("No such export."),
                },
            }
        },
        "/exports/{id}/download": {
            "get": {
                "operationId": "downloadExport",
                "summary": "The CSV file of a completed export",
                "parameters": _DOWNLOAD_PARAMETERS,
                "responses": {
                    "200": {
                        "description": "The whole file.",
                        "headers": _DOWNLOAD_HEADERS,
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    },
                    "206": {
                        "description": "The requested byte range (Content-Range).",
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "Not modified (If-None-Match matched)."},
                    "307": {
                        "description": "The export store serves the file (object storage, "
                        "DOWNLOAD_MODE=redirect): Location is a link valid for a few "
                        "minutes; send the same Range and conditional headers there.",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    "404": _problem_response("No such export."),
                    "409": _problem_response("The export has not completed yet."),
                    "410": _problem_response("The export failed, was cancelled or expired."),
                    "416": _problem_response("The range cannot be satisfied."),
                },
            },
            "head": {
                "operationId": "headExport",
                "summary": "The download's headers, without the body",
                "parameters": _DOWNLOAD_PARAMETERS,
                "responses": {
                    "200": {"description": "As GET, without a body."},
                    "404": {"description": "No such export."},
                    "409": {"description": "The export has not completed yet."},
                    "410": {"description": "The export is gone."},
                },
            },
        },
        "/exports/{id}": {
            "delete": {
                "operationId": "cancelExport",
                "summary": "Cancel a pending or running export, or delete a completed file",
                "parameters": [_id_parameter()],
                "responses": {
                    "204": {"description": "Cancelled (repeating it is harmless)."},
                    "404": _problem_response("No such export."),
                },
            }
        },
    }


def _service_paths() -> dict[str, Any]:
    """The status page and the service's own endpoints."""
    return {
        "/": {
            "get": {
                "operationId": "statusPage",
                "summary": "The status page: recent exports with live progress (HTML)",
                "responses": {
                    "200": {
                        "description": "An HTML page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness; never touches the database",
                "responses": {
                    "200": {
                        "description": "The service is up.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
                        },
                    }
                },
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: the job database and the export store answer, "
                "and recovery has run",
                "responses": {
                    "200": {
                        "description": "Ready for work.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}
                        },
                    },
                    "503": _problem_response(
                        "Not ready: the database is down (database: down), the export "
                        "store cannot be reached (exportStore: down), or the jobs of "
                        "a previous run are still being recovered."
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format); never touches the database",
                "description": "exporter_exports_total{status}, "
                "exporter_exported_rows_total, exporter_exported_bytes_total, "
                "exporter_export_duration_seconds, exporter_exports_running, "
                "exporter_exports_queued, exporter_download_bytes_total{method}, "
                "exporter_downloads_total{method} (method: sendfile or fallback), "
                "exporter_health_seconds.",
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1 document."}},
            }
        },
    }


# -- datasets ------------------------------------------------------------------------------
#
# A filter's schema admits a value only in a form its column's parser accepts (the
# canonical forms, within the type's range), so that whatever a client or a fuzzer draws
# from it is a valid request; the parser accepts a little more (``+5``, ``{uuid}``).

_ISO_DATE = r"[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
_ISO_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
_HEX = "[0-9a-fA-F]"
# A value by the kind of its column; None: no value of it can be compared.
_VALUES: dict[str, str] = {
    "numeric": r"-?[0-9]{1,20}(\.[0-9]{1,20})?|NaN|-?Infinity",
    # Small enough exponents that a real (float4) holds every one.
    "float": r"-?[0-9]{1,15}(\.[0-9]{1,6})?([eE]-?[0-9])?|NaN|-?Infinity",
    "boolean": "true|false",
    "uuid": f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}",
    "date": f"{_ISO_DATE}|-?infinity",
    "timestamp": f"{_ISO_DATE}T{_ISO_TIME}|-?infinity",
    "timestamptz": rf"{_ISO_DATE}T{_ISO_TIME}(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])?|-?infinity",
    "time": _ISO_TIME,
}
# Digits that always fit, by integer type (a bigint's 19th digit may not).
_INTEGER_DIGITS = {"smallint": 4, "integer": 9, "bigint": 18}
# What ECMA-262 (JSON Schema's patterns) and Python's re both read escaped as a literal.
_SYNTAX = frozenset("^$\\.*+?()[]{}|/")
# Python strips these from an unquoted in-list item; ECMA's \s misses some of them.
_SPACE = r"\s\x1c-\x1f\x85"
_QUOTED_CHAR = r'([^"\\\x00]|\\[^\x00])'


def _literal(text: str) -> str:
    return "".join("\\" + c if c in _SYNTAX else c for c in text)


def _items(label: str) -> list[str]:
    """The ways an ``in`` list's item may say ``label`` (``exporter.core.filters``): in
    quotes, and bare unless that would change it."""
    quoted = '"' + label.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if label and label == label.strip() and not any(c in label for c in ',()"\\ '):
        return [label, quoted]
    return [quoted]


def _value_pattern(column: Column) -> str | None:
    """What one value of ``column`` may be, as a regular expression; None if none."""
    if column.kind == "integer":
        return f"-?[0-9]{{1,{_INTEGER_DIGITS.get(column.cast, 18)}}}"
    if column.kind == "text":
        return "[^\\x00]*" if column.max_length is None else f"[^\\x00]{{0,{column.max_length}}}"
    if column.kind == "enum":
        return "|".join(_literal(label) for label in column.labels) or None
    return _VALUES.get(column.kind)


def _item_pattern(column: Column) -> str | None:
    """One item of an ``in`` list of ``column``'s values (never empty: ``in.()`` is not)."""
    if column.kind == "enum":
        return "|".join(_literal(item) for label in column.labels for item in _items(label)) or None
    if column.kind != "text":
        value = _value_pattern(column)  # holds no comma, quote or backslash
        return None if value is None else f'{value}|"({value})"'
    if column.max_length is not None:
        n = column.max_length
        return f'"{_QUOTED_CHAR}{{1,{n}}}"|[^,"\\x00{_SPACE}]{{1,{n}}}'
    unquoted = f'[^,"\\x00]*[^,"\\x00{_SPACE}][^,"\\x00]*'
    return f'"{_QUOTED_CHAR}+"|{unquoted}'


def _operator_pattern(operator: str, column: Column) -> str | None:
    """``op.value`` for ``column``, as a regular expression; None if no value fits."""
    if operator == "is":
        return (
            r"is\.(null|not_null|true|false)"
            if column.kind == "boolean"
            else r"is\.(null|not_null)"
        )
    if operator in ("like", "ilike"):
        return operator + r"\.[^\x00]*"
    if operator == "in":
        item = _item_pattern(column)
        return None if item is None else rf"in\.\(({item})(,({item}))*\)"
    value = _value_pattern(column)
    return None if value is None else rf"{operator}\.({value})"


def _filter_pattern(operators: Sequence[str], column: Column | None) -> str | None:
    """A filter's text, ``[not.]op.value``: the value by the column's kind when it is
    known, else anything after one of the operators."""
    if column is None:
        return rf"^(not\.)?({'|'.join(operators)})\."
    alternatives = [p for op in operators if (p := _operator_pattern(op, column)) is not None]
    return rf"^(not\.)?({'|'.join(alternatives)})$" if alternatives else None


def _columns_of(dataset: Dataset | DatasetSpec) -> tuple[str, ...] | None:
    """The exposed columns' names; None when the file leaves them to the database."""
    return dataset.column_names if isinstance(dataset, Dataset) else dataset.columns


def _column(dataset: Dataset | DatasetSpec, name: str) -> Column | None:
    return dataset.column(name) if isinstance(dataset, Dataset) else None


def _select_parameter(dataset: Dataset | DatasetSpec) -> dict[str, Any]:
    names = _columns_of(dataset)
    # The parser splits at commas and strips each name: no other name can be selected.
    selectable = [n for n in names or () if "," not in n and n == n.strip()]
    item: dict[str, Any] = (
        {"type": "string", "enum": selectable}
        if names is not None
        else {"type": "string", "pattern": r"^[^,\s]([^,]*[^,\s])?$"}
    )
    defaults = dataset.default_columns if isinstance(dataset, Dataset) else None
    default = "" if defaults is None else f": {','.join(defaults)}"
    return {
        "name": SELECT,
        "in": "query",
        "description": f"The columns, comma-separated in the order wanted, each once; "
        f"default the dataset's default columns{default}.",
        "style": "form",
        "explode": False,
        "schema": {"type": "array", "minItems": 1, "uniqueItems": True, "items": item},
    }


def _filter_description(name: str, operators: Sequence[str], column: Column | None) -> str:
    typed = "of a type known once the service has reached the database"
    if column is not None:
        typed = f"a PostgreSQL {column.type}"
    words = [
        f"Only rows whose {name} ({typed}) passes the filter [not.]op.value, "
        f"op one of {', '.join(operators)}."
    ]
    if "in" in operators:
        words.append(
            "in.(a,b) lists values; quote one that holds a comma, a parenthesis, a quote "
            'or a space: in.("a,b").'
        )
    if "is" in operators:
        boolean = column is not None and column.kind == "boolean"
        words.append(
            "is.null, is.not_null, is.true or is.false." if boolean else "is.null or is.not_null."
        )
    if "like" in operators or "ilike" in operators:
        words.append("In a like pattern * stands for %.")
    words.append("Repeat the parameter for more filters: every one must hold.")
    return " ".join(words)


def _filter_parameters(dataset: Dataset | DatasetSpec, taken: set[str]) -> list[dict[str, Any]]:
    """One query parameter a filterable column, which may be repeated (every one holds)."""
    found = []
    for name, operators in dataset.filters.items():
        column = _column(dataset, name)
        pattern = _filter_pattern(operators, column)
        if name in taken or pattern is None:
            continue  # the parser reads that name as another parameter, or no value fits
        found.append(
            {
                "name": name,
                "in": "query",
                "description": _filter_description(name, operators, column),
                "style": "form",
                "explode": True,
                "schema": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string", "pattern": pattern},
                },
            }
        )
    return found


def _param_parameters(dataset: Dataset | DatasetSpec, taken: set[str]) -> list[dict[str, Any]]:
    """A saved query's parameters: each required, once."""
    found = []
    for name, declared in dataset.params.items():
        if name in taken:
            continue
        schema: dict[str, Any] = {"type": "string"}
        pattern = _value_pattern(declared) if isinstance(declared, Column) else None
        if pattern is not None:
            schema["pattern"] = f"^({pattern})$"
        type_name = declared.type if isinstance(declared, Column) else declared
        found.append(
            {
                "name": name,
                "in": "query",
                "required": True,
                "description": f"The saved query's parameter {name}, a {type_name} "
                "(here or in the JSON body).",
                "schema": schema,
            }
        )
    return found


def _dataset_parameters(dataset: Dataset | DatasetSpec) -> list[dict[str, Any]]:
    """Every parameter of an export of ``dataset``, each name once: the parser reads
    ``select`` first, then the dialect's, a saved query's, and the rest as filters."""
    dialect = [
        {"name": p.name, "in": "query", "description": p.description, "schema": p.query_schema}
        for p in DIALECT_PARAMETERS
    ]
    taken = {SELECT, *(p.name for p in DIALECT_PARAMETERS)}
    params = _param_parameters(dataset, taken)
    taken |= {p["name"] for p in params}
    return [_select_parameter(dataset), *params, *_filter_parameters(dataset, taken), *dialect]


def _dataset_body(parameters: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON body: the same names, a repeated filter as a list, ``select`` a list or
    a comma-separated string."""
    dialect = {p.name: p.json_schema for p in DIALECT_PARAMETERS}
    properties: dict[str, Any] = {}
    for parameter in parameters:
        name, schema = parameter["name"], parameter["schema"]
        if name in dialect:
            properties[name] = dialect[name]
        elif name == SELECT:
            names = schema["items"].get("enum")
            text = {"type": "string", "minLength": 1}
            if names:
                one = "(" + "|".join(_literal(n) for n in names) + ")"
                text = {"type": "string", "pattern": f"^{one}(,{one})*$"}
            properties[name] = {"oneOf": [text, schema]}
        elif schema.get("type") == "array":
            properties[name] = {"oneOf": [schema["items"], schema]}
        else:
            properties[name] = schema
    return {"type": "object", "additionalProperties": False, "properties": properties}


_NOT_RESOLVED = (
    "The datasets have not been resolved against the database yet (it has not been "
    "reached), or the job database is unreachable."
)


def _describe_operation(dataset: Dataset | DatasetSpec) -> dict[str, Any]:
    name = dataset.name
    return {
        "operationId": f"getDataset_{name}",
        "summary": f"The dataset {name}: its columns and their types, filters and key",
        "description": dataset.description,
        "responses": {
            "200": {
                "description": f"What an export of {name} may ask for.",
                "content": {
                    "application/json": {
                        "schema": {
                            "allOf": [
                                {"$ref": "#/components/schemas/Dataset"},
                                {"properties": {"name": {"const": name}}},
                            ]
                        }
                    }
                },
            },
            "404": _problem_response("No such dataset."),
            "503": _problem_response(_NOT_RESOLVED),
        },
    }


def _export_operation(dataset: Dataset | DatasetSpec) -> dict[str, Any]:
    name = dataset.name
    parameters = _dataset_parameters(dataset)
    return {
        "operationId": f"createDatasetExport_{name}",
        "summary": f"Start an export of {name} (parameters in the query string or a JSON body)",
        "description": dataset.description,
        "parameters": parameters,
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": _dataset_body(parameters)}},
        },
        "responses": {
            "202": {
                "description": "Accepted; the export runs in the background.",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ExportCreated"}}
                },
            },
            "400": _problem_response("A parameter is invalid; errors names it."),
            "404": _problem_response("No such dataset."),
            "413": _problem_response("The request body is too large."),
            "429": _problem_response("The queue is full; see Retry-After."),
            "503": _problem_response(_NOT_RESOLVED),
        },
    }


def _dataset_paths(datasets: Sequence[Dataset | DatasetSpec]) -> dict[str, Any]:
    """``/datasets``, and a path of its own for each dataset's description and exports."""
    paths: dict[str, Any] = {
        "/datasets": {
            "get": {
                "operationId": "listDatasets",
                "summary": "Every dataset: its columns and their types, filters and key",
                "responses": {
                    "200": {
                        "description": "The datasets.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/DatasetList"}
                            }
                        },
                    },
                    "503": _problem_response(_NOT_RESOLVED),
                },
            }
        }
    }
    for dataset in datasets:
        paths[f"/datasets/{dataset.name}"] = {"get": _describe_operation(dataset)}
        paths[f"/datasets/{dataset.name}/exports"] = {"post": _export_operation(dataset)}
    return paths
