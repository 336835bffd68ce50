"""The notebook API: ``connect()`` and ``GridClient``.

``connect()`` talks to the grid a configuration names, or starts an embedded grid when none
is given. ``GridClient.submit`` returns a :class:`~htcgrid.session.Session` at once; uploads,
/submit and polling happen in the background, and results arrive as pandas DataFrames.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import protocol
from .auth import redact_botocore_logs
from .config import CONFIG_ENV, ConfigSource
from .connector import AWSConnector
from .display import client_html, client_summary
from .errors import (
    GridUnreachableError,
    HTCGridError,
    SubmissionUncertainError,
    TaskValidationError,
    unreachable_with_hint,
)
from .poller import Poller
from .progress import make_bar
from .results import sessions_table
from .session import Session, timeout_error
from .tasks import check_options, validate_tasks

if TYPE_CHECKING:
    from .local import LocalGrid

logger = logging.getLogger(__name__)

#: Tasks per session in :meth:`GridClient.map` when no ``chunk_size`` is given.
DEFAULT_CHUNK_SIZE = 1000
#: Seconds a session whose /submit failed uncertainly is watched for a sign that the grid
#: holds it, before it fails with ``SubmissionUncertainError``.
UNCONFIRMED_WATCH_SEC = 120.0


class SessionNotFoundError(HTCGridError, LookupError):
    """No session with that id exists on the grid."""


def connect(
    config: ConfigSource = None,
    *,
    username: str | None = None,
    password: str | None = None,
    private: bool | None = None,
    workers: int | None = None,
    handler: str | None = None,
) -> GridClient:
    """Connect to a grid and return a :class:`GridClient`.

    Parameters
    ----------
    config : path, dict or None
        The grid's ``agent_config.json``. ``None`` reads ``AGENT_CONFIG_FILE``; if that is
        unset too, an embedded grid is started on this machine, owned by the client and
        stopped by ``close()``, at the end of a ``with`` block, or at interpreter exit.
    username, password : str, optional
        The Cognito user (default: ``USERNAME`` and ``PASSWORD`` from the environment).
    private : bool, optional
        Private mode (api key, no sign-in); ``None`` reads ``INTRA_VPC``.
    workers : int, optional
        Agents of an embedded grid (default: one per CPU core).
    handler : str, optional
        Worker handler of an embedded grid, as ``"module:function"``.

    Examples
    --------
    >>> import htcgrid
    >>> client = htcgrid.connect()  # doctest: +SKIP
    >>> session = client.submit([{"worker_arguments": ["1000", "1", "1"]}])  # doctest: +SKIP
    >>> session.result()  # doctest: +SKIP
    """
    source = config if config is not None else os.environ.get(CONFIG_ENV) or None
    grid = None
    if source is None:
        from .local import LocalGrid

        # The embedded grid creates its user through botocore in this process: keep the
        # password out of botocore's DEBUG records from the start.
        redact_botocore_logs()
        kwargs: dict[str, Any] = {"agents": workers}
        if handler:
            kwargs["handler"] = handler
        grid = LocalGrid(**kwargs).start()
        source, username, password = grid.config_path, grid.username, grid.password
    elif workers is not None or handler is not None:
        raise TaskValidationError(
            "workers and handler configure an embedded grid; a grid given by its "
            "configuration has its own agents and handler"
        )
    connector = AWSConnector()
    try:
        connector.init(source, username or "", password or "", private=private)
        connector.authenticate()
    except BaseException:
        connector.close()
        if grid is not None:
            grid.stop()
        raise
    return GridClient(connector, grid=grid)


class GridClient:
    """Submits sessions, follows them with one background poller, and gathers results.

    Made by :func:`connect`. Usable as a context manager; ``close()`` stops an embedded grid
    that the client started.

    Parameters
    ----------
    connector : AWSConnector
        An initialised connector (its retry policy applies to every call of the client).
    grid : LocalGrid, optional
        An embedded grid that the client owns and stops on ``close()``.
    unconfirmed_watch_sec : float
        How long a session whose /submit failed uncertainly is watched for a sign that the
        grid holds it; see :meth:`submit`.
    """

    def __init__(
        self,
        connector: AWSConnector,
        *,
        grid: LocalGrid | None = None,
        unconfirmed_watch_sec: float = UNCONFIRMED_WATCH_SEC,
    ) -> None:
        if connector.config is None:
            raise HTCGridError("the connector is not initialised: call init(config) first")
        self.connector = connector
        self.config = connector.config
        self.grid = grid
        self.unconfirmed_watch_sec = unconfirmed_watch_sec
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._submitter = concurrent.futures.ThreadPoolExecutor(
            2, thread_name_prefix="htcgrid-submit"
        )
        self._submissions: dict[str, concurrent.futures.Future[Any]] = {}
        self._poller = Poller(connector, self.config.results_pull_interval_sec)
        self._closed = False
        atexit.register(_close_at_exit, weakref.ref(self))

    # --- submitting ------------------------------------------------------------------------

    def submit(
        self,
        tasks: Sequence[Mapping[str, Any]],
        *,
        retries: int | None = None,
        timeout: int | None = None,
        priority: int | None = None,
        progress: bool | None = None,
    ) -> Session:
        """Submit tasks as one session; return its :class:`Session` at once.

        The tasks are checked now (the same errors as ``AWSConnector.send``); the uploads and
        /submit run in the background, and their failure becomes the session's exception.
        If /submit fails in a way that leaves open whether the grid took the session (a real
        HTC-Grid can answer an error after queueing every task), the session is not submitted
        again: it is watched for ``unconfirmed_watch_sec`` seconds, followed as usual once the
        grid shows any of it, and fails with ``SubmissionUncertainError`` otherwise.

        Parameters
        ----------
        tasks : list of dict
            Task definitions, e.g. ``[{"worker_arguments": ["1000", "1", "1"]}]``.
        retries : int, optional
            How often a failed attempt of a task is retried (default 5).
        timeout : int, optional
            Seconds one attempt of a task may run (default 3600).
        priority : int, optional
            The session's priority, on grids with priority queues.
        progress : bool, optional
            Show a live bar (default: in notebooks and terminals, not in CI or pipes).
        """
        sessions = self._submit_many([tasks], retries, timeout, priority)
        self._show_progress(sessions, force=bool(progress), off=progress is False)
        return sessions[0]

    def map(
        self,
        tasks: Sequence[Mapping[str, Any]],
        *,
        chunk_size: int | None = None,
        retries: int | None = None,
        timeout: int | None = None,
        priority: int | None = None,
        progress: bool | None = None,
    ) -> list[Session]:
        """Submit a long task list as sessions of ``chunk_size`` tasks, with one progress bar.

        Returns the sessions in order; :meth:`gather` joins their DataFrames.
        """
        if isinstance(tasks, (str, bytes, Mapping)) or not isinstance(tasks, Sequence):
            validate_tasks(tasks)  # raises the usual, specific error
        checked = list(tasks)
        size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise TaskValidationError(f"chunk_size must be a whole number >= 1, not {size!r}")
        chunks = [checked[i : i + size] for i in range(0, len(checked), size)] or [[]]
        sessions = self._submit_many(chunks, retries, timeout, priority)
        self._show_progress(sessions, force=bool(progress), off=progress is False)
        return sessions

    def _submit_many(
        self,
        lists: Sequence[Sequence[Mapping[str, Any]]],
        retries: int | None,
        timeout: int | None,
        priority: int | None,
    ) -> list[Session]:
        if self._closed:
            raise HTCGridError("the client is closed: connect() again")
        options = {
            "retries": protocol.DEFAULT_RETRY_COUNT if retries is None else retries,
            "timeout_sec": protocol.DEFAULT_TASK_TIMEOUT_SEC if timeout is None else timeout,
            "priority": priority,
        }
        check_options(options["retries"], options["timeout_sec"])
        checked = [validate_tasks(tasks) for tasks in lists]
        sessions = []
        for tasks in checked:
            session_id = protocol.new_session_id()
            session = Session(self, session_id, protocol.task_ids(session_id, len(tasks)), tasks)
            with self._lock:
                self._sessions[session_id] = session
                self._submissions[session_id] = self._submitter.submit(
                    self._send, session, tasks, options
                )
            sessions.append(session)
        return sessions

    def _send(self, session: Session, tasks: list[dict[str, Any]], options: dict) -> None:
        try:
            self.connector.submit_session(session.session_id, session.task_ids, tasks, **options)
        except SubmissionUncertainError as exc:
            logger.warning(
                "session %s: /submit failed (%s); watching the grid for up to %.0f s for a sign "
                "that it holds the session",
                session.session_id,
                exc.reason,
                self.unconfirmed_watch_sec,
            )
            session._watch_unconfirmed(exc, self.unconfirmed_watch_sec)
        except Exception as exc:  # noqa: BLE001 - any failure is the session's exception
            logger.warning("session %s could not be submitted: %s", session.session_id, exc)
            session._fail(exc)
            return
        try:
            self._poller.add(session)
        except HTCGridError as exc:  # the client was closed meanwhile
            session._fail(exc)

    def _show_progress(
        self, sessions: Sequence[Session], *, force: bool = False, off: bool = False
    ) -> None:
        if off:
            return
        total = sum(len(s.task_ids) for s in sessions)
        label = sessions[0].session_id[:8] if len(sessions) == 1 else f"{len(sessions)} sessions"
        bar = make_bar(total, label, True if force else None)
        if bar is not None:
            self._poller.add_bar(bar, sessions)

    # --- following and collecting ----------------------------------------------------------

    def session(self, session_id: str) -> Session:
        """Return a live :class:`Session` for a session submitted elsewhere (reattach).

        Its task list comes from the session's payload in the data plane. A handle of this
        client that failed because the grid was unreachable, or because its submission was
        uncertain, is replaced by a fresh one that follows the session again.

        Raises
        ------
        SessionNotFoundError
            No session with this id exists on the grid.
        GridUnreachableError
            The grid cannot be reached.
        """
        try:
            protocol.check_session_id(session_id)
        except ValueError as exc:
            raise SessionNotFoundError(str(exc)) from None
        with self._lock:
            known = self._sessions.get(session_id)
        if known is not None and not _lost(known):
            return known
        hint = f"Reattach with client.session('{session_id}') once the grid is back"
        with unreachable_with_hint(session_id, hint):
            ids = self.connector.task_ids_of(session_id)
        if ids is None:
            raise SessionNotFoundError(
                f"no session {session_id} on this grid (its payload is not in the data "
                "plane): check the id, and that the configuration names the grid it ran on"
            )
        session = Session(self, session_id, ids, known._inputs if known is not None else None)
        with self._lock:
            self._sessions[session_id] = session
        self._poller.add(session)
        return session

    def sessions(self) -> pd.DataFrame:
        """A DataFrame of the sessions this client knows, with counts by state."""
        with self._lock:
            sessions = list(self._sessions.values())
        return sessions_table(sessions)

    def gather(self, sessions: Sequence[Session], timeout: float | None = None) -> pd.DataFrame:
        """Wait for sessions and return one DataFrame, with a ``session_id`` column.

        Raises
        ------
        SessionTimeoutError
            ``timeout`` seconds (for all the sessions together) passed first; it names the
            tasks not done and the counts.
        """
        started = time.monotonic()
        frames = []
        for session in sessions:
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            if not session.wait(left):
                raise timeout_error(sessions, timeout)
            frame = session.result().copy()
            frame.insert(0, "session_id", session.session_id)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def as_completed(
        self, sessions: Sequence[Session], timeout: float | None = None
    ) -> Iterator[Session]:
        """Yield sessions as they end (``concurrent.futures.as_completed``).

        Raises
        ------
        SessionTimeoutError
            ``timeout`` seconds passed before every session ended; it names the tasks not
            done and the counts.
        """
        try:
            yield from concurrent.futures.as_completed(sessions, timeout=timeout)  # type: ignore[misc]
        except concurrent.futures.TimeoutError:
            raise timeout_error(sessions, timeout) from None

    def _cancel(self, session: Session) -> None:
        with self._lock:
            submission = self._submissions.get(session.session_id)
        if submission is not None and submission.cancel():
            # Never sent: nothing of it is on the grid, so every task ends here.
            session._cancel_locally()
            return
        if submission is not None:
            submission.result()  # a session is cancelled on the grid once it is there
        if session.done():
            return
        self.connector.cancel_sessions([session.session_id])
        self._poller.wake()

    def _inputs_of(self, session: Session) -> list[Mapping[str, Any]] | None:
        if session._inputs is None and session.task_ids:
            dataplane = self.connector.dataplane
            raw = dataplane.get_many(protocol.input_key(t) for t in session.task_ids)
            if all(v is not None for v in raw.values()):
                session._inputs = [protocol.decode_input(v) for v in raw.values() if v]
        return session._inputs

    # --- life cycle and display --------------------------------------------------------------

    def close(self) -> None:
        """Stop following sessions, release connections, and stop an owned embedded grid."""
        if self._closed:
            return
        self._closed = True
        # Sessions not sent yet are not sent at all; those live are no longer followed. Their
        # futures fail with the way back, so that no wait on them lasts for ever.
        self._submitter.shutdown(wait=True, cancel_futures=True)
        self._poller.close()
        with self._lock:
            sessions = list(self._sessions.values())
            submissions = dict(self._submissions)
        for session in sessions:
            if session.done():
                continue
            submission = submissions.get(session.session_id)
            if submission is not None and submission.cancelled():
                session._fail(
                    HTCGridError(
                        f"session {session.session_id} was never sent: the client was closed first"
                    )
                )
            else:
                session._fail(
                    HTCGridError(
                        f"the client was closed while session {session.session_id} ran; it "
                        "goes on on the grid: follow it with "
                        f"connect(...).session('{session.session_id}')"
                    )
                )
        self.connector.close()
        if self.grid is not None:
            self.grid.stop()

    def __enter__(self) -> GridClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _summary(self) -> dict[str, str]:
        with self._lock:
            sessions = list(self._sessions.values())
        agents = self.grid.agents if self.grid is not None else None
        return client_summary(self.config, self.grid is not None, sessions, agents, self._closed)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._summary().items())
        return f"GridClient({fields})"

    def _repr_html_(self) -> str:
        return client_html("htcgrid client", self._summary())


def _close_at_exit(ref: weakref.ReferenceType[GridClient]) -> None:
    client = ref()
    if client is not None:
        client.close()


def _lost(session: Session) -> bool:
    """True for a handle that ended because the grid was out of reach or silent."""
    if not session.done() or session.cancelled():
        return False
    return isinstance(session.exception(), (GridUnreachableError, SubmissionUncertainError))
