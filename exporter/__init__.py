"""exporter: PostgreSQL rows to CSV files in the background, served fast and resumably.

Kept free of imports: the command-line client (``exporter.client``) must load without the
server stack. The server's modules that need trio-asyncio before psycopg import it
themselves (see ``exporter.jobs.postgres_queue``).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # The version, from the installed package's metadata (pyproject.toml states it once);
    # read when asked for, since reading metadata costs every command's start-up.
    if name == "__version__":
        import importlib.metadata

        return importlib.metadata.version("exporter")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
