"""``exporter export``, ``status``, ``cancel`` and ``datasets``: running the client's
commands (their options are in ``exporter.client.options``). Progress bars go to stderr (tqdm),
results to stdout; a failure is a line on stderr, ``exporter: <reason>`` (one for each
parameter the service refused), with the exit code of ``ClientError``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from exporter.client.exports import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    ClientError,
    ExportClient,
    forget_export,
    remember_export,
    resumable_export,
)
from exporter.client.options import OptionError, export_target
from exporter.core.model import LIVE_STATUSES, ExportStatus

__all__ = ["describe_dataset", "run"]


def run(args: argparse.Namespace) -> int:
    """Run the client command ``args`` names (``export``, ``status``, ``cancel`` or
    ``datasets``); returns the exit status."""
    client = ExportClient(args.url, token=os.environ.get("API_TOKEN"))
    try:
        if args.command == "status":
            doc = client.status(args.export_id)
            print(json.dumps(doc, indent=2) if args.json else _summary(doc))
        elif args.command == "cancel":
            client.cancel(args.export_id)
            print(f"cancelled {args.export_id}")
        elif args.command == "datasets":
            _datasets(client, args)
        else:
            return _export(client, args)
        return 0
    except ClientError as error:
        for line in str(error).splitlines():
            print(f"exporter: {line}", file=sys.stderr)
        return error.code
    finally:
        client.close()


def _datasets(client: ExportClient, args: argparse.Namespace) -> None:
    if args.datasets_command == "show":
        doc = client.dataset(args.name)
        print(json.dumps(doc, indent=2) if args.json else describe_dataset(doc))
        return
    found = client.datasets()
    if args.json:
        print(json.dumps({"datasets": found}, indent=2))
    elif not found:
        print("the service exports no dataset")
    else:
        print("\n\n".join(describe_dataset(doc) for doc in found))


def describe_dataset(doc: dict[str, Any]) -> str:
    """A dataset of ``GET /datasets`` as a reader wants it: what it is, its key, whether
    an export of it resumes, and a line for each column: its type and its filters."""
    lines = [f"{doc['name']}: {doc['description']}" if doc["description"] else doc["name"]]
    how = "resumable" if doc["resumable"] else "not resumable (read in one statement)"
    lines.append(f"  {doc['source']}, key ({', '.join(doc['key'])}), {how}")
    filters: dict[str, list[str]] = doc["filters"]
    rows = [("column", "type", "filters")]
    rows += [(c["name"], c["type"], " ".join(filters.get(c["name"], []))) for c in doc["columns"]]
    name_width = max(len(row[0]) for row in rows)
    type_width = max(len(row[1]) for row in rows)
    for name, kind, ops in rows:
        lines.append(f"  {name:<{name_width}}  {kind:<{type_width}}  {ops}".rstrip())
    names = [c["name"] for c in doc["columns"]]
    if doc["defaultColumns"] != names:
        lines.append(f"  default columns: {', '.join(doc['defaultColumns'])}")
    if doc["params"]:
        params = ", ".join(f"{name} ({kind})" for name, kind in doc["params"].items())
        lines.append(f"  parameters (--param NAME=VALUE, each required): {params}")
    if doc.get("maxRows"):
        lines.append(f"  at most {doc['maxRows']:,} rows an export")
    return "\n".join(lines)


def _summary(doc: dict[str, Any]) -> str:
    progress = doc["progress"]
    line = (
        f"{doc['exportId']} {doc['status']} {progress['percentage']}% "
        f"({progress['processedRows']:,} rows, {progress['bytesWritten']:,} bytes)"
    )
    return f"{line}: {doc['error']}" if doc.get("error") else line


def _export(client: ExportClient, args: argparse.Namespace) -> int:
    from tqdm import tqdm  # here: status and cancel start without it

    target: Path = args.output
    try:
        wanted = export_target(args)
    except OptionError as error:
        raise ClientError(str(error), EXIT_REFUSED) from None
    dataset, params = wanted.dataset, wanted.params
    export_id = resumable_export(target, args.url, params, args.gzip, dataset)
    if export_id is not None:
        try:
            status = client.status(export_id)["status"]
        except ClientError:
            status = None
        # Still going, or done: its file is the one the part was downloaded from.
        usable = status in LIVE_STATUSES or status == ExportStatus.COMPLETED
        if usable:
            print(f"exporter: continuing export {export_id}", file=sys.stderr)
        else:
            export_id = None
    if export_id is None:
        forget_export(target)  # whatever was there belongs to no export we can continue
        export_id = client.start(params, dataset)
        remember_export(target, args.url, params, args.gzip, export_id, dataset)
        print(f"exporter: started export {export_id}", file=sys.stderr)
    try:
        final = _watch(client, export_id)
        if final["status"] != ExportStatus.COMPLETED:
            forget_export(target)
            reason = final.get("error") or "no reason given"
            raise ClientError(f"export {export_id} {final['status']}: {reason}", EXIT_FAILED)
        with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="downloading") as bar:

            def on_bytes(count: int, total: int | None) -> None:
                if total is not None:  # the start: bytes already there, and the whole size
                    bar.reset(total=total)
                bar.update(count)

            size = client.download(
                export_id, target, gzip=args.gzip, on_bytes=on_bytes, limit_rate=args.limit_rate
            )
    except KeyboardInterrupt:
        return _interrupted(client, export_id, target, args.cancel_on_interrupt)
    print(f"{target} {size} bytes, export {export_id}")
    return 0


def _watch(client: ExportClient, export_id: str) -> dict[str, Any]:
    from tqdm import tqdm

    with tqdm(unit=" rows", unit_scale=True, desc="exporting") as bar:

        def on_progress(doc: dict[str, Any]) -> None:
            progress = doc["progress"]
            if progress["totalRows"] and bar.total != progress["totalRows"]:
                bar.total = progress["totalRows"]
            bar.update(progress["processedRows"] - bar.n)
            bar.set_postfix_str(doc["status"], refresh=False)

        return client.follow(export_id, on_progress)


def _interrupted(client: ExportClient, export_id: str, target: Path, cancel: bool) -> int:
    if not cancel and sys.stdin.isatty():
        try:
            answer = input(f"\nCancel export {export_id} on the server? [y/N] ")
        except (EOFError, KeyboardInterrupt):
            answer = ""
        cancel = answer.strip().lower() in ("y", "yes")
    if cancel:
        try:
            client.cancel(export_id)
        except ClientError as error:
            print(f"exporter: could not cancel {export_id}: {error}", file=sys.stderr)
            return EXIT_INTERRUPTED
        forget_export(target)
        print(f"exporter: interrupted; export {export_id} cancelled", file=sys.stderr)
    else:
        print(
            f"exporter: interrupted; export {export_id} goes on: run the same command to continue",
            file=sys.stderr,
        )
    return EXIT_INTERRUPTED
