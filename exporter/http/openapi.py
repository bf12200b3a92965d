"""The OpenAPI 3.1 description of the API, served at ``/openapi.json``.

Kept true by ``tests/test_openapi.py``, which compares its paths and methods with the
app's real routes and checks real responses against its schemas.
"""

from __future__ import annotations

from typing import Any

import exporter
from exporter.core.model import TIERS, USER_COLUMNS, ExportStatus
from exporter.core.request import PARAMETERS
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
            "columns": {"type": "array", "items": {"type": "string", "enum": list(USER_COLUMNS)}},
            "delimiter": {"type": "string"},
            "quoteChar": {"type": "string"},
            "neutralizeFormulas": {"type": "boolean"},
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


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, as ``GET /openapi.json`` serves it."""
    document = _document()
    for path, operations in document["paths"].items():
        if path.startswith("/exports"):
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


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "exporter",
            "version": exporter.__version__,
            "description": "Exports PostgreSQL users to CSV in the background and serves "
            "the files. Errors are application/problem+json (RFC 9457).",
        },
        "paths": {**_export_paths(), **_one_export_paths(), **_service_paths()},
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Needed on /exports routes when the service has an "
                    "API_TOKEN; without one the service must sit behind an authenticating proxy.",
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
