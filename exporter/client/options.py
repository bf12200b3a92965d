"""The client's command line: ``exporter export``, ``status`` and ``cancel``, and the
request's parameters from their options.

Only the standard library and the pure parameter table: every ``exporter`` command builds
this parser, the server's included, and the client's HTTP stack (httpx, which brings its
own CLI's click, rich and pygments when they are installed) is loaded only when a client
command runs (``exporter.client.commands``). The export options are made from
``exporter.core.request.PARAMETERS``, the table the service validates with.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from exporter.core.request import PARAMETERS

__all__ = ["COMMANDS", "add_commands", "export_params"]

DEFAULT_URL = "http://127.0.0.1:8080"
COMMANDS = ("export", "status", "cancel")


def add_commands(commands: Any) -> None:
    """Add the client's subcommands to the ``exporter`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("EXPORTER_URL", DEFAULT_URL),
        help=f"the service (default: EXPORTER_URL or {DEFAULT_URL}); API_TOKEN is sent if set",
    )
    export = commands.add_parser(
        "export",
        parents=[common],
        help="start an export, show its progress, download it (rerun to resume)",
    )
    export.add_argument("-o", "--output", required=True, type=Path, help="file to write")
    _add_parameters(export)
    export.add_argument("--gzip", action="store_true", help="download the gzip file as is")
    export.add_argument("--limit-rate", type=int, help="download at most this many bytes/s")
    export.add_argument(
        "--cancel-on-interrupt",
        action="store_true",
        help="on Ctrl-C cancel the export on the server without asking",
    )
    status = commands.add_parser("status", parents=[common], help="show an export's status")
    status.add_argument("export_id")
    status.add_argument("--json", action="store_true", help="the whole status document")
    cancel = commands.add_parser("cancel", parents=[common], help="cancel an export")
    cancel.add_argument("export_id")


def _add_parameters(export: argparse.ArgumentParser) -> None:
    """An option for each export parameter: its value, or for a flag its presence."""
    group = export.add_argument_group("what to export (the service checks these)")
    for parameter in PARAMETERS:
        names = (parameter.option, *parameter.aliases)
        text = parameter.description.replace("%", "%%")  # argparse formats help with %
        if parameter.flag:
            group.add_argument(*names, dest=parameter.field, action="store_true", help=text)
        else:
            choices = parameter.query_schema.get("enum")
            metavar = "{" + ",".join(choices) + "}" if choices else None
            group.add_argument(*names, dest=parameter.field, metavar=metavar, help=text)


def export_params(args: argparse.Namespace) -> dict[str, str]:
    """The request's parameters by their names on the wire; a flag given is sent as true."""
    params: dict[str, str] = {}
    for parameter in PARAMETERS:
        value = getattr(args, parameter.field)
        if parameter.flag and value:
            params[parameter.name] = "true"
        elif not parameter.flag and value is not None:
            params[parameter.name] = value
    return params
