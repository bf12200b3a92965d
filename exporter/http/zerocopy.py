"""The ASGI "Zero Copy Send" extension for Hypercorn's trio worker, HTTP/1.1 over plain TCP.

Written for Hypercorn 0.18 (pyproject pins ``>=0.18,<0.19``): Hypercorn does not implement
``http.response.zerocopysend``, so this module adds it with four small wrappers, and only
for the one transport where it is sound, HTTP/1.x without TLS on the trio worker:

1. ``TaskGroup.spawn_app`` (trio worker) advertises the extension in the scope of such
   requests;
2. ``HTTPStream.app_send`` turns the app's ``http.response.zerocopysend`` message into a
   ``FileBody`` protocol event;
3. ``H11Protocol.stream_send`` passes that through h11 with ``send_with_data_passthrough``,
   which keeps h11's framing and Content-Length accounting exact while the bytes
   themselves never pass through Python;
4. ``TCPServer.protocol_send`` sends the file range with ``os.sendfile`` straight from the
   page cache, waiting for the socket to become writable with trio.

Everything else (HTTP/2, TLS, the asyncio worker, another server) never sees the
extension in its scope, so apps fall back to ordinary body messages there.

A transfer that stops half-way (the client went away, or the app was cancelled) leaves
the HTTP/1.1 framing broken, so the connection is closed; a client that makes no progress
for ``send_timeout`` seconds (``SEND_TIMEOUT``) is dropped, while a slow one is served
however long it takes.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import importlib.metadata
import os
from collections.abc import Awaitable, Callable
from typing import Any, cast

import h11
import trio
from hypercorn.events import Closed, RawData
from hypercorn.events import Event as ServerEvent
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer

from exporter.core.config import SEND_TIMEOUT

EXTENSION = "http.response.zerocopysend"
SUPPORTED_HYPERCORN = ("0.18.",)
# Bytes per sendfile call in a worker thread: large enough to be cheap, small enough to
# stay responsive.
SENDFILE_CHUNK = 1 << 20
# Bytes of the first call after the socket became writable, made on the event loop: more
# than a slow client's socket takes at once, little enough to copy in microseconds.
INLINE_CHUNK = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class FileRange:
    """A placeholder for file bytes: h11 only needs its length."""

    fd: int
    offset: int
    count: int
    # Called with the bytes of each sendfile call (the app's "progress", if it gave one).
    progress: Callable[[int], None] | None = None

    def __len__(self) -> int:
        return self.count


@dataclasses.dataclass(frozen=True)
class FileBody(StreamEvent):
    """Stream event: send ``count`` bytes of ``fd`` from ``offset`` as body data."""

    fd: int
    offset: int
    count: int
    progress: Callable[[int], None] | None = None


@dataclasses.dataclass(frozen=True)
class RawFile(ServerEvent):
    """Server event: write this file range to the socket."""

    range: FileRange


def _advertises(scope: dict[str, Any]) -> bool:
    return (
        scope.get("type") == "http"
        and scope.get("scheme") == "http"
        and scope.get("http_version") in ("1.0", "1.1")
    )


def _wrap_spawn_app(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def spawn_app(self: TaskGroup, app: Any, config: Any, scope: Any, send: Any) -> Any:
        if _advertises(scope):
            scope["extensions"][EXTENSION] = {}
        return await original(self, app, config, scope, send)

    return spawn_app


def _wrap_app_send(original: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    @functools.wraps(original)
    async def app_send(self: HTTPStream, message: Any) -> None:
        if message is None or message.get("type") != EXTENSION:
            return await original(self, message)
        if self.state != ASGIHTTPState.RESPONSE:
            raise RuntimeError(f"{EXTENSION} before http.response.start")
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        offset = message.get("offset")
        offset = os.lseek(fd, 0, os.SEEK_CUR) if offset is None else offset
        count = message.get("count")
        count = os.fstat(fd).st_size - offset if count is None else count
        if count > 0 and self.scope["method"] != "HEAD":
            event = FileBody(
                stream_id=self.stream_id,
                fd=fd,
                offset=offset,
                count=count,
                # Not in the ASGI extension: this module's own, for counting what was sent.
                progress=message.get("exporter.progress"),
            )
            await self.send(event)
        if not message.get("more_body", False):
            await self._send_closed()
        return None

    return app_send


def _wrap_stream_send(original: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    @functools.wraps(original)
    async def stream_send(self: H11Protocol, event: Any) -> None:
        if not isinstance(event, FileBody):
            return await original(self, event)
        file_range = FileRange(event.fd, event.offset, event.count, event.progress)
        # Only HTTP (not WebSocket) streams send files, so this is h11's own Connection.
        connection = cast(h11.Connection, self.connection)
        data = h11.Data(data=file_range)  # type: ignore[arg-type]  # h11 needs only len()
        parts: list[Any] = connection.send_with_data_passthrough(data) or []
        for part in parts:
            if isinstance(part, FileRange):
                await self.send(RawFile(range=part))
            else:
                await self.send(RawData(data=bytes(part)))
        return None

    return stream_send


def send_timeout(server: TCPServer) -> float:
    """Seconds a client may accept no byte at all before it is considered gone: the
    server's own, set on its Hypercorn config (``server.hypercorn_config``)."""
    return float(getattr(server.config, "send_timeout", SEND_TIMEOUT))


