"""Example worker handlers, with the signature of an AWS Lambda function.

A handler is called as ``handler(event, context)``: ``event`` is the task's definition (the
JSON the client submitted) and ``context`` describes the attempt (task id, session id, agent id
and the time left). It returns a JSON-serialisable value, which becomes the task's output; an
exception it raises makes the attempt fail. The embedded grid names its handler in the
``local_worker_handler`` key of its configuration, as ``"module:function"``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

__all__ = ["mock_compute_engine"]


def mock_compute_engine(event: Mapping[str, Any], context: Any = None) -> int:
    """Sleep for the number of milliseconds a task asks for, and return that number.

    This is the mock compute engine of HTC-Grid's examples: a task
    ``{"worker_arguments": ["1000", "1", "1"]}`` takes one second and its output is ``1000``.
    Only the first argument is used; the others stand for the engine's real parameters.

    Parameters
    ----------
    event : mapping
        The task definition, ``{"worker_arguments": [milliseconds, ...]}``; the milliseconds
        are a non-negative integer, written as a string (as HTC-Grid's examples do) or a number.
    context : object, optional
        The attempt's context; unused.

    Returns
    -------
    int
        The number of milliseconds slept.

    Raises
    ------
    ValueError
        The task definition is not of that form.

    Examples
    --------
    >>> mock_compute_engine({"worker_arguments": ["10", "1", "1"]}, None)
    10
    """
    arguments = event.get("worker_arguments") if isinstance(event, Mapping) else None
    if not isinstance(arguments, (list, tuple)) or not arguments:
        raise ValueError(
            "mock_compute_engine expects a task definition like "
            f'{{"worker_arguments": ["1000", "1", "1"]}}, not {event!r}'
        )
    first = arguments[0]
    # bool is an int subclass, and float("1e3") is not an integer count of milliseconds.
    if isinstance(first, bool) or not isinstance(first, (str, int)):
        milliseconds = None
    else:
        try:
            milliseconds = int(first)
        except ValueError:
            milliseconds = None
    if milliseconds is None or milliseconds < 0:
        raise ValueError(
            "mock_compute_engine: worker_arguments[0] must be a non-negative whole number of "
            f"milliseconds such as '1000', not {first!r}"
        )
    time.sleep(milliseconds / 1000)
    return milliseconds
