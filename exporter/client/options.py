"""The client's command line: ``exporter export``, ``status``, ``cancel`` and ``datasets``,
and the request's parameters from their options.

Only the standard library and the pure parameter table: every ``exporter`` command builds
this parser, the server's included, and the client's HTTP stack (httpx, which brings its
own CLI's click, rich and pygments when they are installed) is loaded only when a client
command runs (``exporter.client.commands``). The export options are made from
``exporter.core.request.PARAMETERS``, the table the service validates with.

``exporter export`` has two forms. Without DATASET it is the users export of
``POST /exports/csv`` (``--country-code``, ``--tier``, ``--columns``), as it always was;
with DATASET it posts to ``/datasets/DATASET/exports`` with ``--select``, ``--filter``
and ``--param``. The CSV dialect's options go with either.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from exporter.core.request import DIALECT_PARAMETERS, PARAMETERS, SELECT, Parameter

__all__ = [
    "COMMANDS",
    "DATASETS_CHECK",
    "ExportTarget",
    "OptionError",
    "add_commands",
    "export_params",
    "export_target",
]

DEFAULT_URL = "http://127.0.0.1:8080"
COMMANDS = ("export", "status", "cancel", "datasets")
# ``exporter datasets check FILE`` reads the database, not the service: the command line
# runs it with the server's commands (exporter/cli.py), under this name.
DATASETS_CHECK = "datasets-check"
# The dataset the options of the users export (--country-code, --tier, --columns) are for.
USERS = "users"

# The users export's own parameters; the others (the CSV dialect) go with every dataset.
_LEGACY: tuple[Parameter, ...] = tuple(p for p in PARAMETERS if p not in DIALECT_PARAMETERS)
# Names a filter or a saved query's parameter cannot have: the request's own parameters.
_RESERVED = frozenset({SELECT, *(p.name for p in DIALECT_PARAMETERS)})


class OptionError(ValueError):
    """Options that do not make one request: the message says which and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class ExportTarget:
    """What ``exporter export`` asks for: a dataset (None: the users export of
    ``/exports/csv``) and the query string's parameters, a list for a name given more
    than once (filters on one column)."""

    dataset: str | None
    params: dict[str, str | list[str]]


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("EXPORTER_URL", DEFAULT_URL),
        help=f"the service (default: EXPORTER_URL or {DEFAULT_URL}); API_TOKEN is sent if set",
    )
    return common


def add_commands(commands: Any) -> None:
    """Add the client's subcommands to the ``exporter`` parser."""
    common = _common()
    _add_export(commands, common)
    status = commands.add_parser("status", parents=[common], help="show an export's status")
    status.add_argument("export_id")
    status.add_argument("--json", action="store_true", help="the whole status document")
    cancel = commands.add_parser("cancel", parents=[common], help="cancel an export")
    cancel.add_argument("export_id")
    _add_datasets(commands, common)


def _add_export(commands: Any, common: argparse.ArgumentParser) -> None:
    export = commands.add_parser(
        "export",
        parents=[common],
        help="start an export, show its progress, download it (rerun to resume)",
        description="Export DATASET (see `exporter datasets`), or without it the users "
        "table as /exports/csv does; show the progress, download the file. Run the same "
        "command again to continue an interrupted export or download.",
    )
    # nargs="?": before or after the options, or not at all for the users export.
    export.add_argument(
        "dataset", nargs="?", metavar="DATASET", help="the dataset (default: the users export)"
    )
    export.add_argument("-o", "--output", required=True, type=Path, help="file to write")
    _add_dataset_options(export)
    _add_parameters(export)
    export.add_argument("--gzip", action="store_true", help="download the gzip file as is")
    export.add_argument("--limit-rate", type=int, help="download at most this many bytes/s")
    export.add_argument(
        "--cancel-on-interrupt",
        action="store_true",
        help="on Ctrl-C cancel the export on the server without asking",
    )


def _add_dataset_options(export: argparse.ArgumentParser) -> None:
    group = export.add_argument_group("what to export of a DATASET (the service checks these)")
    group.add_argument(
        "--select", metavar="COL,COL", help="columns in the order wanted (default: its default)"
    )
    group.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="COL=OP.VALUE",
        help="only rows where COL matches, as PostgREST writes it: total=gte.500, "
        "status=in.(ok,sad), note=is.null, status=not.eq.ok; repeat for more (all must hold)",
    )
    group.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a saved query's parameter; repeat for each",
    )


