"""Errors as ``application/problem+json`` documents (RFC 9457): a title, a sentence a user
can act on, and for a rejected request every parameter that was wrong. Never a stack
trace, never SQL."""

from __future__ import annotations

import json
from typing import Any

from quart import Response

from exporter.core.errors import FieldError

__all__ = ["problem", "retry_later", "validation_problem"]

PROBLEM_TYPE = "about:blank"
# What a 429 or 503 asks a client to wait before it tries again, in seconds.
RETRY_AFTER_SECONDS = 10


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    """An ``application/problem+json`` response: ``status``, ``title``, ``detail`` and
    ``extra`` members."""
    body = {"type": PROBLEM_TYPE, "title": title, "status": status, "detail": detail, **extra}
    return Response(json.dumps(body), status=status, content_type="application/problem+json")


def retry_later(status: int, title: str, detail: str, **extra: Any) -> Response:
    """A problem the client may retry (429, 503), with ``Retry-After``."""
    response = problem(status, title, detail, **extra)
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def validation_problem(errors: list[FieldError]) -> Response:
    """The 400 for a rejected request: every wrong parameter in ``errors``."""
    return problem(
        400,
        "Invalid export request",
        "; ".join(f"{e.param}: {e.message}" for e in errors),
        errors=[{"param": e.param, "message": e.message} for e in errors],
    )
