"""What /submit, /result and /cancel do on the state table, the queue and the data plane.

No HTTP here: :class:`GridHandlers` takes decoded arguments, returns the JSON-ready answer,
and raises a :class:`RequestError` subclass whose class tells the gateway the status to send.
The answers are those of a real HTC-Grid, with the improvements PROTOCOL.md allows: a session
id already in use is refused, cancelling never touches a finished task, and /result adds
per-state counts and per-task details. Tasks are queued by the :mod:`dispatcher` as agents
drain the queue, not all at /submit: see there why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from .. import protocol
from ..dataplane import DataPlane
from ..errors import HTCGridError
from .dispatcher import NEVER, Dispatcher, TrackedSession, task_details
from .statetable import StateTable, pending_row
from .taskqueue import TaskQueue

logger = logging.getLogger(__name__)

#: Concurrent state-table updates of one cancel request.
CANCEL_WORKERS = 8

_STAGE_INVOCATION = protocol.STATS_KEYS[2]
_STAGE_BEFORE_BATCH_WRITE = protocol.STATS_KEYS[3]


class RequestError(HTCGridError):
    """A request the grid refuses; the message is safe to send to the client."""


class InvalidRequestError(RequestError):
    """The request or the session's envelope is malformed (HTTP 400)."""


class UnknownSessionError(RequestError):
    """The state table holds no task of the session (HTTP 404)."""


class SessionExistsError(RequestError):
    """The session id was submitted before (HTTP 409)."""


class SubmitFailedError(RequestError):
    """The session could not be queued; nothing of it was kept (HTTP 543)."""


