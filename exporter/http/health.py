"""``GET|HEAD /health``, answered from memory ahead of any framework: the API's (in front
of Quart) and a worker's (in front of its ``/metrics``)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from exporter.core.metrics import Metrics

__all__ = ["ASGIApp", "health_fast_path"]

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def health_fast_path(
    asgi_app: ASGIApp, counts: Callable[[], dict[str, int]], metrics: Metrics
) -> ASGIApp:
    """``GET|HEAD /health`` answered before Quart sees the request.

    Health checks must answer at once however loaded the process is. Quart's request
    machinery costs a few milliseconds of GIL-holding work per request; under two
    exports each of those milliseconds waits on the export threads (bench/health.py).
    The answer comes from memory only: the database may be slow or away.
    """

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != "/health"
            or scope["method"] not in ("GET", "HEAD")
        ):
            return await asgi_app(scope, receive, send)
        started = time.perf_counter()
        body = json.dumps({"status": "ok", "exports": counts()}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
        metrics.health.observe(time.perf_counter() - started)
        return None

    return app
