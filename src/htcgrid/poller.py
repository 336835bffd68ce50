"""One background thread per client that follows every live session.

Each round it asks /result once per live session, downloads the outputs and errors of the
tasks that ended since the last round (each exactly once), updates the progress bars, and
completes a session's future when all its tasks have ended. It stops when nothing is live and
starts again with the next session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import GridUnreachableError, HTCGridError

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
            for session in live:
                if self._closed:
                    break
                self._poll(session)
            self._update_bars()
            with self._lock:
                self._sessions = {k: s for k, s in self._sessions.items() if not s.done()}
            self._wake.wait(self.interval_sec)
            self._wake.clear()

    def _poll(self, session: Session) -> None:
        try:
            answer = self._connector.control.result(session.session_id)
            finished, failed = session._apply(answer)
            dataplane = self._connector.dataplane
            outputs = dataplane.read_outputs(finished) if finished else {}
            errors = dataplane.read_errors(failed) if failed else {}
            session._store(outputs, errors)
        except GridUnreachableError as exc:
            session._fail(
                GridUnreachableError(
                    f"{exc}. Session {session.session_id} may still be running on the grid: "
                    f"once it is back, reattach with client.session('{session.session_id}')"
                )
            )
            return
        except HTCGridError as exc:
            session._fail(exc)
            return
        except Exception as exc:  # noqa: BLE001 - the poller must outlive any one session
            logger.exception("following session %s failed", session.session_id)
            session._fail(exc)
            return
        if session._all_terminal():
            session._finish()

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
