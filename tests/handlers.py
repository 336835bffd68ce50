"""Task handlers for the tests; workers import them as ``handlers:<name>``.

``conftest.py`` puts this folder on ``PYTHONPATH``, so that spawned agents and workers find it.
"""

from __future__ import annotations

import os
import time
from typing import Any

#: A value the test handlers cannot turn into JSON.
NOT_JSON = {1, 2, 3}
#: Not a handler, though a handler spec may name it.
NOT_A_FUNCTION = 42


def echo(event: Any, context: Any) -> dict[str, Any]:
    """Return the task and the ids of the attempt's context."""
    return {
        "event": event,
        "task_id": context.task_id,
        "session_id": context.session_id,
        "agent_id": context.agent_id,
        "has_time_left": context.get_remaining_time_in_millis() > 0,
        "pid": os.getpid(),
    }


def raise_value_error(event: Any, context: Any) -> None:
    """Fail with a ValueError that names the task."""
    raise ValueError(f"bad task {event!r}")


def exit_abruptly(event: Any, context: Any) -> None:
    """End the worker process the hard way, with exit code ``event["code"]``."""
    os._exit(int(event["code"]))


def sleep(event: Any, context: Any) -> float:
    """Sleep ``event["seconds"]`` seconds and return them."""
    time.sleep(float(event["seconds"]))
    return float(event["seconds"])


def return_a_set(event: Any, context: Any) -> set[int]:
    """Return something JSON cannot hold."""
    return NOT_JSON


def act(event: Any, context: Any) -> Any:
    """Do what the task says, in order: sleep, exit, raise; then return ``event["return"]``.

    ``{"sleep": 0.5}`` sleeps half a second, ``{"exit": 3}`` ends the worker with exit code 3,
    ``{"raise": "boom"}`` raises ``RuntimeError("boom")``.
    """
    time.sleep(float(event.get("sleep", 0)))
    if "exit" in event:
        os._exit(int(event["exit"]))
    if "raise" in event:
        raise RuntimeError(event["raise"])
    return event.get("return")


def record_execution(event: Any, context: Any) -> Any:
    """Append the task id to the file ``event["record_to"]``, then sleep and return.

    Each attempt that starts leaves one line, so a test can count how often each task ran.
    ``{"sleep": 2}`` then sleeps two seconds; the task returns ``event.get("return")``.
    """
    # One short append per line: O_APPEND keeps lines of concurrent workers whole.
    with open(event["record_to"], "a", encoding="utf-8") as record:
        record.write(f"{context.task_id}\n")
    time.sleep(float(event.get("sleep", 0)))
    return event.get("return")


def record_attempt(event: Any, context: Any) -> Any:
    """Log the attempt's start and end in the file ``event["record_to"]``; act in between.

    An attempt that starts appends ``start <task id> <worker pid> <agent id>``; one whose
    handler returns appends ``end <task id>``, so a test can tell attempts that ran to their
    end from those that were stopped. In between it does what the task says, in order:
    ``{"sleep": 2}`` sleeps two seconds (``{"quick_first": 2}`` skips the sleep in the first
    two attempts the file logs, whichever tasks they are), ``{"exit": 3}`` ends the worker
    with exit code 3, ``{"raise": "boom"}`` raises ``RuntimeError("boom on attempt N")``;
    then it returns ``event.get("return")``.
    """
    record = event["record_to"]
    # One short append per line: O_APPEND keeps lines of concurrent workers whole, and the
    # offset after the write says how many lines were there before this one.
    with open(record, "ab") as log:
        log.write(f"start {context.task_id} {os.getpid()} {context.agent_id}\n".encode())
        log.flush()
        written = log.tell()
    with open(record, "rb") as log:
        before = log.read(written).splitlines()
    position = sum(line.startswith(b"start ") for line in before)
    if position > int(event.get("quick_first", 0)):
        time.sleep(float(event.get("sleep", 0)))
    if "exit" in event:
        os._exit(int(event["exit"]))
    if "raise" in event:
        mine = f"start {context.task_id} ".encode()
        attempt = sum(line.startswith(mine) for line in before)
        raise RuntimeError(f"{event['raise']} on attempt {attempt}")
    with open(record, "a", encoding="utf-8") as log:
        log.write(f"end {context.task_id}\n")
    return event.get("return")
