"""``exporter datasets`` and ``exporter export DATASET`` as a user runs them: the client as
its own process against a real server on the shop schema (tests/support/datasets.py), the
file compared with PostgreSQL's own COPY; and ``exporter datasets check FILE`` against the
real database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import trio_asyncio  # noqa: F401  (before psycopg: see exporter/jobs/postgres_queue.py)
import psycopg
import pytest
import trio

from exporter.core.datasets import Datasets, load_datasets_file
from exporter.core.request import parse_dataset_request
from exporter.export.catalog import resolve_datasets
from tests.support import Server, StartServer, copy_oracle, wait_until_blocked
from tests.support.datasets import DATASETS_TOML, create_schema, write_datasets_file

# Each test runs the client as its own process (a second or so of Python start-up each).
pytestmark = pytest.mark.slow

Shop = tuple[Path, Datasets]
# What the service's listing of the shop schema holds (tests/support/datasets.py).
SHOP_DATASETS = ("everything", "lines", "by_sku", "big_lines", "recent", "users")


async def cli(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    result = await trio.run_process(
        [sys.executable, "-m", "exporter", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(target.name + "."))


@pytest.fixture(scope="module")
def shop(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """The shop schema and its datasets file, resolved as the server resolves it."""
    create_schema(database)
    path = write_datasets_file(tmp_path_factory.mktemp("datasets"))
    yield path, resolve_datasets(database, load_datasets_file(path))


@pytest.fixture
async def shop_server(start_server: StartServer, shop: Shop) -> Server:
    server = await start_server(exporter_datasets=shop[0])
    # Resolved against the database before any test holds a lock on a table of it.
    with trio.fail_after(30):
        while (await server.client.get("/datasets")).status_code != 200:
            await trio.sleep(0.05)
    return server


def oracle(database: str, shop: Shop, name: str, params: dict[str, object]) -> bytes:
    """What PostgreSQL's COPY writes for the export of ``name`` with these parameters."""
    datasets = shop[1]
    return copy_oracle(database, parse_dataset_request(datasets[name], params), datasets)


# -- exporter datasets ------------------------------------------------------------------------


async def test_datasets_lists_each_dataset_its_columns_and_filters(shop_server: Server) -> None:
    code, out, err = await cli("datasets", "--url", shop_server.url)
    assert code == 0, err
    blocks = {block.split(":")[0].split("\n")[0]: block for block in out.strip().split("\n\n")}
    assert sorted(blocks) == sorted(SHOP_DATASETS)
    lines = blocks["lines"].splitlines()
    assert lines[0] == "lines: Order lines"
    assert lines[1] == "  table, key (order_id, line_no), resumable"
    columns = {line.split()[0]: line.split()[1:] for line in lines[3:10]}
    assert list(columns) == ["order_id", "line_no", "sku", "placed_at", "total", "status", "note"]
    assert columns["total"] == ["numeric(10,2)", "gte", "lt"]
    assert columns["status"] == ["shop.mood", "eq", "in"]
    assert columns["sku"] == ["text"]  # no filter
    assert "  default columns: order_id, line_no, total" in lines
    assert (
        "parameters (--param NAME=VALUE, each required): since (timestamp with time zone)"
        in blocks["recent"]
    )
    assert "at most 5,000 rows an export" in blocks["by_sku"]


async def test_datasets_json_is_the_services_document(shop_server: Server) -> None:
    code, out, err = await cli("datasets", "--url", shop_server.url, "--json")
    assert code == 0, err
    assert json.loads(out) == (await shop_server.client.get("/datasets")).json()
    code, out, err = await cli("datasets", "show", "lines", "--url", shop_server.url, "--json")
    assert code == 0, err
    assert json.loads(out) == (await shop_server.client.get("/datasets/lines")).json()


async def test_datasets_show_an_unknown_name_suggests_the_listing(shop_server: Server) -> None:
    code, out, err = await cli("datasets", "--url", shop_server.url, "show", "lines")
    assert code == 0, err
    assert out.startswith("lines: Order lines\n")
    code, out, err = await cli("datasets", "--url", shop_server.url, "show", "orders")
    assert code == 2 and out == ""
    assert err.strip() == (
        f"exporter: {shop_server.url} has no dataset 'orders'; `exporter datasets` lists them"
    )


