"""htcgrid: drive HTC-Grid from a notebook, against AWS or an embedded grid on this machine."""

from __future__ import annotations

import logging

from .client import GridClient, SessionNotFoundError, connect
from .config import GridConfig, load_config
from .connector import AWSConnector
from .errors import (
    APIError,
    AuthenticationError,
    ConfigError,
    DataPlaneError,
    GridUnreachableError,
    HTCGridError,
    LocalGridError,
    SubmissionUncertainError,
    TaskValidationError,
)
from .session import Session, SessionTimeoutError, TaskFailuresError

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AWSConnector",
    "AuthenticationError",
    "ConfigError",
    "DataPlaneError",
    "GridClient",
    "GridConfig",
    "GridUnreachableError",
    "HTCGridError",
    "LocalGridError",
    "Session",
    "SessionNotFoundError",
    "SessionTimeoutError",
    "SubmissionUncertainError",
    "TaskFailuresError",
    "TaskValidationError",
    "connect",
    "load_config",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
