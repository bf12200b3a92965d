"""The load test of bench/load.py in a shorter form (issue 6): 4 exports kept running, 16
downloads and 200 status requests a second against ``exporter serve``, for a few
seconds instead of a minute. Nothing may fail, every file must be right, memory bounded."""

from __future__ import annotations

from pathlib import Path

from bench.load import run_load

LOAD_SECONDS = 8.0


def test_load_with_no_errors_and_every_file_right(database: str, tmp_path: Path) -> None:
    report = run_load(database, seconds=LOAD_SECONDS, export_dir=tmp_path / "exports")
    assert report["errors"] == 0, report["error_samples"]
    assert report["exports_completed"] >= 4
    assert report["exports_checked"] == report["exports_completed"]
    assert report["downloads_completed"] >= 16
    # Sent open-loop at 200/s over 32 keep-alive connections; on 2 cores shared with
    # the load's own 16 curl | sha256sum pipelines the service answers about 120/s.
    assert report["status_requests"] >= 0.4 * 200 * LOAD_SECONDS
    assert report["health"]["samples"] > 0 and report["health"]["max_ms"] < 1000
    assert report["peak_rss_mb"] < 150
