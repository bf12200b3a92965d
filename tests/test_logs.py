"""Logs: a line per job transition and per request, as JSON with LOG_FORMAT=json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import UsersLock, service, wait_until_blocked_sync

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def run_service_and_log(
    database: str, tmp_path: Path, users_lock: Callable[[], UsersLock], **env: str
) -> tuple[str, str, str]:
    """One completed export and its download, then one export stopped by the shutdown;
    returns (the log, the completed id, the stopped id)."""
    log_path = tmp_path / "service.log"
    with (
        open(log_path, "wb") as log,
        service(database, export_dir=tmp_path / "exports", stderr=log, **env) as app,
    ):
        done = app.export({"country_code": "GB"})
        identity = {"Accept-Encoding": "identity"}
        assert app.client.get(f"/exports/{done}/download", headers=identity).status_code == 200
        users_lock()
        stopped = app.client.post("/exports/csv").json()["exportId"]
        wait_until_blocked_sync(database, stopped)  # its query waits: stop the service now
    return log_path.read_text(), done, stopped


def test_json_lines_for_transitions_and_requests(
    database: str, tmp_path: Path, users_lock: Callable[[], UsersLock]
) -> None:
    text, done, stopped = run_service_and_log(database, tmp_path, users_lock, LOG_FORMAT="json")
    lines: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines()]  # all JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)

    def events(export_id: str) -> list[dict[str, Any]]:
        return [
            line
            for line in lines
            if line.get("export_id") == export_id and line.get("event", "").startswith("export.")
        ]

    assert [e["event"] for e in events(done)] == [
        "export.pending",
        "export.processing",
        "export.completed",
    ]
    completed = events(done)[-1]
    assert completed["rows"] > 0 and completed["bytes"] > 0 and completed["duration_s"] > 0
    assert completed["error"] is None
    assert events(done)[0]["request"]["country_code"] == "GB"
    # Stopped by the shutdown: handed back to the queue for a later process to continue.
    handed_back = events(stopped)[-1]
    assert handed_back["event"] == "export.handed_back" and handed_back["status"] == "processing"

    access = [line for line in lines if line["logger"] == "exporter.access"]
    download = [line for line in access if line["path"] == f"/exports/{done}/download"]
    assert len(download) == 1
    assert download[0]["method"] == "GET" and download[0]["status"] == 200
    assert download[0]["response_bytes"] == str(completed["bytes"])
    assert download[0]["event"] == "http.request" and download[0]["duration_s"] >= 0


def test_text_lines_by_default(
    database: str, tmp_path: Path, users_lock: Callable[[], UsersLock]
) -> None:
    text, done, stopped = run_service_and_log(database, tmp_path, users_lock)
    assert f"INFO exporter.jobs: export {done} completed: rows " in text
    assert f"export {stopped} handed back" in text
    assert f'"GET /exports/{done}/download 1.1" 200' in text  # Hypercorn's access line
    assert not text.lstrip().startswith("{")