async def sendfile_all(
    sock: trio.socket.SocketType, file_range: FileRange, stall_timeout: float = SEND_TIMEOUT
) -> None:
    """Write the range to the socket with os.sendfile, yielding to trio when it is full.

    Whenever the socket has become writable, the first call is made right here, for at
    most ``INLINE_CHUNK``: a slow client's socket takes a few kilobytes, microseconds of
    kernel work, and a thousand slow clients must not each cost two thread hand-offs per
    wakeup (they did: /health's p99 went to 300 ms). If it takes all of that, the client
    is fast, and the next calls, of up to ``SENDFILE_CHUNK``, run in a worker thread: the
    copy (and, on loopback, the receiver's side of TCP too) is a millisecond or so a
    chunk, which many fast downloads would otherwise stack up on the event loop. The
    socket is non-blocking, so no call waits; a full socket is waited for here.
    """
    offset, remaining = file_range.offset, file_range.count
    out = sock.fileno()
    inline = True  # the send begins, or the socket just became writable
    while remaining > 0:
        count = min(remaining, INLINE_CHUNK if inline else SENDFILE_CHUNK)
        try:
            if inline:
                sent = os.sendfile(out, file_range.fd, offset, count)
            else:
                sent = await trio.to_thread.run_sync(os.sendfile, out, file_range.fd, offset, count)
        except BlockingIOError:
            sent = None  # the socket took nothing
        if sent == 0:  # the file is shorter than promised: never send made-up bytes
            raise OSError(errno.EIO, "file ended before the promised length")
        if sent is not None:
            if file_range.progress is not None:
                file_range.progress(sent)
            offset += sent
            remaining -= sent
        if sent is None or sent < count:  # the socket is full: wait until it takes more
            if remaining > 0:
                with trio.fail_after(stall_timeout):
                    await trio.lowlevel.wait_writable(sock)
            inline = True
        else:
            inline = False  # it took all: a fast client, the next chunks in a thread


async def _send_bytes(
    server: TCPServer, event: RawData, original: Callable[..., Awaitable[None]]
) -> None:
    """Hypercorn's own write of ordinary bytes (HTTP/2, TLS, the chunked fallback), with a
    deadline: Hypercorn shields it, so that a cancelled request cannot cut a frame in
    half, but gives it none, so a client that stops reading held its task and
    descriptor for as long as the kernel kept the connection."""
    async with server.send_lock:
        try:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + send_timeout(server)
                await server.stream.send_all(event.data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await server.protocol.handle(Closed())
            return
    if scope.cancelled_caught:  # half a write went out: the connection cannot be used again
        with trio.CancelScope(shield=True):
            await original(server, Closed())


def _wrap_protocol_send(
    original: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    @functools.wraps(original)
    async def protocol_send(self: TCPServer, event: Any) -> None:
        if isinstance(event, RawData):
            return await _send_bytes(self, event, original)
        if not isinstance(event, RawFile):
            return await original(self, event)
        async with self.send_lock:
            try:
                await sendfile_all(self.stream.socket, event.range, send_timeout(self))
                return None
            except (OSError, trio.TooSlowError, trio.BrokenResourceError):
                pass  # the client went away or stalled: close below
            except BaseException:
                # Cancelled half-way: the response framing is broken, so the
                # connection cannot be reused.
                with trio.CancelScope(shield=True):
                    await self._close()
                raise
        with trio.CancelScope(shield=True):
            await self._close()
        await self.protocol.handle(Closed())
        return None

    return protocol_send


_installed = False


def install() -> None:
    """Teach Hypercorn's trio worker the extension (idempotent)."""
    global _installed
    if _installed:
        return
    version = importlib.metadata.version("hypercorn")
    if not version.startswith(SUPPORTED_HYPERCORN):
        raise RuntimeError(
            f"exporter.http.zerocopy was written for Hypercorn {SUPPORTED_HYPERCORN}, not {version}"
        )
    TaskGroup.spawn_app = _wrap_spawn_app(TaskGroup.spawn_app)  # type: ignore[method-assign,assignment]
    HTTPStream.app_send = _wrap_app_send(HTTPStream.app_send)  # type: ignore[method-assign,assignment]
    H11Protocol.stream_send = _wrap_stream_send(H11Protocol.stream_send)  # type: ignore[method-assign,assignment]
    TCPServer.protocol_send = _wrap_protocol_send(TCPServer.protocol_send)  # type: ignore[method-assign,assignment]
    _installed = True