def _positive_int(value: object, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_envelope(session_id: str, envelope: object) -> dict[str, Any]:
    """Return the envelope's scheduling values if it is well formed, else raise.

    Parameters
    ----------
    session_id : str
        The id the client passed to /submit.
    envelope : object
        The decoded ``<session_id>-payload``.

    Returns
    -------
    dict
        ``task_ids`` (list, submission order), ``task_timeout_sec``, ``retry_count``,
        ``priority`` and ``stats``.

    Raises
    ------
    InvalidRequestError
        Naming the first thing that is wrong.
    """
    if not isinstance(envelope, Mapping):
        raise InvalidRequestError("the session payload must be a JSON object")
    if envelope.get("session_id") != session_id:
        raise InvalidRequestError(
            f"the session payload is for session {envelope.get('session_id')!r}, "
            f"not {session_id!r}"
        )

    tasks_list = envelope.get("tasks_list")
    ids = tasks_list.get("tasks") if isinstance(tasks_list, Mapping) else None
    if not isinstance(ids, list) or not ids:
        raise InvalidRequestError(
            "the session payload's tasks_list.tasks must be a non-empty list"
        )
    try:
        protocol.check_session_tasks(session_id, ids)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    if len(set(ids)) != len(ids):
        raise InvalidRequestError("the session payload lists a task id twice")

    scheduler = envelope.get("scheduler_data")
    if not isinstance(scheduler, Mapping):
        raise InvalidRequestError("the session payload has no scheduler_data object")
    timeout = scheduler.get("task_timeout_sec")
    retries = scheduler.get("retry_count")
    if not _positive_int(timeout, minimum=1):
        raise InvalidRequestError("scheduler_data.task_timeout_sec must be a positive integer")
    # Zero retries is a valid choice: one attempt, then failed.
    if not _positive_int(retries, minimum=0):
        raise InvalidRequestError("scheduler_data.retry_count must be an integer of 0 or more")

    stats = envelope.get("stats")
    if not isinstance(stats, Mapping):
        raise InvalidRequestError("the session payload has no stats object")
    missing = [key for key in protocol.STATS_KEYS if key not in stats]
    if missing:
        raise InvalidRequestError(f"the session payload's stats lack {', '.join(missing)}")

    context = envelope.get("context")
    priority = context.get("tasks_priority", 0) if isinstance(context, Mapping) else 0
    if not _positive_int(priority, minimum=0):
        raise InvalidRequestError("context.tasks_priority must be an integer of 0 or more")

    return {
        "task_ids": list(ids),
        "task_timeout_sec": timeout,
        "retry_count": retries,
        "priority": priority,
        "stats": dict(stats),
    }


class GridHandlers:
    """The grid's three API operations, on one grid's state table, queue and data plane.

    Parameters
    ----------
    table : StateTable
    queue : TaskQueue
    dataplane : DataPlane

    Examples
    --------
    >>> handlers = GridHandlers(StateTable(config), TaskQueue(config), open_dataplane(config))
    ... # doctest: +SKIP
    >>> handlers.submit(session_id)  # doctest: +SKIP
    {'session_id': '...', 'task_ids': ['..._0', '..._1']}
    """

    def __init__(
        self,
        table: StateTable,
        queue: TaskQueue,
        dataplane: DataPlane,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.table = table
        self.queue = queue
        self.dataplane = dataplane
        self.dispatcher = dispatcher if dispatcher is not None else Dispatcher(table, queue)
        self._submitting: set[str] = set()
        self._submitting_lock = threading.Lock()

    @contextmanager
    def _only_submit(self, session_id: str) -> Iterator[None]:
        # The table check alone lets two concurrent submits of one id both pass it.
        with self._submitting_lock:
            if session_id in self._submitting:
                raise SessionExistsError(f"session {session_id} is being submitted already")
            self._submitting.add(session_id)
        try:
            yield
        finally:
            with self._submitting_lock:
                self._submitting.discard(session_id)

    # --- /submit -------------------------------------------------------------------------

    def submit(self, session_id: str) -> dict[str, Any]:
        """Accept a session whose envelope and inputs are in the data plane.

        Writes one pending row per task, then one queue message per task; if queueing fails,
        the session's rows are deleted again, so that nothing half-submitted remains.

        Raises
        ------
        InvalidRequestError
            Bad session id, no or malformed envelope.
        SessionExistsError
            The session id is already in the state table.
        SubmitFailedError
            The tasks could not be queued; the session may be submitted again.
        """
        invoked_ms = protocol.now_ms()
        try:
            protocol.check_session_id(session_id)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        try:
            envelope = self.dataplane.read_payload(session_id)
        except ValueError:
            raise InvalidRequestError(
                f"the payload of session {session_id} is not URL-safe base64 of UTF-8 JSON"
            ) from None
        if envelope is None:
            raise InvalidRequestError(
                f"session {session_id} has no payload in the data plane: write "
                f"{protocol.payload_key(session_id)} before calling /submit"
            )
        checked = check_envelope(session_id, envelope)

        with self._only_submit(session_id):
            # By key, not by index query (moto reads the whole table for those): the ids
            # of a session are S_0 ... S_n, so any earlier submission holds the first or last.
            ids = checked["task_ids"]
            if self.dispatcher.get(session_id) or self.table.get_many([ids[0], ids[-1]]):
                raise SessionExistsError(
                    f"session {session_id} was submitted already; submit new work under a new "
                    "session id"
                )
            row_fields = {
                "max_retries": checked["retry_count"],
                "task_timeout_sec": checked["task_timeout_sec"],
                "priority": checked["priority"],
                "submitted_ms": invoked_ms,
            }
            rows = [
                pending_row(task_id, session_id, **row_fields) for task_id in checked["task_ids"]
            ]
            stats = checked["stats"]
            stats[_STAGE_INVOCATION] = {"label": "grid_api_submit_invocation", "tstmp": invoked_ms}
            try:
                self.table.put_rows(rows)
            except Exception as exc:
                self._forget(session_id, checked["task_ids"])
                raise SubmitFailedError(f"cannot store session {session_id}: {exc}") from exc
            stats[_STAGE_BEFORE_BATCH_WRITE] = {
                "label": "grid_api_submit_before_queueing",
                "tstmp": protocol.now_ms(),
            }
            self.dispatcher.add(
                TrackedSession(
                    session_id,
                    checked["task_ids"],
                    checked["priority"],
                    row_fields,
                    stats,
                )
            )
            # The first tasks go to the queue before the answer; the rest as agents drain it.
            self.dispatcher.feed_once()
        logger.info("session %s submitted: %d task(s)", session_id, len(rows))
        return {"session_id": session_id, "task_ids": checked["task_ids"]}

    def _forget(self, session_id: str, ids: Sequence[str]) -> None:
        # Messages already sent stay in the queue; an agent cannot claim a task whose row is
        # gone, so they are dropped when received.
        try:
            self.table.delete_rows(ids)
        except Exception:
            logger.exception(
                "cannot delete the rows of session %s after a failed submit", session_id
            )

    # --- /result -------------------------------------------------------------------------

    def result(self, session_id: str) -> dict[str, Any]:
        """Return the states of a session's tasks, in the shape of a real grid's /result.

        Raises
        ------
        InvalidRequestError
            Bad session id.
        UnknownSessionError
            The state table holds no task of the session.
        """
        try:
            protocol.check_session_id(session_id)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        tracked = self.dispatcher.get(session_id)
        if tracked is not None:
            self.dispatcher.refresh(tracked)
            return self.dispatcher.answer(tracked)
        # A session this gateway did not accept: read it from the state table's index.
        rows = self.table.session_rows(session_id)
        if not rows:
            raise UnknownSessionError(f"the grid knows no session {session_id}")
        rows.sort(key=lambda row: protocol.task_index(row[protocol.TASK_ID]))

        by_state: dict[str, list[str]] = {state: [] for state in protocol.STATES}
        tasks: dict[str, dict[str, Any]] = {}
        for row in rows:
            task_id = row[protocol.TASK_ID]
            state = protocol.state_of(row[protocol.TASK_STATUS])
            by_state[state].append(task_id)
            tasks[task_id] = task_details(row, state)
        counts = {state: len(ids) for state, ids in by_state.items()}
        return protocol.results_answer(
            by_state, {protocol.COUNTS_FIELD: counts, protocol.TASKS_FIELD: tasks}
        )

    # --- /cancel -------------------------------------------------------------------------

    def cancel(self, session_ids: Sequence[str]) -> dict[str, Any]:
        """Cancel every pending and processing task of each session.

        Finished, failed and already cancelled tasks are left as they are, so cancelling twice
        answers zero counts the second time. An unknown session answers zero counts too.

        Raises
        ------
        InvalidRequestError
            A bad session id (nothing is cancelled then).
        """
        for session_id in session_ids:
            try:
                protocol.check_session_id(session_id)
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from None
        answer: dict[str, Any] = {}
        for session_id in dict.fromkeys(session_ids):
            tracked = self.dispatcher.get(session_id)
            never_queued: list[str] = []
            if tracked is not None:
                never_queued = self._cancel_unqueued(tracked)
                # Every task not known to have ended, not only those the last read found
                # running: that read may be older than the last tasks queued, which would
                # escape the cancel and run. A task that ended since is skipped by the
                # conditional write; the refresh only keeps such writes few.
                self.dispatcher.refresh(tracked)
                with tracked.lock:
                    ids = [t for t in tracked.task_ids if t not in tracked.ended]
            else:
                ids = [
                    row[protocol.TASK_ID]
                    for state in (protocol.PENDING, protocol.PROCESSING)
                    for row in self.table.session_rows(session_id, state)
                ]
            left = self._cancel_tasks(session_id, ids)
            if tracked is not None:
                with tracked.lock:
                    tracked.refreshed_at = NEVER
            answer[session_id] = protocol.cancel_counts(
                len(never_queued) + left.count(protocol.PENDING), left.count(protocol.PROCESSING)
            )
            logger.info("session %s: cancelled %d task(s)", session_id, len(left))
        return answer

    def _cancel_unqueued(self, tracked: TrackedSession) -> list[str]:
        """Cancel the tasks the dispatcher never queued: no agent can hold them.

        Tasks the queue refused may have been queued in part after all: they are left to the
        conditional cancel of the running ones.
        """
        ids, refused = self.dispatcher.take_unqueued(tracked)
        if ids:
            ended_ms = protocol.now_ms()
            rows = tracked.rows(ids)
            for row in rows:
                row[protocol.TASK_STATUS] = protocol.status_value(
                    protocol.CANCELLED, tracked.session_id
                )
                row[protocol.TASK_COMPLETION_TIMESTAMP] = ended_ms
            try:
                self.table.put_rows(rows)
            except Exception:
                # Not cancelled after all: they must still be queued and run.
                self.dispatcher.give_back_unqueued(tracked, ids + refused)
                raise
            self.dispatcher.mark_cancelled(tracked, ids, ended_ms)
        return ids

    def _cancel_tasks(self, session_id: str, ids: Sequence[str]) -> list[str]:
        """Cancel the tasks; the states they left (tasks that ended meanwhile are skipped)."""
        if len(ids) <= 1:
            states = [self.table.cancel(task_id, session_id) for task_id in ids]
        else:
            with ThreadPoolExecutor(
                min(CANCEL_WORKERS, len(ids)), thread_name_prefix="htcgrid-cancel"
            ) as pool:
                states = list(pool.map(lambda t: self.table.cancel(t, session_id), ids))
        return [state for state in states if state is not None]
