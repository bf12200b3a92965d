"""The export's own database connection: PostgreSQL's text output, in one snapshot.

``SESSION_SETTINGS`` are what every connection that reads rows for an export (or for the
COPY oracle it is compared with) sets, so that the text of a value never depends on the
server's configuration.
"""

from __future__ import annotations

from typing import Any

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.jobs.postgres_queue)
import psycopg
from psycopg.adapt import AdaptersMap
from psycopg.rows import tuple_row
from psycopg.types.string import TextLoader

__all__ = ["SESSION_SETTINGS", "TEXT_ADAPTERS", "libpq_options", "open_text_connection"]

# UTC and ISO dates make the text of timestamps independent of the server's settings; no
# statement timeout: an export's statements run for as long as it does. An export reads
# every row its cursor has: planned for all of them, as COPY's statement is (the default,
# 0.1, picks plans quick to their first rows, such as a nested loop over a join).
SESSION_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO,MDY",
    "statement_timeout": "0",
    "cursor_tuple_fraction": "1",
}


def libpq_options(settings: dict[str, str] = SESSION_SETTINGS) -> str:
    """``settings`` as libpq's ``options`` parameter: ``-c TimeZone=UTC -c ...``."""
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def _text_adapters() -> AdaptersMap:
    """Adapters that hand back every value as PostgreSQL's text output, untouched.

    With the connection's client encoding at SQL_ASCII (see ``open_text_connection``), psycopg's C
    text loader returns the bytes as they came from the server: no parsing into
    datetimes or Decimals and back, no decoding and re-encoding. Those bytes are exactly
    what COPY would write for the value.
    """
    adapters = AdaptersMap(psycopg.adapters)
    for info in psycopg.adapters.types:
        for oid in (info.oid, info.array_oid):
            if oid:
                adapters.register_loader(oid, TextLoader)
    return adapters


TEXT_ADAPTERS = _text_adapters()


def open_text_connection(conninfo: str, application_name: str) -> psycopg.Connection[Any]:
    """A connection whose rows are tuples of PostgreSQL's text output, as bytes."""
    conn = psycopg.connect(
        conninfo,
        autocommit=False,  # a server-side cursor lives in a transaction
        context=TEXT_ADAPTERS,
        row_factory=tuple_row,
        application_name=application_name,
        connect_timeout=10,
        options=libpq_options(),
        # SQL_ASCII makes the server send its UTF-8 bytes unconverted.
        client_encoding="SQL_ASCII",
    )
    # Every range of ids of the export is read in this one transaction: one snapshot.
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    encoding = conn.info.parameter_status("server_encoding")
    if encoding != "UTF8":
        conn.close()
        raise RuntimeError(f"the database's encoding is {encoding!r}; exports need a UTF8 database")
    return conn
