"""Checking what users hand in, a task list or the ids of a session, before any I/O."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from . import protocol
from .errors import HTCGridError, TaskValidationError

#: Most tasks in one session. Larger lists are split with ``GridClient.map``.
MAX_TASKS_PER_SESSION = 100_000
#: Largest task definition, as JSON, in bytes (inputs travel through the data plane).
MAX_TASK_BYTES = 1024 * 1024


def validate_tasks(tasks: object) -> list[dict[str, Any]]:
    """Return the tasks as a list of dicts, or raise a ``TaskValidationError`` naming the fault.

    A task is a JSON-serialisable dict (e.g. ``{"worker_arguments": ["1000", "1", "1"]}``);
    a session holds 1 to ``MAX_TASKS_PER_SESSION`` of them, each at most ``MAX_TASK_BYTES``
    as JSON.
    """
    if isinstance(tasks, (str, bytes, Mapping)) or not isinstance(tasks, Sequence):
        raise TaskValidationError(
            f"tasks must be a list of dicts, not {type(tasks).__name__}; e.g. "
            '[{"worker_arguments": ["1000", "1", "1"]}]'
        )
    if not tasks:
        raise TaskValidationError("the task list is empty: give at least one task")
    if len(tasks) > MAX_TASKS_PER_SESSION:
        raise TaskValidationError(
            f"{len(tasks)} tasks is more than the {MAX_TASKS_PER_SESSION} one session may "
            "hold: split the list into several sessions"
        )
    checked = []
    for index, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise TaskValidationError(
                f"task {index} is a {type(task).__name__}, not a dict: each task is a dict "
                'such as {"worker_arguments": ["1000", "1", "1"]}'
            )
        try:
            text = json.dumps(task, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TaskValidationError(
                f"task {index} cannot be sent as JSON ({exc}): use str, int, float, bool, "
                "None, lists and dicts with string keys"
            ) from None
        if len(text.encode("utf-8")) > MAX_TASK_BYTES:
            raise TaskValidationError(
                f"task {index} is {len(text.encode('utf-8'))} bytes as JSON, over the "
                f"{MAX_TASK_BYTES} byte limit: put large data in S3 and pass its key instead"
            )
        checked.append(dict(task))
    return checked


def check_number(name: str, value: object, *, minimum: float = 0) -> None:
    """Raise ``TaskValidationError`` unless ``value`` is a finite number above ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TaskValidationError(f"{name} must be a number, not {value!r}")
    if value < minimum:
        raise TaskValidationError(f"{name} must be at least {minimum}, not {value!r}")


def check_options(retries: object, timeout_sec: object) -> None:
    """Check a session's retry bound and per-task time limit before anything is sent."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise TaskValidationError(f"retries must be a whole number >= 0, not {retries!r}")
    if isinstance(timeout_sec, bool) or not isinstance(timeout_sec, int) or timeout_sec < 1:
        raise TaskValidationError(
            f"the task timeout must be a whole number of seconds >= 1, not {timeout_sec!r}"
        )


def checked_session_id(session_id: object) -> str:
    """A session id handed in by a user, checked; session ids become data-plane keys."""
    try:
        return protocol.check_session_id(session_id)
    except ValueError as exc:
        raise TaskValidationError(str(exc)) from None


def checked_task_ids(session_id: str, ids: object) -> list[str]:
    """A list of task ids handed in by a user, each checked to be a task of ``session_id``."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TaskValidationError(f"task_ids must be a list of task ids, not {ids!r:.80}")
    try:
        return protocol.check_session_tasks(session_id, ids)
    except ValueError as exc:
        raise TaskValidationError(str(exc)) from None


def payload_task_ids(session_id: str, envelope: object) -> list[str]:
    """The task ids that a session's envelope (its payload) lists, checked."""
    tasks_list = envelope.get("tasks_list") if isinstance(envelope, Mapping) else None
    ids = tasks_list.get("tasks") if isinstance(tasks_list, Mapping) else None
    if not isinstance(ids, list):
        raise HTCGridError(f"the payload of session {session_id} lists no tasks")
    return checked_task_ids(session_id, ids)
