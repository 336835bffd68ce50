"""The gateway's view of the sessions it accepted: queue feeding and fast /result answers.

moto's SQS takes time in proportion to the messages a queue holds, and a query of a DynamoDB
index reads the whole table, so a grid that queued every task at /submit and answered /result
with an index query would slow down as sessions grow. Instead:

- /submit writes every task's row (pending) and hands the session to the dispatcher, which
  queues the tasks as the agents drain the queue, keeping it between a low and a high mark;
  sessions of higher priority go first, then older sessions. A task not yet queued is pending
  in the state table like any other, and nothing but the dispatcher can take it.
- /result reads by key only the tasks that were queued and have not ended; a task that ended
  never changes again, so its state is kept in memory from then on.

The state table stays the one source of truth: agents, the checker and cancel requests change
it with conditional writes, and the dispatcher only reads it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import protocol
from .statetable import StateTable, pending_row
from .taskqueue import TaskQueue

logger = logging.getLogger(__name__)

#: The dispatcher tops the queue up to HIGH_WATER messages when it falls under LOW_WATER:
#: enough for a few agents taking batches of ten, few enough that reading the queued tasks'
#: rows for /result stays cheap.
LOW_WATER = 15
HIGH_WATER = 30
#: How often the dispatcher looks at the queue's depth while it has tasks to queue.
FEED_PERIOD_SEC = 0.1
#: /result re-reads a session's running tasks at most this often, and at most a fifth of the
#: time (a read of many rows costs moto a while); answers in between are built from what was
#: read last.
REFRESH_PERIOD_SEC = 0.1
#: A refresh time older than any wait: ``time.monotonic()`` counts from boot, so 0.0 is not.
NEVER = float("-inf")
REFRESH_LOAD_FACTOR = 5
_sequence = itertools.count()


def task_details(row: Mapping[str, Any], state: str) -> dict[str, Any]:
    """The per-task entry of a /result answer, from a state-table row."""

    def _ms(key: str) -> int | None:
        value = row.get(key) or 0
        return int(value) if value else None

    owner = row.get(protocol.TASK_OWNER)
    return {
        protocol.TASK_INFO_STATUS: state,
        protocol.TASK_INFO_RETRIES: int(row.get(protocol.RETRIES, 0)),
        protocol.TASK_INFO_SUBMITTED_MS: _ms(protocol.SUBMISSION_TIMESTAMP),
        protocol.TASK_INFO_STARTED_MS: _ms(protocol.START_TIMESTAMP),
        protocol.TASK_INFO_FINISHED_MS: _ms(protocol.TASK_COMPLETION_TIMESTAMP),
        protocol.TASK_INFO_AGENT: None if owner in (None, protocol.NO_OWNER) else owner,
    }


@dataclass
class TrackedSession:
    """A session the dispatcher feeds and answers for."""

    session_id: str
    task_ids: list[str]
    priority: int
    row_fields: dict[str, Any]
    stats: dict[str, Any]
    order: int = field(default_factory=lambda: next(_sequence))
    #: Tasks before this position have been handed to the queue (or cancelled before).
    queued: int = 0
    #: Tasks handed to the queue that it refused; they are sent again first.
    unsent: list[str] = field(default_factory=list)
    #: Details of the tasks that ended; they never change again.
    ended: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Details of queued tasks that had not ended when last read.
    running: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: When the last refresh began (``time.monotonic()``); :data:`NEVER` forces the next.
    refreshed_at: float = NEVER
    #: How long the last refresh took, which paces the next.
    refresh_cost: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rows(self, ids: list[str]) -> list[dict[str, Any]]:
        return [pending_row(task_id, self.session_id, **self.row_fields) for task_id in ids]


class Dispatcher:
    """Feeds the accepted sessions' tasks to the queue and follows their states."""

    def __init__(self, table: StateTable, queue: TaskQueue) -> None:
        self.table = table
        self.queue = queue
        self._sessions: dict[str, TrackedSession] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # /submit and the dispatcher's thread both feed; one at a time, or both would read
        # the same depth and fill the queue twice over.
        self._feeding = threading.Lock()

    def add(self, session: TrackedSession) -> None:
        """Take a session whose rows are written; its tasks will be queued."""
        with self._lock:
            self._sessions[session.session_id] = session
        self.wake()

    def wake(self) -> None:
        """End the current pause of :meth:`run` now (to feed at once, or to stop)."""
        self._wake.set()

    def get(self, session_id: str) -> TrackedSession | None:
        with self._lock:
            return self._sessions.get(session_id)

    # --- feeding the queue -----------------------------------------------------------------

    def _waiting(self) -> list[TrackedSession]:
        with self._lock:
            sessions = [
                s for s in self._sessions.values() if s.unsent or s.queued < len(s.task_ids)
            ]
        return sorted(sessions, key=lambda s: (-s.priority, s.order))

    def feed_once(self) -> int:
        """Top the queue up if it is low; return the number of messages sent.

        A task the queue refused is sent again first on the next round.
        """
        with self._feeding:
            waiting = self._waiting()
            if not waiting:
                return 0
            depth = self.queue.approximate_depth()
            if depth >= LOW_WATER:
                return 0
            room = HIGH_WATER - depth
            sent = 0
            for session in waiting:
                with session.lock:
                    take = session.unsent[: room - sent]
                    del session.unsent[: len(take)]
                    start = session.queued
                    fresh = session.task_ids[start : start + room - sent - len(take)]
                    session.queued += len(fresh)
                    take += fresh
                if not take:
                    continue
                failed = self.queue.send(session.rows(take), session.stats)
                if failed:
                    logger.warning(
                        "could not queue %d tasks of session %s; trying again",
                        len(failed),
                        session.session_id,
                    )
                    with session.lock:
                        session.unsent.extend(failed)
                sent += len(take) - len(failed)
                if sent >= room or failed:
                    break
            return sent

    def run(self, stop: threading.Event) -> None:
        """Feed the queue until ``stop`` is set."""
        while not stop.is_set():
            try:
                sent = self.feed_once()
            except Exception:
                logger.exception("queue feeding failed; trying again")
                sent = 0
                stop.wait(1.0)
            if sent == 0:
                self._wake.wait(FEED_PERIOD_SEC if self._waiting() else 1.0)
                self._wake.clear()

    # --- following sessions ----------------------------------------------------------------

    def refresh(self, session: TrackedSession) -> None:
        """Read the session's queued tasks that had not ended (by key, not by index)."""
        now = time.monotonic()
        with session.lock:
            wait = max(REFRESH_PERIOD_SEC, REFRESH_LOAD_FACTOR * session.refresh_cost)
            if now - session.refreshed_at < wait:
                return
            ids = [t for t in session.task_ids[: session.queued] if t not in session.ended]
            session.refreshed_at = now
        rows = self.table.get_many(ids)
        with session.lock:
            session.refresh_cost = time.monotonic() - now
            for task_id, row in rows.items():
                state = protocol.state_of(row[protocol.TASK_STATUS])
                details = task_details(row, state)
                if state in protocol.TERMINAL_STATES:
                    session.ended[task_id] = details
                    session.running.pop(task_id, None)
                else:
                    session.running[task_id] = details

    def answer(self, session: TrackedSession) -> dict[str, Any]:
        """The /result answer of a session, from the last refresh."""
        by_state: dict[str, list[str]] = {state: [] for state in protocol.STATES}
        details: dict[str, dict[str, Any]] = {}
        with session.lock:
            for task_id in session.task_ids:
                entry = session.ended.get(task_id) or session.running.get(task_id)
                if entry is None:
                    by_state[protocol.PENDING].append(task_id)
                    continue
                by_state[entry[protocol.TASK_INFO_STATUS]].append(task_id)
                details[task_id] = entry
        counts = {state: len(ids) for state, ids in by_state.items()}
        return protocol.results_answer(
            by_state, {protocol.COUNTS_FIELD: counts, protocol.TASKS_FIELD: details}
        )

    def take_unqueued(self, session: TrackedSession) -> tuple[list[str], list[str]]:
        """Stop queueing a session; return its tasks never handed to the queue, and those
        the queue refused (a refused batch may have gone through in part after all)."""
        with session.lock:
            left = session.task_ids[session.queued :]
            refused, session.unsent = session.unsent, []
            session.queued = len(session.task_ids)
        return left, refused

    def give_back_unqueued(self, session: TrackedSession, ids: list[str]) -> None:
        """Queue again tasks taken by :meth:`take_unqueued` that could not be cancelled."""
        with session.lock:
            session.unsent.extend(ids)

    def mark_cancelled(self, session: TrackedSession, ids: list[str], ended_ms: int) -> None:
        with session.lock:
            for row in session.rows(ids):
                row[protocol.TASK_COMPLETION_TIMESTAMP] = ended_ms
                session.ended[row[protocol.TASK_ID]] = task_details(row, protocol.CANCELLED)
            session.refreshed_at = NEVER
