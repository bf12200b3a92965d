"""The database schema, read from ``seeds/init.sql`` (the one source of truth), and seeding.

``init.sql`` is split at its ``-- section: NAME`` lines. On start the service runs the
``schema`` and ``indexes`` sections (idempotent); seeding calls the ``exporter_seed_users``
function that the schema section defines, a batch at a time, so the rows are generated
inside PostgreSQL and a progress bar can follow them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import psycopg

__all__ = ["apply_schema", "count_users", "init_sql_path", "init_sql_sections", "seed_users"]

_SECTION = re.compile(r"^-- section: (\w+)\s*$", re.MULTILINE)
SEED_BATCH_ROWS = 250_000


def init_sql_path() -> Path:
    """Where init.sql is: inside an installed wheel, or in the source tree's seeds/."""
    packaged = Path(__file__).with_name("init.sql")
    if packaged.exists():
        return packaged
    return Path(__file__).resolve().parents[2] / "seeds" / "init.sql"


def init_sql_sections(text: str | None = None) -> dict[str, str]:
    """init.sql's sections by name, each the SQL up to the next marker."""
    if text is None:
        text = init_sql_path().read_text(encoding="utf-8")
    parts = _SECTION.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    sections = {name: body for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    missing = {"schema", "seed", "indexes"} - sections.keys()
    if missing:
        raise RuntimeError(f"init.sql lacks the section marker(s): {', '.join(sorted(missing))}")
    return sections


def apply_schema(conninfo: str, *names: str) -> None:
    """Run init.sql's named sections (default: schema, then indexes). Safe to repeat.

    A first start runs ``schema``, seeds, then ``indexes``: building an index once over
    10M rows is far quicker than keeping it up to date through the inserts.
    """
    sections = init_sql_sections()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # Two services starting at once against one database must not both run the DDL.
        conn.execute("SELECT pg_advisory_lock(hashtext('exporter.schema'))")
        try:
            for name in names or ("schema", "indexes"):
                conn.execute(sections[name].encode())
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('exporter.schema'))")


def count_users(conninfo: str) -> int:
    """How many rows ``users`` holds."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM users").fetchone()
        assert row is not None
        return int(row[0])


def seed_users(
    conninfo: str,
    rows: int,
    *,
    progress: Callable[[int], None] | None = None,
    batch_rows: int = SEED_BATCH_ROWS,
) -> int:
    """Fill users up to ``rows`` rows (continuing an interrupted seed); returns rows added.

    Each batch commits on its own, so an interrupted seed keeps what it made and the next
    start carries on from there. ``progress`` is called with the rows of each batch.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM users").fetchone()
        assert row is not None
        have = int(row[0])
        if progress is not None and have:
            progress(min(have, rows))
        first = have + 1
        while first <= rows:
            last = min(first + batch_rows - 1, rows)
            conn.execute("SELECT exporter_seed_users(%s, %s)", (first, last))
            if progress is not None:
                progress(last - first + 1)
            first = last + 1
        if rows > have:
            conn.execute("ANALYZE users")
        return max(rows - have, 0)
