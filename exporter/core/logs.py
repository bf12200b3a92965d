"""Logging: readable text, or one JSON object a line (``LOG_FORMAT=json``).

JSON lines are made by python-json-logger from the standard ``logging`` records, so
every module logs the usual way; fields given as ``extra=`` (``export_id``, ``rows``,
``bytes``, ``duration_s``, ``error``, ``event``) become keys. Hypercorn's access log goes
through the logger ``exporter.access`` and gets its request's facts as keys too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from pythonjsonlogger.json import JsonFormatter

__all__ = ["AccessFields", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Hypercorn's access-log atoms (hypercorn.logging.AccessLogAtoms) kept as JSON keys.
ACCESS_ATOMS = {
    "h": "remote",
    "m": "method",
    "U": "path",
    "q": "query",
    "H": "protocol",
    "s": "status",
    "b": "response_bytes",
    "a": "user_agent",
    "L": "duration_s",
}


class AccessFields(logging.Filter):
    """Lifts Hypercorn's access-log atoms into the record, as keys for the JSON line."""

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if isinstance(atoms, Mapping):
            for atom, key in ACCESS_ATOMS.items():
                value: Any = atoms.get(atom)
                if key == "status" and isinstance(value, str) and value.isdigit():
                    value = int(value)
                elif key == "duration_s" and value is not None:
                    value = float(value)
                elif key == "response_bytes" and value in ("-", None):
                    value = None
                setattr(record, key, value)
            record.event = "http.request"
        return True


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Send every log line to stderr in ``log_format`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                datefmt="%Y-%m-%dT%H:%M:%S%z",
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    access = logging.getLogger("exporter.access")
    if not any(isinstance(f, AccessFields) for f in access.filters):
        access.addFilter(AccessFields())
