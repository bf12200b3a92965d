"""The command-line client: start an export, watch it, download it, resume a download.

Used by ``exporter export``, ``status``, ``cancel`` and ``datasets``
(``exporter.client.commands``). It talks to the service over HTTP only (httpx), as any
user's script would.

A download goes to ``FILE.part`` beside a small record, ``FILE.part.json``, of which
export and which ETag the bytes belong to. Running the same command again continues
that export and that download (``Range`` with ``If-Range``: if the file changed, the
server sends it whole and the part is started over), so bytes of one export are never
appended to another's. The record keys on the service, the dataset and every parameter:
a command that asks for anything else starts a new export. The finished file is renamed
into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from exporter.core.model import FINAL_STATUSES

__all__ = ["ClientError", "ExportClient", "forget_export", "remember_export", "resumable_export"]

CHUNK = 256 * 1024
# Exit codes: export ended badly / the request was refused / the service unreachable.
EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130


class ClientError(Exception):
    """A one-line reason, and the exit code that goes with it."""

    def __init__(self, reason: str, code: int = EXIT_FAILED) -> None:
        super().__init__(reason)
        self.code = code


Params = Mapping[str, str | list[str]]  # a list: the name given once for each value


def _reason(response: httpx.Response) -> str:
    """The problem document's detail, or its parameter errors one a line, each naming its
    parameter."""
    try:
        problem = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    errors = "\n".join(f"{e['param']}: {e['message']}" for e in problem.get("errors", []))
    return errors or problem.get("detail") or f"HTTP {response.status_code}"


def _dataset_path(name: str) -> str:
    return f"/datasets/{quote(name, safe='')}"


class ExportClient:
    """The service's API from the client's side (httpx): start an export, follow its
    events, download it, resuming a partial download."""

    def __init__(self, url: str, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # No read timeout: an event stream is quiet while an export waits in the queue.
        timeout = httpx.Timeout(30.0, read=None)
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _request(
        self, method: str, path: str, *, dataset: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """The answer; ``ClientError`` for an error, a 404 naming ``dataset`` if given."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ClientError(
                f"cannot reach {self.http.base_url}: {error}", EXIT_UNREACHABLE
            ) from None
        if response.status_code == 404 and dataset is not None:
            # Each dataset has routes of its own: an unknown name is a bare 404.
            raise ClientError(
                f"{self.http.base_url} has no dataset {dataset!r}; `exporter datasets` lists them",
                EXIT_REFUSED,
            )
        if response.status_code >= 400:
            code = EXIT_UNREACHABLE if response.status_code >= 500 else EXIT_REFUSED
            raise ClientError(_reason(response), code)
        return response

    def start(self, params: Params, dataset: str | None = None) -> str:
        """Start an export of ``dataset`` (None: the users export of ``/exports/csv``)."""
        if dataset is None:
            response = self._request("POST", "/exports/csv", params=params)
        else:
            path = f"{_dataset_path(dataset)}/exports"
            response = self._request("POST", path, params=params, dataset=dataset)
        return str(response.json()["exportId"])

    def datasets(self) -> list[dict[str, Any]]:
        """``GET /datasets``: what each dataset is (``Dataset.describe`` on the server)."""
        return list(self._request("GET", "/datasets").json()["datasets"])

    def dataset(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", _dataset_path(name), dataset=name).json())

    def status(self, export_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/exports/{export_id}/status").json())

    def cancel(self, export_id: str) -> None:
        self._request("DELETE", f"/exports/{export_id}")

    def follow(
        self, export_id: str, on_progress: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Read the export's event stream until its final status, which is returned."""
        for _ in range(5):  # a dropped stream is picked up again
            with (
                contextlib.suppress(httpx.TransportError),
                self.http.stream("GET", f"/exports/{export_id}/events") as response,
            ):
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(_reason(response), EXIT_REFUSED)
                for event, doc in _events(response.iter_lines()):
                    on_progress(doc)
                    if event == "status":
                        return doc
            time.sleep(1)
        doc = self.status(export_id)
        if doc["status"] not in FINAL_STATUSES:
            raise ClientError("lost the event stream of the export", EXIT_UNREACHABLE)
        return doc

    def download(
        self,
        export_id: str,
        target: Path,
        *,
        gzip: bool,
        on_bytes: Callable[[int, int | None], None],
        limit_rate: int | None = None,
    ) -> int:
        """Download (or continue downloading) the export's file to ``target``; its size."""
        part = target.with_name(target.name + ".part")
        record = _PartRecord(target)
        state = record.load()
        have = part.stat().st_size if part.exists() else 0
        if state.get("exportId") != export_id or state.get("gzip") != gzip or not state.get("etag"):
            have = 0  # bytes of something else, or of an unknown version: start over
        headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
        if have:
            headers.update({"Range": f"bytes={have}-", "If-Range": state["etag"]})
        path = f"/exports/{export_id}/download"
        try:
            with self.http.stream("GET", path, headers=headers) as response:
                if response.status_code == 416:  # nothing left to send: the part is whole
                    response.read()
                    return _finish(part, target, record)
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(_reason(response), EXIT_FAILED)
                if response.status_code == 200:
                    have = 0  # the server sends it whole (new file, or no usable range)
                elif _range_start(response) != have:
                    raise ClientError("the server answered another range than asked")
                etag = response.headers["etag"]
                record.save({**record.load(), "exportId": export_id, "gzip": gzip, "etag": etag})
                total = have + int(response.headers["content-length"])
                on_bytes(have, total)
                with open(part, "r+b" if have else "wb") as out:
                    out.seek(have)
                    out.truncate()
                    for chunk in _paced(response.iter_raw(CHUNK), limit_rate):
                        out.write(chunk)
                        on_bytes(len(chunk), None)
        except httpx.TransportError as error:
            raise ClientError(
                f"the download was interrupted ({error}); run the same command to resume",
                EXIT_UNREACHABLE,
            ) from None
        if part.stat().st_size != total:
            raise ClientError("the download ended early; run the same command to resume")
        return _finish(part, target, record)


class _PartRecord:
    """``FILE.part.json``: which export, encoding and ETag the bytes in ``FILE.part`` are."""

    def __init__(self, target: Path) -> None:
        self.path = target.with_name(target.name + ".part.json")

    def load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return {}

    def save(self, state: dict[str, Any]) -> None:
        self.path.write_text(json.dumps(state))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def resumable_export(
    target: Path, url: str, params: Params, gzip: bool, dataset: str | None = None
) -> str | None:
    """The export a previous run of the same command started for ``target``, if any: the
    same service, dataset (None: the users export of ``/exports/csv``) and parameters."""
    state = _PartRecord(target).load()
    # A record of the users export has no dataset: .get gives None, as for today's.
    same = (state.get("url"), state.get("dataset"), state.get("params"), state.get("gzip")) == (
        url,
        dataset,
        _plain(params),
        gzip,
    )
    return str(state["exportId"]) if same and state.get("exportId") else None


def remember_export(
    target: Path,
    url: str,
    params: Params,
    gzip: bool,
    export_id: str,
    dataset: str | None = None,
) -> None:
    """Note which export ``target`` is for, before anything is downloaded."""
    record = _PartRecord(target)
    state = record.load()
    if state.get("exportId") != export_id:
        state = {}
    state.update(url=url, params=_plain(params), gzip=gzip, exportId=export_id)
    if dataset is not None:
        state["dataset"] = dataset
    record.save(state)


def _plain(params: Params) -> dict[str, Any]:
    """``params`` as the record's JSON gives them back, to compare with one read."""
    return {
        name: value if isinstance(value, str) else list(value) for name, value in params.items()
    }


def forget_export(target: Path) -> None:
    """Remove what ``remember_export`` kept for ``output``."""
    target.with_name(target.name + ".part").unlink(missing_ok=True)
    _PartRecord(target).remove()


def _finish(part: Path, target: Path, record: _PartRecord) -> int:
    os.replace(part, target)
    record.remove()
    return target.stat().st_size


def _range_start(response: httpx.Response) -> int:
    # Content-Range: bytes <start>-<end>/<size>
    return int(response.headers["content-range"].split()[1].split("-")[0])


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Server-Sent Events as (event name, JSON data) pairs."""
    name, data = "message", []
    for line in lines:
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())
        elif line == "" and data:
            yield name, json.loads("\n".join(data))
            name, data = "message", []


def _paced(chunks: Iterator[bytes], limit_rate: int | None) -> Iterator[bytes]:
    """The chunks, no faster than ``limit_rate`` bytes a second (like curl --limit-rate)."""
    started, sent = time.monotonic(), 0
    for chunk in chunks:
        yield chunk
        if limit_rate:
            sent += len(chunk)
            ahead = sent / limit_rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
