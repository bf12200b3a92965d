"""A worker process loads no web framework: ``exporter worker`` (and the workers of
``exporter serve --workers N``, which the supervisor starts with the same command line,
``exporter.process.supervisor.worker_command``) runs exports and answers ``/health`` and
``/metrics`` with Hypercorn and a few lines of ASGI, never Quart, Flask, Werkzeug or
Jinja.

What the process imported is read from Python's own import log
(``PYTHONPROFILEIMPORTTIME``), written by the real worker while it runs a real export.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from exporter.core.config import Settings
from exporter.core.request import parse_export_request
from exporter.process.supervisor import worker_command
from tests.support import Oracle, service, worker

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

WEB_FRAMEWORKS = ("quart", "quart_trio", "flask", "werkzeug", "jinja2")


def imported_packages(log: str) -> set[str]:
    """The top-level packages an import-time log (``-X importtime``) names."""
    return {
        line.rpartition("|")[2].strip().partition(".")[0]
        for line in log.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_the_supervisors_workers_run_the_worker_command() -> None:
    command = worker_command(1, Settings(worker_metrics_port=9100))
    assert command == [sys.executable, "-m", "exporter", "worker", "--bind", "127.0.0.1:9101"]


def test_a_worker_runs_an_export_without_a_web_framework(
    database: str, tmp_path: Path, oracle: Oracle
) -> None:
    exports, log_path = tmp_path / "exports", tmp_path / "worker.log"
    params = {"country_code": "GB", "columns": "id,email,signup_date"}
    with (
        open(log_path, "wb") as log,
        # The API only: the worker is the one process that runs exports.
        service(database, exports, subprocess.DEVNULL, MAX_CONCURRENT_EXPORTS="0") as api,
        worker(database, exports, log, PYTHONPROFILEIMPORTTIME="1") as exporter_worker,
    ):
        export_id = api.export(params)
        download = api.client.get(f"/exports/{export_id}/download")
        assert download.content == oracle(parse_export_request(params))
        metrics = httpx.get(f"{exporter_worker.url}/metrics")
        assert metrics.status_code == 200
        assert 'exporter_exports_total{status="completed"} 1.0' in metrics.text
    packages = imported_packages(log_path.read_text(errors="replace"))
    assert {"trio", "psycopg", "hypercorn", "prometheus_client"} <= packages  # it ran
    assert packages.isdisjoint(WEB_FRAMEWORKS), sorted(packages & set(WEB_FRAMEWORKS))