# The client's command for `exporter datasets` in a fresh interpreter, the service
# unreachable (a port bound but not listening), so that the whole path runs.
DATASETS_COMMAND = """
import json, sys
from exporter.cli import main
code = main(["datasets", "--url", sys.argv[1]])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""
SERVER_ONLY = ("quart", "hypercorn", "psycopg", "isal", "trio_asyncio", "werkzeug")


def test_datasets_listing_imports_no_server_module() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-c", DATASETS_COMMAND, url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["code"] == 3 and "exporter: cannot reach" in result.stderr
    packages = {name.partition(".")[0] for name in report["modules"]}
    assert packages.isdisjoint(SERVER_ONLY), sorted(packages & set(SERVER_ONLY))


# -- exporter export DATASET ------------------------------------------------------------------


async def test_dataset_export_is_postgres_copy_of_the_same_select(
    shop_server: Server, database: str, shop: Shop, tmp_path: Path
) -> None:
    target = tmp_path / "lines.csv"
    code, out, err = await cli(
        "export", "lines", "--url", shop_server.url, "--select", "order_id,total",
        "--filter", "total=gte.500", "--filter", "status=in.(ok,sad)", "-o", str(target),
    )  # fmt: skip
    assert code == 0, err
    params = {"select": "order_id,total", "total": "gte.500", "status": "in.(ok,sad)"}
    expected = oracle(database, shop, "lines", params)
    assert expected.count(b"\n") > 1000  # a real selection: neither everything nor nothing
    assert target.read_bytes() == expected
    assert "exporting" in err and "downloading" in err  # the two bars, as for users
    assert f"{target} {len(expected)} bytes" in out
    assert leftovers(target) == []


async def test_a_column_filtered_twice_and_the_dataset_after_the_options(
    shop_server: Server, database: str, shop: Shop, tmp_path: Path
) -> None:
    target = tmp_path / "range.csv"
    code, _, err = await cli(
        "export", "--url", shop_server.url, "-o", str(target), "--filter", "total=gte.100",
        "--filter", "total=lt.200", "--delimiter", ";", "lines",
    )  # fmt: skip
    assert code == 0, err
    params = {"total": ["gte.100", "lt.200"], "delimiter": ";"}
    expected = oracle(database, shop, "lines", params)
    assert 0 < expected.count(b"\n") < oracle(database, shop, "lines", {}).count(b"\n")
    assert target.read_bytes() == expected


async def test_a_saved_querys_parameter(
    shop_server: Server, database: str, shop: Shop, tmp_path: Path
) -> None:
    target = tmp_path / "recent.csv"
    code, _, err = await cli(
        "export", "recent", "--url", shop_server.url, "--param", "since=2024-01-03T00:00:00Z",
        "--filter", "total=gte.900", "-o", str(target),
    )  # fmt: skip
    assert code == 0, err
    params = {"since": "2024-01-03T00:00:00Z", "total": "gte.900"}
    assert target.read_bytes() == oracle(database, shop, "recent", params)


class LinesLock:
    """ACCESS EXCLUSIVE on shop.lines from another session: an export of it waits inside
    PostgreSQL, before its first row, until released."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo)
        self.conn.execute("LOCK TABLE shop.lines IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


async def _killed_while_exporting(command: list[str], database: str, target: Path) -> str:
    """Run ``exporter`` with ``command``, kill it (SIGKILL: no tidying up) while its export
    waits on the locked table; the export's id."""
    record = target.with_name(target.name + ".part.json")
    lock = LinesLock(database)
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "exporter", *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with trio.fail_after(30):
            while not record.exists():
                await trio.sleep(0.05)
        export_id = str(json.loads(record.read_text())["exportId"])
        await wait_until_blocked(database, export_id)
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        lock.release()
    return export_id


async def test_rerun_continues_the_same_datasets_export_and_only_that(
    shop_server: Server, database: str, shop: Shop, tmp_path: Path
) -> None:
    target = tmp_path / "lines.csv"
    command = ["export", "lines", "--url", shop_server.url, "-o", str(target)]
    first = await _killed_while_exporting([*command, "--filter", "total=gte.500"], database, target)
    code, _, err = await cli(*command, "--filter", "total=gte.500")
    assert code == 0, err
    assert f"continuing export {first}" in err
    assert target.read_bytes() == oracle(database, shop, "lines", {"total": "gte.500"})

    # The same file, another filter (or another dataset): another export, not that one.
    target.unlink()
    second = await _killed_while_exporting(
        [*command, "--filter", "total=gte.500"], database, target
    )
    code, _, err = await cli(*command, "--filter", "total=gte.600")
    assert code == 0, err
    started = next(line for line in err.splitlines() if "started export" in line).split()[-1]
    assert "continuing" not in err and started != second
    assert target.read_bytes() == oracle(database, shop, "lines", {"total": "gte.600"})
    assert leftovers(target) == []


async def test_a_bad_filter_prints_each_error_naming_its_parameter(
    shop_server: Server, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"  # tmp_path holds the server's exports too
    out_dir.mkdir()
    code, out, err = await cli(
        "export", "lines", "--url", shop_server.url, "--filter", "total=gte.lots",
        "--select", "order_id,colour", "-o", str(out_dir / "x.csv"),
    )  # fmt: skip
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("exporter: ") for line in lines)
    assert any(line.startswith("exporter: total: ") for line in lines), err
    assert any(line.startswith("exporter: select: unknown column 'colour'") for line in lines)
    assert list(out_dir.iterdir()) == []


async def test_an_unknown_dataset_says_so_and_suggests_the_listing(
    shop_server: Server, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = await cli("export", "orders", "--url", shop_server.url, "-o", str(out_dir / "x"))
    assert code == 2
    assert err.strip().endswith("has no dataset 'orders'; `exporter datasets` lists them")
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["lines", "--country-code", "us"], "exporter: --country-code is an option of the users"),
        (["lines", "--tier", "pro"], "exporter: --subscription-tier/--tier is an option"),
        (
            ["users", "--columns", "id", "--filter", "id=lt.9"],
            "exporter: --columns cannot go with --filter",
        ),
        (["--filter", "id=lt.9"], "exporter: --filter needs a DATASET"),
        (["lines", "--filter", "total"], "exporter: --filter 'total': must be COL=OP.VALUE"),
    ],
)
async def test_options_that_do_not_go_together_are_refused_before_asking(
    options: list[str], says: str, tmp_path: Path
) -> None:
    # The service is unreachable: the client must not have tried it.
    code, _, err = await cli("export", "--url", "http://127.0.0.1:9", "-o", "x.csv", *options)
    assert code == 2 and err.startswith(says), err


# -- exporter datasets check FILE -------------------------------------------------------------


async def test_datasets_check_lists_a_good_files_datasets(
    database: str, shop: Shop, tmp_path: Path
) -> None:
    path = write_datasets_file(tmp_path)
    code, out, err = await cli("datasets", "check", str(path), env={"DATABASE_URL": database})
    assert code == 0, err
    listed = [line.split(":")[0] for line in out.splitlines()]
    assert sorted(listed) == sorted(SHOP_DATASETS)
    assert "lines: table, key (order_id, line_no), resumable;" in out


async def test_datasets_check_names_the_file_the_dataset_and_the_key(
    database: str, shop: Shop, tmp_path: Path
) -> None:
    text = DATASETS_TOML.replace('filters.note = ["is", "like"]', 'filters.colour = ["eq"]')
    assert text != DATASETS_TOML
    path = write_datasets_file(tmp_path, text)
    code, out, err = await cli("datasets", "check", str(path), env={"DATABASE_URL": database})
    assert code != 0 and out == ""
    assert f"{path}, dataset 'lines', key 'filters'" in err and "colour" in err
