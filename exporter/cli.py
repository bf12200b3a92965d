"""The ``exporter`` command: ``serve``, ``worker``, ``seed`` and ``datasets check``;
``export``, ``status``, ``cancel`` and ``datasets`` (the client, exporter/client/)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from exporter.client import options as client_options

if TYPE_CHECKING:
    from exporter.core.config import Settings

__all__ = ["build_parser", "database", "main", "seed_with_progress"]

# The server stack (trio, Hypercorn, Quart, psycopg) is imported only by serve and seed,
# in the functions below: the client's commands start without it
# (tests/test_client_imports.py).

DEFAULT_SEED_ROWS = 10_000_000

log = logging.getLogger("exporter")


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """``DATABASE_URL`` if set, else the embedded server (started, and stopped on exit)."""
    if settings.database_url:
        yield settings.database_url
        return
    try:
        from exporter.process.embedded import embedded_database
    except ImportError:
        raise SystemExit(
            "exporter: DATABASE_URL is not set and the embedded PostgreSQL is not installed;"
            " set DATABASE_URL, or pip install 'exporter[embedded]'"
        ) from None
    with embedded_database(settings.embedded_pg_dir) as conninfo:
        yield conninfo


def seed_with_progress(conninfo: str, rows: int) -> None:
    """Fill ``users`` up to ``rows`` rows in the database ``conninfo`` names, with a progress
    bar (nothing when it holds as many already); the indexes are built after."""
    from exporter.process.schema import apply_schema, count_users, seed_users

    have = count_users(conninfo)
    if have >= rows:
        log.info("users holds %d rows already; nothing to seed", have)
        return
    from tqdm import tqdm  # only to seed: a service that serves does without it

    apply_schema(conninfo, "schema")
    with tqdm(total=rows, unit="rows", unit_scale=True, desc="seeding users") as bar:
        seed_users(conninfo, rows, progress=bar.update)
    apply_schema(conninfo, "indexes")


def _rows(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 0:
        raise argparse.ArgumentTypeError("must be zero or more")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``exporter`` command with ``argv`` (default: the process's); returns the exit
    status. The client's commands load no server module."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in client_options.COMMANDS:
        from exporter.client import commands as client_commands  # httpx: the client's only

        return client_commands.run(args)
    return _serve_or_seed(parser, args)


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``serve``, ``worker``, ``seed`` and the client's commands (among
    them ``datasets``, whose ``check`` runs here, with the database: its ``command`` is
    ``client_options.DATASETS_CHECK``)."""
    parser = argparse.ArgumentParser(prog="exporter", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the HTTP service (embedded PostgreSQL unless DATABASE_URL is set)"
    )
    serve.add_argument("--bind", help="HOST:PORT to listen on (default: BIND or 127.0.0.1:8080)")
    serve.add_argument(
        "--workers",
        type=_rows,
        help="run the exports in this many worker processes, the API alone here"
        " (default: WORKERS or 0, exports in this process)",
    )
    serve.add_argument(
        "--seed-rows",
        type=_rows,
        help=f"fill users up to this many rows first (embedded default {DEFAULT_SEED_ROWS:,};"
        " with DATABASE_URL nothing is seeded unless asked)",
    )
    worker = commands.add_parser(
        "worker", help="run exports from the shared queue only (no API), until SIGTERM"
    )
    worker.add_argument(
        "--bind", help="HOST:PORT to answer /health and /metrics on (default: none)"
    )
    seed = commands.add_parser("seed", help="fill the users table up to --rows rows")
    seed.add_argument("--rows", type=_rows, default=DEFAULT_SEED_ROWS)
    client_options.add_commands(commands)
    return parser


def _serve_or_seed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    # trio_asyncio before anything imports psycopg (exporter.process.schema does): see
    # exporter.jobs.postgres_queue.
    import trio_asyncio  # noqa: F401
    import trio

    from exporter.core.config import Settings
    from exporter.core.errors import SettingsError
    from exporter.core.logs import configure_logging
    from exporter.process.hosting import tune_malloc
    from exporter.process.schema import apply_schema

    try:
        settings = Settings.from_env()
    except SettingsError as error:
        parser.error(str(error))
    configure_logging(settings.log_format)
    if args.command == "serve" and args.bind:
        settings = settings.replace(bind=args.bind)
    if args.command == "serve" and args.workers is not None:
        settings = settings.replace(workers=args.workers)
    if args.command == "worker":
        from exporter.process.worker import run_worker

        if settings.max_concurrent_exports == 0:
            parser.error("MAX_CONCURRENT_EXPORTS is 0: a worker would run no export")
        with database(settings) as conninfo:
            apply_schema(conninfo, "schema")
            tune_malloc()
            trio.run(run_worker, settings, conninfo, args.bind)
        return 0

    if args.command == client_options.DATASETS_CHECK:
        return _check_datasets(settings, args.file)
    with database(settings) as conninfo:
        apply_schema(conninfo, "schema")
        if args.command == "seed":
            seed_with_progress(conninfo, args.rows)
            return 0
        seed_rows = args.seed_rows
        if seed_rows is None and not settings.database_url:
            seed_rows = DEFAULT_SEED_ROWS
        if seed_rows:
            seed_with_progress(conninfo, seed_rows)
        apply_schema(conninfo, "indexes")
        tune_malloc()
        if settings.workers and not settings.database_url:
            # The workers inherit this environment: they must use this embedded server,
            # not start their own.
            os.environ["DATABASE_URL"] = conninfo
        datasets = _datasets(settings, conninfo)
        if datasets is None:
            return 2
        from exporter.process.server import run_server

        trio.run(run_server, settings, conninfo, datasets)
    return 0


def _datasets(settings: Settings, conninfo: str) -> Any:
    """The declared datasets, resolved; None (the errors printed) if they cannot be."""
    from exporter.core.datasets import DatasetError, declared_datasets
    from exporter.export.catalog import DatasetCatalog

    try:
        catalog = DatasetCatalog(conninfo, declared_datasets(settings.exporter_datasets))
        catalog.resolve()
    except DatasetError as error:
        print(f"exporter: the datasets cannot be exported:\n{error}", file=sys.stderr)
        return None
    return catalog


def _check_datasets(settings: Settings, file: str) -> int:
    """``exporter datasets check FILE``: the file's problems, or what it declares."""
    from pathlib import Path

    from exporter.process.schema import apply_schema

    with database(settings) as conninfo:
        apply_schema(conninfo, "schema")
        catalog = _datasets(settings.replace(exporter_datasets=Path(file)), conninfo)
    if catalog is None:
        return 1
    for dataset in catalog.values():
        how = "resumable" if dataset.resumable(settings.row_source) else "not resumable"
        names = ", ".join(dataset.column_names)
        print(f"{dataset.name}: {dataset.source}, key ({', '.join(dataset.key)}), {how}; {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
