"""Exceptions of htcgrid; each message says what went wrong and what to do next."""

from __future__ import annotations


class HTCGridError(Exception):
    """Base class of every error htcgrid raises on purpose."""


class ConfigError(HTCGridError, ValueError):
    """The grid configuration is missing, unreadable, or lacks or mistypes a key."""


class TaskValidationError(HTCGridError, ValueError):
    """A task list was refused before anything was uploaded."""


class AuthenticationError(HTCGridError):
    """Signing in to the grid failed, or the grid refused the credentials."""


class GridUnreachableError(HTCGridError, ConnectionError):
    """The grid's API or its data plane could not be reached within the retry bound."""


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
    watch it with ``get_results``.
    """

    def __init__(self, message: str, session_id: str, task_ids: list[str]) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.task_ids = task_ids


class DataPlaneError(HTCGridError):
    """Reading or writing the data plane failed."""


class LocalGridError(HTCGridError):
    """The embedded grid could not start, or one of its processes failed."""
