"""htcgrid: drive HTC-Grid from a notebook, against AWS or an embedded grid on this machine.

The public names are imported on first use, so that the embedded grid's agent and gateway
processes, which import only ``htcgrid.local``, do not pay for pandas and the notebook layer.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AWSConnector": ".connector",
    "GridClient": ".client",
    "SessionNotFoundError": ".client",
    "connect": ".client",
    "GridConfig": ".config",
    "load_config": ".config",
    "Session": ".session",
    "SessionTimeoutError": ".session",
    "TaskFailuresError": ".session",
    "APIError": ".errors",
    "AuthenticationError": ".errors",
    "ConfigError": ".errors",
    "DataPlaneError": ".errors",
    "GridUnreachableError": ".errors",
    "HTCGridError": ".errors",
    "LocalGridError": ".errors",
    "SubmissionUncertainError": ".errors",
    "TaskValidationError": ".errors",
}

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

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'htcgrid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


logging.getLogger(__name__).addHandler(logging.NullHandler())
