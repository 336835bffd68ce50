"""One background thread per client that follows every live session.

Each round it asks /result once per live session, downloads the outputs and errors of the
tasks that ended since the last round (each exactly once), updates the progress bars, and
completes a session's future when all its tasks have ended. It stops when nothing is live and
starts again with the next session.

When the grid cannot be reached within the retry bound, every live session fails in that
round with a ``GridUnreachableError`` that says how to reattach to it. A session whose /submit
failed uncertainly is watched for a bounded time: it is followed as usual once the grid shows
any of it, and fails with ``SubmissionUncertainError`` if the grid never does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import (
    APIError,
    DataPlaneError,
    GridUnreachableError,
    HTCGridError,
    SubmissionUncertainError,
    is_connection_failure,
)

if TYPE_CHECKING:
    from .connector import AWSConnector
    from .progress import ProgressBar
    from .session import Session

logger = logging.getLogger(__name__)


class Poller:
    """Follows sessions on the grid for one client."""

    def __init__(self, connector: AWSConnector, interval_sec: float) -> None:
        self._connector = connector
        self.interval_sec = interval_sec
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._bars: list[tuple[ProgressBar, list[Session]]] = []
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False

    def add(self, session: Session) -> None:
        """Follow ``session`` until every task of it has ended."""
        with self._lock:
            if self._closed:
                raise HTCGridError("the client is closed")
            self._sessions[session.session_id] = session
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="htcgrid-poller", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def add_bar(self, bar: ProgressBar, sessions: Sequence[Session]) -> None:
        """Keep ``bar`` up to date with the summed counts of ``sessions``."""
        with self._lock:
            self._bars.append((bar, list(sessions)))
        self._wake.set()

    def wake(self) -> None:
        """Poll now rather than at the end of the interval."""
        self._wake.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._lock:
                live = [s for s in self._sessions.values() if not s.done()]
                if self._closed or (not live and not self._bars):
                    self._thread = None
                    return
            started = time.monotonic()
            for index, session in enumerate(live):
                if self._closed:
                    break
                lost = self._poll(session)
                if lost is not None:
                    # The grid is gone for every session: say so now, rather than after one
                    # more retry bound per session.
                    for other in live[index + 1 :]:
                        if other._unconfirmed is None:
                            other._fail(_unreachable(other, lost))
                    break
            self._update_bars()
            with self._lock:
                self._sessions = {k: s for k, s in self._sessions.items() if not s.done()}
            # A round that took long (large sessions, a busy grid) is followed by a longer
            # pause, so that following sessions never takes more than a third of the grid's API.
            took = time.monotonic() - started
            self._wake.wait(max(self.interval_sec, 2 * took))
            self._wake.clear()

    def _poll(self, session: Session) -> str | None:
        """Follow ``session`` one round; the reason if the grid could not be reached."""
        try:
            answer = self._connector.control.result(session.session_id)
        except APIError as exc:
            if session._unconfirmed is not None:
                self._watch(session, None, exc)
            else:
                session._fail(exc)
            return None
        except GridUnreachableError as exc:
            if session._unconfirmed is not None:
                self._watch(session, None, exc)
                return None
            session._fail(_unreachable(session, str(exc)))
            return str(exc)
        except HTCGridError as exc:
            session._fail(exc)
            return None
        except Exception as exc:  # noqa: BLE001 - the poller must outlive any one session
            logger.exception("following session %s failed", session.session_id)
            session._fail(exc)
            return None
        if session._unconfirmed is not None and not self._watch(session, answer, None):
            return None
        return self._follow(session, answer)

    def _follow(self, session: Session, answer: Mapping[str, Any]) -> str | None:
        try:
            finished, failed = session._apply(answer)
            dataplane = self._connector.dataplane
            outputs = dataplane.read_outputs(finished) if finished else {}
            errors = dataplane.read_errors(failed) if failed else {}
            session._store(outputs, errors)
        except DataPlaneError as exc:
            if not is_connection_failure(exc):
                session._fail(exc)
                return None
            reason = f"the grid is unreachable: its data plane did not answer ({exc})"
            session._fail(_unreachable(session, reason))
            return reason
        except Exception as exc:  # noqa: BLE001 - the poller must outlive any one session
            logger.exception("following session %s failed", session.session_id)
            session._fail(exc)
            return None
        if session._all_terminal():
            try:
                session._finish()
            except Exception as exc:  # noqa: BLE001 - e.g. a reattached session's inputs
                logger.exception("building the results of session %s failed", session.session_id)
                session._fail(exc)
        return None

    @staticmethod
    def _watch(
        session: Session, answer: Mapping[str, Any] | None, error: HTCGridError | None
    ) -> bool:
        """One look at a session whose /submit failed uncertainly; True once it is confirmed.

        Errors of /result are borne until the watch ends, except the grid's word that it
        knows no such session: then nothing of it will run, and the session fails at once.
        """
        uncertain = session._unconfirmed
        assert uncertain is not None
        if answer is not None and session._held_in(answer):
            logger.info("session %s: the grid holds it after all", session.session_id)
            session._unconfirmed = None
            return True
        if isinstance(error, APIError) and error.status == 404:
            session._fail(
                APIError(
                    f"session {session.session_id} is not on the grid: /submit failed "
                    f"({uncertain.reason}) and the grid knows no such session, so none of its "
                    "tasks will run. Submit the tasks again.",
                    404,
                    error.body,
                )
            )
        elif time.monotonic() >= session._watch_until:
            session._fail(
                SubmissionUncertainError(
                    f"session {session.session_id}: /submit failed ({uncertain.reason}), and "
                    f"while it was watched the grid showed none of its {len(session.task_ids)} "
                    "tasks. It may hold them still (a grid that lists only ended tasks cannot "
                    "tell a queued session from one never submitted). Do not submit the tasks "
                    f"again blindly: reattach with client.session('{session.session_id}') to "
                    f"watch it longer, or cancel it with "
                    f"client.session('{session.session_id}').cancel().",
                    session.session_id,
                    list(session.task_ids),
                    uncertain.reason,
                )
            )
        return False

    def _update_bars(self) -> None:
        with self._lock:
            bars = list(self._bars)
        keep = []
        for bar, sessions in bars:
            counts: dict[str, int] = {}
            for session in sessions:
                for state, count in session.status().items():
                    counts[state] = counts.get(state, 0) + count
            if all(s.done() for s in sessions):
                bar.close(counts)
            else:
                bar.update(counts)
                keep.append((bar, sessions))
        with self._lock:
            self._bars = [b for b in self._bars if b in keep or b not in bars]


def _unreachable(session: Session, reason: str) -> GridUnreachableError:
    return GridUnreachableError(
        f"{reason}. Session {session.session_id} may still be running on the grid: once the "
        f"grid is reachable again, reattach with client.session('{session.session_id}')",
        session.session_id,
    )
