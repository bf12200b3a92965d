"""Every error the service raises on purpose, and what the HTTP API answers for each (pure).

The whole hierarchy, in one place::

    ExporterError
    ├── SettingsError          an environment variable holds a value the service cannot use
    ├── RequestInvalid         an export request was rejected (400, every wrong parameter)
    ├── ExportNotFound         no export has this id (404)
    ├── DatasetNotFound        no dataset has this name (404)
    ├── QueueFull              too many exports wait already, in every process (429)
    ├── QueueError             a statement of the job queue failed (500)
    │   └── QueueUnavailable   the job database cannot be reached (503)
    │       └── NotReady       ... or has not been reached since the start (503)
    ├── CannotResume           a partial file is not what its checkpoint says (never answered:
    │                          the job starts over)
    ├── TooManyRows            an export passed its dataset's max_rows (the export's error)
    └── ExportStoreError       the export store failed or refused (503; an export's error)

``ANSWERS`` is the one table from error to HTTP answer; ``exporter.http.app`` reads it and
nothing else decides an error's status. Errors that are not in it (a bug, a library's)
answer 500 with no detail.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "ANSWERS",
    "Answer",
    "CannotResume",
    "DatasetNotFound",
    "ExportNotFound",
    "ExportStoreError",
    "ExporterError",
    "FieldError",
    "NotReady",
    "QueueError",
    "QueueFull",
    "QueueUnavailable",
    "RequestInvalid",
    "SettingsError",
    "TooManyRows",
    "answer_for",
]


class ExporterError(Exception):
    """The root of the service's own errors."""


class SettingsError(ExporterError, ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclasses.dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one parameter of a request: its name and what was wrong."""

    param: str
    message: str


class RequestInvalid(ExporterError, ValueError):
    """The request was rejected; ``errors`` says why, one entry per problem."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.param}: {e.message}" for e in errors))
        self.errors = errors


class ExportNotFound(ExporterError):
    """No export has this id."""

    def __init__(self, export_id: object) -> None:
        super().__init__(f"there is no export with id {str(export_id)!r}")


class DatasetNotFound(ExporterError):
    """No dataset of this name is declared."""

    def __init__(self, name: str) -> None:
        super().__init__(f"there is no dataset {name[:60]!r}; GET /datasets lists them")


class QueueFull(ExporterError):
    """``MAX_QUEUED_EXPORTS`` jobs wait already, in all the processes together."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} exports are already waiting; try again later")


class QueueError(ExporterError):
    """A statement of the job queue failed (the database refused it)."""


class QueueUnavailable(QueueError):
    """The job database cannot be reached (down, unreachable, or the connection broke)."""


class NotReady(QueueUnavailable):
    """The job database has not been reached since the start (answered like any other
    unreachable database)."""


class CannotResume(ExporterError):
    """An earlier attempt's partial file is missing or shorter than its checkpoint says."""


class TooManyRows(ExporterError):
    """An export holds more rows than its dataset's ``max_rows``."""

    def __init__(self, max_rows: int) -> None:
        super().__init__(
            f"the export has more than {max_rows:,} rows, the most its dataset allows;"
            " narrow it with filters"
        )
        self.max_rows = max_rows


class ExportStoreError(ExporterError, OSError):
    """The export store failed or refused; the message is a sentence naming the store."""


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """What the API answers for an error: its status and title, and its detail (None: the
    error's own message, which is written for users)."""

    status: int
    title: str
    detail: str | None = None
    retry_later: bool = False  # 429 and 503: with Retry-After


ANSWERS: dict[type[ExporterError], Answer] = {
    RequestInvalid: Answer(400, "Invalid export request"),
    ExportNotFound: Answer(404, "Export not found"),
    DatasetNotFound: Answer(404, "Dataset not found"),
    QueueFull: Answer(429, "Too many exports queued", retry_later=True),
    # The driver's message may name hosts and users: the client gets a sentence instead.
    QueueUnavailable: Answer(
        503,
        "Database unavailable",
        "the job database cannot be reached; try again shortly",
        retry_later=True,
    ),
    ExportStoreError: Answer(503, "Export store unavailable", retry_later=True),
}


def answer_for(error: BaseException) -> Answer | None:
    """The table's answer for ``error`` (or for the nearest of its classes in it)."""
    for cls in type(error).__mro__:
        found = ANSWERS.get(cls)
        if found is not None:
            return found
    return None