def _add_parameters(export: argparse.ArgumentParser) -> None:
    """An option for each export parameter: its value, or for a flag its presence."""
    legacy = export.add_argument_group("what to export without DATASET (the service checks these)")
    dialect = export.add_argument_group("the CSV file")
    for parameter in PARAMETERS:
        group = legacy if parameter in _LEGACY else dialect
        names = (parameter.option, *parameter.aliases)
        text = parameter.description.replace("%", "%%")  # argparse formats help with %
        if parameter.flag:
            group.add_argument(*names, dest=parameter.field, action="store_true", help=text)
        else:
            choices = parameter.query_schema.get("enum")
            metavar = "{" + ",".join(choices) + "}" if choices else None
            group.add_argument(*names, dest=parameter.field, metavar=metavar, help=text)


def _add_datasets(commands: Any, common: argparse.ArgumentParser) -> None:
    datasets = commands.add_parser(
        "datasets",
        parents=[common],
        help="list the datasets the service exports (their columns, filters, key)",
        description="List the datasets the service exports (`show NAME`: one of them);"
        " `check FILE` checks a datasets file against the database (DATABASE_URL).",
    )
    datasets.add_argument("--json", action="store_true", help="the service's document")
    actions = datasets.add_subparsers(dest="datasets_command", metavar="{show,check}")
    show = actions.add_parser("show", help="one dataset")
    show.add_argument("name", metavar="NAME")
    # SUPPRESS: given before `show` or after it, neither default overwrites the other.
    show.add_argument("--url", default=argparse.SUPPRESS, help="as for `exporter datasets`")
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    check = actions.add_parser(
        "check",
        help="check a datasets file against the database (DATABASE_URL, else embedded)",
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(command=DATASETS_CHECK)


def export_params(args: argparse.Namespace) -> dict[str, str]:
    """The request's parameters by their names on the wire; a flag given is sent as true."""
    return _values(args, PARAMETERS)


def _values(args: argparse.Namespace, parameters: tuple[Parameter, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for parameter in parameters:
        value = getattr(args, parameter.field)
        if parameter.flag and value:
            params[parameter.name] = "true"
        elif not parameter.flag and value is not None:
            params[parameter.name] = value
    return params


def export_target(args: argparse.Namespace) -> ExportTarget:
    """What ``exporter export``'s options ask for; ``OptionError`` when they do not go
    together (the users export's options with another dataset's, or with a dataset's
    options without a dataset)."""
    legacy = [
        "/".join((p.option, *p.aliases)) for p in _LEGACY if getattr(args, p.field) is not None
    ]
    options = (("--select", args.select is not None), ("--filter", args.filters))
    given = [name for name, value in (*options, ("--param", args.params)) if value]
    if args.dataset is None and given:
        raise OptionError(
            f"{given[0]} needs a DATASET: exporter export DATASET -o FILE {given[0]} ..."
            " (`exporter datasets` lists them)"
        )
    if legacy and args.dataset not in (None, USERS):
        raise OptionError(
            f"{legacy[0]} is an option of the users export, not of {args.dataset}:"
            f" use --filter (or --select) with {args.dataset}"
        )
    if legacy and given:
        raise OptionError(f"{legacy[0]} cannot go with {given[0]}: use --filter and --select alone")
    if args.dataset is None or legacy:
        return ExportTarget(None, dict(export_params(args)))
    return ExportTarget(args.dataset, _dataset_params(args))


def _dataset_params(args: argparse.Namespace) -> dict[str, str | list[str]]:
    """``select``, the filters (a column filtered twice is its parameter twice), the saved
    query's parameters and the dialect's, in the order given."""
    values: dict[str, list[str]] = {}
    if args.select is not None:
        values[SELECT] = [args.select]
    for text in args.filters:
        name, value = _pair("--filter", text, "COL=OP.VALUE")
        values.setdefault(name, []).append(value)
    for text in args.params:
        name, value = _pair("--param", text, "NAME=VALUE")
        if name in values:
            raise OptionError(f"--param {name} is given twice, or is also a --filter")
        values[name] = [value]
    params: dict[str, str | list[str]] = {
        name: found[0] if len(found) == 1 else found for name, found in values.items()
    }
    params.update(_values(args, DIALECT_PARAMETERS))
    return params


def _pair(option: str, text: str, form: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    name = name.strip()
    if not equals or not name:
        raise OptionError(f"{option} {text!r}: must be {form}")
    if name in _RESERVED:
        raise OptionError(f"{option} {text!r}: {name} is not a column; it has an option of its own")
    return name, value
