"""Exceptions of htcgrid; each message says what went wrong and what to do next.

Also the one rule that tells a lost grid (an API or data plane that cannot be reached) from a
failed request, so that every layer reports the former as ``GridUnreachableError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError


class HTCGridError(Exception):
    """Base class of every error htcgrid raises on purpose."""


class ConfigError(HTCGridError, ValueError):
    """The grid configuration is missing, unreadable, or lacks or mistypes a key."""


class TaskValidationError(HTCGridError, ValueError):
    """A task list was refused before anything was uploaded."""


class AuthenticationError(HTCGridError):
    """Signing in to the grid failed, or the grid refused the credentials."""


class GridUnreachableError(HTCGridError, ConnectionError):
    """The grid's API or its data plane could not be reached within the retry bound.

    Attributes
    ----------
    session_id : str or None
        The session that was being submitted or followed, if any: once the grid is back,
        ``get_results(session_id)`` or ``client.session(session_id)`` picks it up again.
    """

    def __init__(self, message: str, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id


class APIError(HTCGridError):
    """The grid's API answered with an error status.

    Attributes
    ----------
    status : int
        The HTTP status code.
    body : str
        The text of the answer (truncated to 500 characters in the message).
    """

    def __init__(self, message: str, status: int, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class SubmissionUncertainError(HTCGridError):
    """/submit answered with an error, yet the grid may have accepted the session.

    A real HTC-Grid can answer an error after storing and queueing every task, so the session
    must not be submitted again under the same id. ``session_id`` and ``task_ids`` let the caller
    watch it with ``get_results`` or cancel it with ``cancel_sessions``; ``reason`` is how
    /submit failed (e.g. ``"HTTP 543: Batch write to SQS failed"``).
    """

    def __init__(
        self, message: str, session_id: str, task_ids: list[str], reason: str = ""
    ) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.task_ids = task_ids
        self.reason = reason


class DataPlaneError(HTCGridError):
    """Reading or writing the data plane failed."""


class LocalGridError(HTCGridError):
    """The embedded grid could not start, or one of its processes failed."""


def is_connection_failure(exc: BaseException) -> bool:
    """True when an error was caused by the connection to the grid, not by the request."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (BotoConnectionError, HTTPClientError, GridUnreachableError)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def unreachable_with_hint(session_id: str, hint: str) -> Iterator[None]:
    """Turn a lost grid, on the API or the data plane, into one ``GridUnreachableError``.

    Its message says that the grid is unreachable and ends with ``hint`` (how to pick the
    session up again); no urllib3 or botocore traceback is chained to it.
    """
    try:
        yield
    except GridUnreachableError as exc:
        if exc.session_id is not None:
            raise
        raise GridUnreachableError(f"{exc}. {hint}", session_id) from None
    except DataPlaneError as exc:
        if not is_connection_failure(exc):
            raise
        raise GridUnreachableError(
            f"the grid is unreachable: its data plane did not answer ({exc}). {hint}", session_id
        ) from None
