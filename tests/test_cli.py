"""The command-line client: ``exporter export|status|cancel`` as a user runs it, a real
process against a real server."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from exporter.core.model import ExportRequest
from tests.support import Oracle, Server, StartServer, UsersLock, wait_until_blocked

# Each test runs the client as its own process (a second or so of Python start-up each).
pytestmark = pytest.mark.slow


async def cli(*args: str) -> tuple[int, str, str]:
    result = await trio.run_process(
        [sys.executable, "-m", "exporter", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(target.name + "."))


async def test_export_shows_progress_and_writes_the_file(
    server: Server, oracle: Oracle, tmp_path: Path
) -> None:
    target = tmp_path / "us.csv"
    code, out, err = await cli(
        "export", "--url", server.url, "--country-code", "us", "--columns", "id,email",
        "-o", str(target),
    )  # fmt: skip
    assert code == 0, err
    assert target.read_bytes() == oracle(ExportRequest(country_code="US", columns=("id", "email")))
    assert "exporting" in err and "rows" in err and "downloading" in err  # the two bars
    assert f"{target} {target.stat().st_size} bytes" in out
    assert leftovers(target) == []


async def test_gzip_download_is_the_gzip_file(
    server: Server, oracle: Oracle, tmp_path: Path
) -> None:
    target = tmp_path / "tab.csv.gz"
    code, _, err = await cli(
        "export", "--url", server.url, "--tier", "pro", "--delimiter", "\t", "--gzip",
        "-o", str(target),
    )  # fmt: skip
    assert code == 0, err
    expected = oracle(ExportRequest(subscription_tier="pro", delimiter="\t"))
    assert gzip.decompress(target.read_bytes()) == expected


async def test_interrupted_download_resumes_where_it_stopped(
    server: Server, oracle: Oracle, tmp_path: Path
) -> None:
    target = tmp_path / "all.csv"
    part = tmp_path / "all.csv.part"
    command = ["export", "--url", server.url, "-o", str(target)]
    # A first run, killed (SIGKILL: no chance to tidy up) once it has downloaded 1 MB.
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "exporter", *command, "--limit-rate", "500000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with trio.fail_after(60):
        while not part.exists() or part.stat().st_size < 1_000_000:
            await trio.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    await process.wait()
    have = part.stat().st_size

    sent_before = await server.download_bytes("sendfile")
    code, _, err = await cli(*command)
    assert code == 0, err
    assert "continuing export" in err  # the same export, not a new one
    expected = oracle(ExportRequest())
    assert target.read_bytes() == expected
    # Only the rest was sent again (by sendfile, as the server's /metrics counts it).
    assert await server.download_bytes("sendfile") - sent_before == len(expected) - have
    assert leftovers(target) == []


async def test_a_part_whose_etag_no_longer_matches_is_started_over(
    server: Server, oracle: Oracle, tmp_path: Path
) -> None:
    target = tmp_path / "gb.csv"
    command = ["export", "--url", server.url, "--country-code", "GB", "-o", str(target)]
    code, _, err = await cli(*command)
    assert code == 0, err
    export_id = next(line for line in err.splitlines() if "started export" in line).split()[-1]
    # As if an earlier run had left part of another version of the file: the record
    # names this export, but an ETag the server no longer has, and the bytes are wrong.
    target.unlink()
    record = {
        "url": server.url,
        "params": {"country_code": "GB"},
        "gzip": False,
        "exportId": export_id,
        "etag": '"stale"',
    }
    (tmp_path / "gb.csv.part.json").write_text(json.dumps(record))
    (tmp_path / "gb.csv.part").write_bytes(b"bytes of some other file " * 1000)
    code, _, err = await cli(*command)
    assert code == 0, err
    assert f"continuing export {export_id}" in err
    assert target.read_bytes() == oracle(ExportRequest(country_code="GB"))
    assert leftovers(target) == []


async def test_bad_parameter_is_one_line_and_exit_2(server: Server, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = await cli(
        "export", "--url", server.url, "--delimiter", "||", "-o", str(out_dir / "x.csv")
    )
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("exporter: delimiter:")
    assert out == "" and list(out_dir.iterdir()) == []


async def test_unreachable_service_is_exit_3(tmp_path: Path) -> None:
    code, _, err = await cli("status", "--url", "http://127.0.0.1:9", "0" * 32)
    assert code == 3 and err.startswith("exporter: cannot reach")


async def test_status_and_cancel_commands(
    server: Server, database: str, users_lock: Callable[[], UsersLock], tmp_path: Path
) -> None:
    users_lock()
    export_id = await server.create()
    await wait_until_blocked(database, export_id)
    code, out, _ = await cli("status", "--url", server.url, export_id)
    assert code == 0 and f"{export_id} processing 0.0%" in out
    code, out, _ = await cli("cancel", "--url", server.url, export_id)
    assert code == 0 and out.strip() == f"cancelled {export_id}"
    code, out, _ = await cli("status", "--url", server.url, "--json", export_id)
    assert code == 0 and '"status": "cancelled"' in out


async def test_export_cancelled_elsewhere_exits_1_with_the_reason(
    server: Server, database: str, users_lock: Callable[[], UsersLock], tmp_path: Path
) -> None:
    users_lock()
    target = tmp_path / "x.csv"
    async with trio.open_nursery() as nursery:
        results: list[tuple[int, str, str]] = []

        async def run() -> None:
            results.append(await cli("export", "--url", server.url, "-o", str(target)))

        nursery.start_soon(run)
        with trio.fail_after(30):
            while not (tmp_path / "x.csv.part.json").exists():
                await trio.sleep(0.05)
        export_id = (tmp_path / "x.csv.part.json").read_text().split('"exportId": "')[1][:36]
        await wait_until_blocked(database, export_id)
        await server.client.delete(f"/exports/{export_id}")
    code, _, err = results[0]
    assert code == 1
    assert err.strip().endswith(f"exporter: export {export_id} cancelled: no reason given")
    assert leftovers(target) == [] and not target.exists()


def _sigint_as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_ctrl_c_with_cancel_on_interrupt_cancels_the_job(
    start_server: StartServer, database: str, users_lock: Callable[[], UsersLock], tmp_path: Path
) -> None:
    server = await start_server()
    users_lock()
    target = tmp_path / "x.csv"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "exporter", "export", "--url", server.url, "-o", str(target),
         "--cancel-on-interrupt"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # As from a terminal: a shell that starts the suite in the background leaves SIGINT
        # ignored, and a program that starts with it ignored never sees Ctrl-C at all.
        preexec_fn=_sigint_as_from_a_terminal,
    )  # fmt: skip
    with trio.fail_after(30):
        while not (tmp_path / "x.csv.part.json").exists():
            await trio.sleep(0.05)
    export_id = (tmp_path / "x.csv.part.json").read_text().split('"exportId": "')[1][:36]
    await wait_until_blocked(database, export_id)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    with trio.fail_after(10):
        assert await process.wait() == 130
    assert (await server.status(export_id))["status"] == "cancelled"
    assert leftovers(target) == []
