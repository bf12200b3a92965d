"""Downloads of finished exports (``GET|HEAD /exports/{id}/download``), top to bottom.

1. ``choose_encoding``: gzip when the client's ``Accept-Encoding`` admits it and the
   export has its gzip copy (made while it ran; nothing is compressed per request).
2. ``open_download``: open the file in the export store first (so a later delete cannot
   pull it away mid-way), and let ``ranges.plan_response`` decide status, range and
   validators, the 416's headers included. From an object store a GET is, by default,
   a ``307`` to a short-lived link into the store, which then serves ranges, conditionals
   and resume itself (``DOWNLOAD_MODE=redirect``); HEAD answers from the object's metadata.
3. ``FileResponse.send_asgi``: headers, then the bytes: by the ASGI zero-copy extension
   (``os.sendfile`` from the page cache, see ``zerocopy``) when the server offers it, else
   in large chunks read in a worker thread (from the file, or streamed from the object
   store with ``DOWNLOAD_MODE=proxy``). Either way one chunk at most is in memory,
   however slow the client, and nothing is left open once it goes away.
4. ``HTTPConnection``: Quart-Trio's connection, taught to let a ``FileResponse`` send
   itself at the ASGI level (Quart's own machinery only knows body messages).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from typing import Any

import trio
from hypercorn.typing import ASGISendCallable
from quart import Response
from quart.utils import encode_headers
from quart_trio.asgi import TrioASGIHTTPConnection

from exporter.core.files import download_headers
from exporter.core.metrics import Metrics
from exporter.http.problems import problem
from exporter.http.ranges import FileVersion, Plan, plan_response
from exporter.http.zerocopy import EXTENSION
from exporter.storage.base import ExportStorage, StoredFile

__all__ = ["FileResponse", "HTTPConnection", "choose_encoding", "open_download"]

# Bytes per read on the fallback path: few round trips, bounded memory per client.
CHUNK = 256 * 1024


def _codings(accept_encoding: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0  # an unreadable weight: do not guess in favour of the coding
        weights[coding] = q
    return weights


def choose_encoding(accept_encoding: str | None) -> str | None:
    """``"gzip"`` if the client prefers it at least as much as identity, else None.

    RFC 9110 §12.5.3: codings not listed take the weight of ``*`` if present, identity is
    acceptable unless excluded, and ``q=0`` means "not acceptable".
    """
    if not accept_encoding:
        return None
    weights = _codings(accept_encoding)
    star = weights.get("*")
    gzip_q = weights.get("gzip", weights.get("x-gzip", star if star is not None else 0.0))
    identity_q = weights.get("identity", star if star is not None else 1.0)
    if gzip_q > 0 and gzip_q >= identity_q:
        return "gzip"
    return None


class FileResponse(Response):
    """A stored file, or a range of it; sent at the ASGI level."""

    def __init__(
        self,
        stored: StoredFile,
        plan: Plan,
        headers: Mapping[str, str],
        method: str,
        zero_copy: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(b"", status=plan.status)
        self.metrics = metrics
        self.headers.update(headers)
        self.headers.update(dict(plan.headers))
        if plan.status == 304:
            self.headers.pop("Content-Length", None)
        self.stored = stored
        self.zero_copy = zero_copy
        self.start = plan.start
        self.length = 0 if method == "HEAD" or plan.status == 304 else plan.length
        # However long a slow client takes, it is served to the end (Quart's default
        # RESPONSE_TIMEOUT would cut it after a minute).
        self.timeout = None

    async def send_asgi(self, send: ASGISendCallable, scope: Mapping[str, Any]) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": encode_headers(self.headers),
                }
            )
            file = self.stored.file
            if (
                self.length
                and file is not None
                and self.zero_copy
                and EXTENSION in scope.get("extensions", {})
            ):
                self._began("sendfile")
                await send(
                    {  # type: ignore[arg-type]
                        "type": EXTENSION,
                        "file": file,
                        "offset": self.start,
                        "count": self.length,
                        "more_body": False,
                        "exporter.progress": functools.partial(self._sent, "sendfile"),
                    }
                )
                return
            if self.length:
                self._began("fallback")
                reader = self.stored.reader(self.start, self.length)
                try:
                    while chunk := await trio.to_thread.run_sync(reader.read, CHUNK):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        self._sent("fallback", len(chunk))
                finally:
                    await trio.to_thread.run_sync(reader.close)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.stored.close()

    # For /metrics: a body begins to be sent ``how`` (sendfile or fallback); bytes went out.
    def _began(self, how: str) -> None:
        if self.metrics is not None:
            self.metrics.downloads.labels(how).inc()

    def _sent(self, how: str, count: int) -> None:
        if self.metrics is not None:
            self.metrics.served.labels(how).inc(count)


async def open_download(
    storage: ExportStorage,
    export_id: uuid.UUID,
    request_headers: Mapping[str, str],
    method: str,
    *,
    redirect: bool = False,
    zero_copy: bool = True,
    metrics: Metrics | None = None,
) -> Response | None:
    """The response for a completed export's file (200, 206, 304 or 416, or with
    ``redirect`` a GET's 307 to the store's own link), or None when its file is gone."""
    encoding = choose_encoding(request_headers.get("accept-encoding"))
    stored: StoredFile | None = None
    if encoding == "gzip":
        stored = await trio.to_thread.run_sync(
            functools.partial(storage.open_finished, export_id, gzip=True)
        )
        if stored is None:
            encoding = None  # made without its gzip copy (GZIP_EXPORTS=0): the CSV will do
    if stored is None:
        stored = await trio.to_thread.run_sync(storage.open_finished, export_id)
        if stored is None:
            return None
    try:
        if redirect and method == "GET":
            gzip = encoding == "gzip"
            link = await trio.to_thread.run_sync(
                functools.partial(storage.link, export_id, gzip=gzip)
            )
            if link is not None:
                stored.close()
                return _redirect(link)
        plan = plan_response(FileVersion(stored.size, stored.mtime, stored.etag), request_headers)
        if plan.status == 416:
            stored.close()
            response = problem(
                416, "Range Not Satisfiable", "the requested range lies outside the file"
            )
            response.headers.update(dict(plan.headers))
            return response
        headers = download_headers(export_id, gzip=encoding == "gzip")
        headers["Vary"] = "Accept-Encoding"
        return FileResponse(stored, plan, headers, method, zero_copy, metrics)
    except BaseException:
        stored.close()
        raise


def _redirect(link: str) -> Response:
    """307: the client asks the store itself, with the same method and headers (Range,
    conditionals); the store's answer carries the file's own headers."""
    response = Response(b"", status=307)
    response.headers["Location"] = link
    response.headers["Vary"] = "Accept-Encoding"
    # The link expires within minutes: nobody may keep this answer.
    response.headers["Cache-Control"] = "private, no-store"
    return response


class HTTPConnection(TrioASGIHTTPConnection):
    """Quart-Trio's connection, except that a ``FileResponse`` sends itself.

    Quart's response machinery only emits ``http.response.body`` messages; answering a
    download here, after Quart's routing, validation and job lookup, is what lets it use
    the zero-copy extension.
    """

    async def _send_response(self, send: ASGISendCallable, response: Any) -> None:
        if isinstance(response, FileResponse):
            await response.send_asgi(send, self.scope)
        else:
            await super()._send_response(send, response)
