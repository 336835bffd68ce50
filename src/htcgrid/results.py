"""A session's task records as a pandas DataFrame, one row per task in submission order."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from . import protocol

#: Columns of a session's DataFrame before the ``input.`` columns, in this order.
COLUMNS = (
    "task_id",
    "status",
    "output",
    "error",
    "retries",
    "agent",
    "submitted_at",
    "started_at",
    "finished_at",
    "duration_s",
)
INPUT_PREFIX = "input."


@dataclass
class TaskRecord:
    """What the client knows of one task; updated by the poller."""

    task_id: str
    status: str = protocol.PENDING
    output: str | None = None
    error: str | None = None
    retries: int | None = None
    agent: str | None = None
    submitted_ms: int | None = None
    started_ms: int | None = None
    finished_ms: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in protocol.TERMINAL_STATES


def decode_output(text: str | None) -> Any:
    """Return the JSON value of an output text, or the text itself if it is not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _timestamp(ms: int | None) -> pd.Timestamp:
    if not ms:
        return pd.NaT
    return pd.Timestamp(int(ms), unit="ms", tz="UTC")


def _duration(record: TaskRecord) -> float:
    start = record.started_ms or record.submitted_ms
    if not start or not record.finished_ms or not record.terminal:
        return float("nan")
    return max(record.finished_ms - start, 0) / 1000.0


def to_dataframe(
    records: Sequence[TaskRecord], inputs: Sequence[Mapping[str, Any]] | None = None
) -> pd.DataFrame:
    """Build the DataFrame of a session.

    Parameters
    ----------
    records : list of TaskRecord
        The session's tasks in submission order.
    inputs : list of dict, optional
        The task definitions, flattened into ``input.``-prefixed columns (nested dicts become
        ``input.a.b``; lists stay whole in one cell).

    Examples
    --------
    >>> frame = to_dataframe([TaskRecord("S_0", "finished", output="1000")],
    ...                      [{"worker_arguments": ["1000", "1", "1"]}])
    >>> frame.loc[0, "output"], frame.loc[0, "input.worker_arguments"]
    (1000, ['1000', '1', '1'])
    """
    frame = pd.DataFrame(
        {
            "task_id": [r.task_id for r in records],
            "status": [r.status for r in records],
            "output": pd.Series([decode_output(r.output) for r in records], dtype=object),
            "error": [r.error or "" for r in records],
            "retries": pd.array([r.retries for r in records], dtype="Int64"),
            "agent": [r.agent for r in records],
            "submitted_at": pd.to_datetime([_timestamp(r.submitted_ms) for r in records]),
            "started_at": pd.to_datetime([_timestamp(r.started_ms) for r in records]),
            "finished_at": pd.to_datetime([_timestamp(r.finished_ms) for r in records]),
            "duration_s": [_duration(r) for r in records],
        },
        columns=list(COLUMNS),
    )
    if inputs is not None and len(inputs) == len(records) and len(records) > 0:
        flat = pd.json_normalize(list(inputs), sep=".", max_level=None)
        flat.columns = [INPUT_PREFIX + str(c) for c in flat.columns]
        frame = pd.concat([frame, flat], axis=1)
    frame.index.name = "task"
    return frame


def sessions_table(sessions: Sequence[Any]) -> pd.DataFrame:
    """One row per session: its id, task count, counts by state, whether it ended, when sent."""
    rows = []
    for session in sessions:
        counts = session.status()
        rows.append(
            {
                "session_id": session.session_id,
                "tasks": counts["total"],
                **{state: counts[state] for state in protocol.STATES},
                "done": session.done(),
                "submitted_at": pd.Timestamp(session.submitted_at, unit="s", tz="UTC"),
            }
        )
    columns = ["session_id", "tasks", *protocol.STATES, "done", "submitted_at"]
    return pd.DataFrame(rows, columns=columns)
