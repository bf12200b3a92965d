"""What a user is told when an export fails: a sentence they can act on; no SQL, no stack
trace, no server paths."""

from __future__ import annotations

import errno

import trio_asyncio  # noqa: F401  (before psycopg: see exporter.jobs.postgres_queue)
import psycopg

from exporter.core.datasets import DatasetError
from exporter.core.errors import ExportStoreError, QueueError, TooManyRows

__all__ = ["describe_error", "gave_up_error"]


def gave_up_error(attempts: int) -> str:
    """Why a job that was interrupted ``attempts`` times is not tried again."""
    return (
        f"the export was interrupted {attempts} times (the process running it stopped"
        " without handing it back); not trying again"
    )


def describe_error(exc: BaseException) -> str:
    """The sentence a failed export's status shows for ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, QueueError) and exc.__cause__ is not None:
        exc = exc.__cause__  # the job database's own error says more
    if isinstance(exc, ExportStoreError | TooManyRows):
        return str(exc)  # a sentence for users already
    if isinstance(exc, DatasetError):
        return f"the export's dataset cannot be read: {exc.problems[0].message}"
    if isinstance(exc, OSError) and not isinstance(exc, psycopg.Error):
        if exc.errno == errno.ENOSPC:
            return "no space left on the device holding the export files"
        return f"could not write the export file: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, psycopg.errors.AdminShutdown):
        return "the database ended the export's connection (terminated by an administrator)"
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return "the export's query was cancelled on the database server"
    if isinstance(exc, psycopg.OperationalError):
        return "the connection to the database failed or was lost during the export"
    if isinstance(exc, psycopg.Error) and (exc.diag.message_primary or str(exc)):
        # (An error of the COPY reader's connection carries its message, not a diag.)
        return f"the database reported an error: {exc.diag.message_primary or exc}"
    return "the export failed because of an internal error; the server log has the details"
