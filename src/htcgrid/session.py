"""``Session``: a future-like handle on one submitted session of tasks.

A ``Session`` is a :class:`concurrent.futures.Future`, so ``concurrent.futures.wait`` and
``as_completed`` accept it and ``await session`` works in a notebook cell. Its result is a
pandas DataFrame with one row per task; failed tasks are rows, not an exception.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import protocol
from .errors import HTCGridError, SubmissionUncertainError
from .results import TaskRecord, decode_output, to_dataframe

if TYPE_CHECKING:
    from .client import GridClient

logger = logging.getLogger(__name__)


class SessionTimeoutError(HTCGridError, concurrent.futures.TimeoutError):
    """A wait on a session ended before every task did; says which tasks and how many."""

    def __init__(self, message: str, not_terminal: list[str], counts: dict[str, int]) -> None:
        super().__init__(message)
        self.not_terminal = not_terminal
        self.counts = counts


class TaskFailuresError(HTCGridError):
    """Raised by :meth:`Session.raise_for_failures`: some tasks failed or were cancelled."""

    def __init__(self, message: str, failed: dict[str, str]) -> None:
        super().__init__(message)
        self.failed = failed


class Session(concurrent.futures.Future):
    """A handle on a session of tasks, running on the grid.

    Made by :meth:`GridClient.submit` (or :meth:`GridClient.session` to reattach); not
    constructed directly. The future completes with the DataFrame of :meth:`result` when
    every task has ended; it fails only if the session could not be submitted or the grid
    could not be reached within the retry bound.

    Examples
    --------
    >>> session = client.submit([{"worker_arguments": ["1000", "1", "1"]}])  # doctest: +SKIP
    >>> session.status()  # doctest: +SKIP
    {'pending': 0, 'processing': 1, 'finished': 0, 'failed': 0, 'cancelled': 0, 'total': 1}
    >>> session.result()[["task_id", "status", "output"]]  # doctest: +SKIP
    """

    def __init__(
        self,
        client: GridClient,
        session_id: str,
        task_ids: Sequence[str],
        inputs: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self._client = client
        self.session_id = session_id
        self.task_ids: list[str] = list(task_ids)
        self._inputs = list(inputs) if inputs is not None else None
        self._records = [TaskRecord(t) for t in self.task_ids]
        self._index = {t: i for i, t in enumerate(self.task_ids)}
        self._lock = threading.RLock()
        self._fetched: set[str] = set()
        self.submitted_at = time.time()
        self.ended_at: float | None = None
        # Set while /submit's outcome is open: the error, and when to stop watching.
        self._unconfirmed: SubmissionUncertainError | None = None
        self._watch_until = 0.0

    # --- what the poller feeds in ----------------------------------------------------------

    def _apply(self, answer: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Take a /result answer in; return the finished and failed tasks to fetch.

        Each task is returned once: its output (or error) is then downloaded by the poller.
        """
        with self._lock:
            details = answer.get(protocol.TASKS_FIELD)
            if isinstance(details, Mapping):
                for task_id, detail in details.items():
                    position = self._index.get(task_id)
                    if position is not None and isinstance(detail, Mapping):
                        self._apply_detail(self._records[position], detail)
            for state, ids in protocol.terminal_ids(answer).items():
                for task_id in ids:
                    position = self._index.get(task_id)
                    if position is not None:
                        self._records[position].status = state
            finished: list[str] = []
            failed: list[str] = []
            for record in self._records:
                if record.task_id in self._fetched or not record.terminal:
                    continue
                if record.status == protocol.FINISHED:
                    finished.append(record.task_id)
                elif record.status == protocol.FAILED:
                    failed.append(record.task_id)
                self._fetched.add(record.task_id)
        return finished, failed

    @staticmethod
    def _apply_detail(record: TaskRecord, detail: Mapping[str, Any]) -> None:
        status = detail.get(protocol.TASK_INFO_STATUS)
        if status in protocol.STATES and not record.terminal:
            record.status = status
        retries = detail.get(protocol.TASK_INFO_RETRIES)
        if isinstance(retries, int):
            record.retries = retries
        agent = detail.get(protocol.TASK_INFO_AGENT)
        if agent and agent != protocol.NO_OWNER:
            record.agent = str(agent)
        for key, attr in (
            (protocol.TASK_INFO_SUBMITTED_MS, "submitted_ms"),
            (protocol.TASK_INFO_STARTED_MS, "started_ms"),
            (protocol.TASK_INFO_FINISHED_MS, "finished_ms"),
        ):
            value = detail.get(key)
            if isinstance(value, int) and value > 0:
                setattr(record, attr, value)

    def _store(self, outputs: Mapping[str, str | None], errors: Mapping[str, str | None]) -> None:
        with self._lock:
            for task_id, text in outputs.items():
                self._records[self._index[task_id]].output = text if text is not None else ""
            for task_id, text in errors.items():
                self._records[self._index[task_id]].error = text or "failed (no error text)"

    def _watch_unconfirmed(self, error: SubmissionUncertainError, seconds: float) -> None:
        """Follow a session whose /submit failed uncertainly, for ``seconds`` at most."""
        with self._lock:
            self._unconfirmed = error
            self._watch_until = time.monotonic() + seconds

    def _held_in(self, answer: Mapping[str, Any]) -> bool:
        """True if a /result answer shows that the grid holds this session."""
        counts = answer.get(protocol.COUNTS_FIELD)
        if isinstance(counts, Mapping) and any(
            isinstance(n, int) and n > 0 for n in counts.values()
        ):
            return True
        ended = protocol.terminal_ids(answer).values()
        return any(task_id in self._index for ids in ended for task_id in ids)

    def _not_terminal(self) -> list[str]:
        with self._lock:
            return [r.task_id for r in self._records if not r.terminal]

    def _all_terminal(self) -> bool:
        with self._lock:
            return all(r.terminal for r in self._records)

    def _finish(self) -> None:
        """Complete the future with the DataFrame (called by the poller)."""
        self.ended_at = time.time()
        frame = self.to_dataframe()
        if not self.done():
            self.set_result(frame)

    def _cancel_locally(self) -> None:
        """End a session that was never sent: every task is cancelled, nothing ran."""
        with self._lock:
            for record in self._records:
                record.status = protocol.CANCELLED
        self._finish()

    def _fail(self, exc: BaseException) -> None:
        self.ended_at = time.time()
        if not self.done():
            self.set_exception(exc)

    # --- the public API --------------------------------------------------------------------

    def status(self) -> dict[str, int]:
        """Counts of the session's tasks by state, plus ``total``.

        Against a real HTC-Grid, which reports only terminal tasks, every task not yet
        finished, failed or cancelled counts as ``pending``.
        """
        with self._lock:
            counts = dict.fromkeys(protocol.STATES, 0)
            for record in self._records:
                counts[record.status] += 1
        counts["total"] = len(self._records)
        return counts

    def outputs(self) -> list[Any]:
        """The tasks' outputs in task order (JSON decoded; ``None`` where not finished)."""
        with self._lock:
            return [
                decode_output(r.output) if r.status == protocol.FINISHED else None
                for r in self._records
            ]

    def to_dataframe(self) -> pd.DataFrame:
        """The DataFrame of the session as it stands now (also while it runs)."""
        with self._lock:
            records = [TaskRecord(**vars(r)) for r in self._records]
        return to_dataframe(records, self._client._inputs_of(self))

    def result(self, timeout: float | None = None) -> pd.DataFrame:
        """Wait for every task to end and return the session's DataFrame.

        Raises
        ------
        SessionTimeoutError
            ``timeout`` seconds passed first; it names the tasks not done and the counts.
        """
        try:
            return super().result(timeout)
        except concurrent.futures.TimeoutError:
            raise self._timeout_error(timeout) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except concurrent.futures.TimeoutError:
            raise self._timeout_error(timeout) from None

    def _timeout_error(self, timeout: float | None) -> SessionTimeoutError:
        return timeout_error([self], timeout)

    def running(self) -> bool:
        """True while the session is on the grid and not every task has ended."""
        return not self.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the session ends or ``timeout`` passes; True if it ended."""
        done, _ = concurrent.futures.wait([self], timeout=timeout)
        return bool(done)

    def cancel(self) -> bool:
        """Cancel the session's pending and running tasks on the grid.

        Finished tasks keep their outputs. The future then completes with the DataFrame, in
        which the cancelled tasks have the status ``cancelled``. Returns False if the session
        had already ended.
        """
        if self.done():
            return False
        self._client._cancel(self)
        return True

    def raise_for_failures(self) -> None:
        """Raise ``TaskFailuresError`` listing the failed and cancelled tasks, if any."""
        with self._lock:
            bad = {
                r.task_id: r.error or r.status
                for r in self._records
                if r.status in (protocol.FAILED, protocol.CANCELLED)
            }
        if bad:
            first = next(iter(bad.items()))
            last_line = first[1].strip().splitlines()[-1] if first[1].strip() else first[1]
            raise TaskFailuresError(
                f"session {self.session_id}: {len(bad)} of {len(self._records)} tasks failed "
                f"or were cancelled; first: {first[0]}: {last_line}",
                bad,
            )

    def progress(self) -> None:
        """Show a live progress bar of this session now (even where bars are off)."""
        self._client._show_progress([self], force=True)

    def __await__(self) -> Generator[Any, None, pd.DataFrame]:
        return asyncio.wrap_future(self).__await__()

    # --- display -------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return (self.ended_at or time.time()) - self.submitted_at

    def __repr__(self) -> str:
        state = "done" if self.done() else "unconfirmed" if self._unconfirmed else "running"
        return (
            f"<Session {self.session_id} {state}: {_counts_text(self.status())}, "
            f"{self._elapsed():.1f} s>"
        )

    def _repr_html_(self) -> str:
        from .display import session_html

        return session_html(self.session_id, self.status(), self.done(), self._elapsed())


def timeout_error(sessions: Sequence[Session], timeout: float | None) -> SessionTimeoutError:
    """The error of a wait on ``sessions`` that ended first: which tasks, and how many."""
    waiting = [task_id for session in sessions for task_id in session._not_terminal()]
    counts: dict[str, int] = {}
    for session in sessions:
        for state, n in session.status().items():
            counts[state] = counts.get(state, 0) + n
    shown = ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
    if len(sessions) == 1:
        what = f"session {sessions[0].session_id}"
        advice = "The session goes on running: wait again, or cancel() it."
    else:
        live = sum(not session.done() for session in sessions)
        what = f"{live} of {len(sessions)} sessions not done"
        advice = "The sessions go on running: wait again, or cancel() them."
    return SessionTimeoutError(
        f"{what}: {len(waiting)} of {counts.get('total', 0)} tasks not done after {timeout} s "
        f"({_counts_text(counts)}); not done: {shown}. {advice}",
        waiting,
        counts,
    )


def _counts_text(counts: Mapping[str, int]) -> str:
    parts = [f"{counts[s]} {s}" for s in protocol.STATES if counts.get(s)]
    return ", ".join(parts) or "no tasks"
