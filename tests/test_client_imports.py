"""The command-line client starts without the server stack: ``exporter status`` (and export,
cancel) must not pay for importing trio, Quart, Hypercorn or psycopg, so a server module
imported at the top of exporter/cli.py or exporter/client/ fails here. The other way
round, the server does not load the client's HTTP stack (httpx brings rich and pygments),
its progress bars, nor what only some settings use (boto3, asyncpg). And the client's
export options are the service's parameters (``exporter.core.request.PARAMETERS``)."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.client import options
from exporter.core.request import PARAMETERS, Parameter, parse_export_request

# The server stack. (trio may appear: httpx's transport, httpcore, imports it on its own
# whenever it is installed, as it is beside the server.)
SERVER_ONLY = ("quart", "hypercorn", "psycopg", "isal", "trio_asyncio", "werkzeug")
NOT_NEEDED = ("flask", "jinja2")

# What `exporter status ID` runs, in a fresh interpreter: the service is unreachable (a
# port bound but not listening refuses at once), so it exits 3 after the whole path ran.
STATUS_COMMAND = """
import json, sys
from exporter.cli import main
code = main(["status", "--url", sys.argv[1], "0" * 32])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_status_command_imports_no_server_module() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-c", STATUS_COMMAND, url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["code"] == 3, result.stderr  # it ran: the service could not be reached
    assert "exporter: cannot reach" in result.stderr
    packages = {name.partition(".")[0] for name in report["modules"]}
    assert packages.isdisjoint(SERVER_ONLY + NOT_NEEDED), sorted(
        packages & {*SERVER_ONLY, *NOT_NEEDED}
    )


# What `exporter serve` imports before it serves: the command line, the server, the app.
SERVE_IMPORTS = """
import json, sys
from exporter.cli import build_parser
build_parser().parse_args(["serve"])
from exporter.process.server import run_server
from exporter.http.app import create_app
from exporter.core.config import Settings
create_app(Settings.from_env(), "postgresql://unused")
print(json.dumps(sorted(sys.modules)))
"""
# The client's HTTP stack and progress bars, the object store's client (for a bucket only)
# and the COPY reader's driver (for ROW_SOURCE=copy only).
NOT_BY_DEFAULT = ("httpx", "httpcore", "rich", "pygments", "tqdm", "boto3", "botocore", "asyncpg")


def test_the_server_loads_nothing_it_does_not_use(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SERVE_IMPORTS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"EXPORT_DIR": str(tmp_path), "PATH": ""},
    )
    packages = {name.partition(".")[0] for name in json.loads(result.stdout.splitlines()[-1])}
    assert packages.isdisjoint(NOT_BY_DEFAULT), sorted(packages & set(NOT_BY_DEFAULT))
    assert {"quart", "hypercorn", "psycopg"} <= packages  # it did load the server


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["export", "-o", "out.csv", *argv])


def test_no_options_send_no_parameters() -> None:
    assert options.export_params(_parse()) == {}


@pytest.mark.parametrize("parameter", PARAMETERS, ids=lambda p: p.name)
def test_each_parameter_is_an_option_sent_by_its_name(parameter: Parameter) -> None:
    # A value each parameter accepts (a flag takes none).
    values = {"country_code": "us", "subscription_tier": "pro", "columns": "id,email"}
    values |= {"delimiter": ";", "quote_char": "'"}
    for option in (parameter.option, *parameter.aliases):
        argv = [option] if parameter.flag else [option, values[parameter.field]]
        params = options.export_params(_parse(*argv))
        assert list(params) == [parameter.name]
        parse_export_request(params)  # the service accepts what the option sends


def test_readme_options_work_together() -> None:
    args = _parse(
        "--country-code", "GB", "--tier", "free", "--columns", "id,name", "--delimiter", "\t",
        "--quote-char", "'", "--neutralize-formulas",
    )  # fmt: skip
    assert options.export_params(args) == {
        "country_code": "GB",
        "subscription_tier": "free",
        "columns": "id,name",
        "delimiter": "\t",
        "quoteChar": "'",
        "neutralizeFormulas": "true",
    }
