"""``AWSConnector``: HTC-Grid's documented client API, over the real wire protocol.

Code written for HTC-Grid's own connector runs with only its import changed::

    from htcgrid import AWSConnector

    connector = AWSConnector()
    connector.init(config, username=username, password=password)
    connector.authenticate()
    submission = connector.send([{"worker_arguments": ["1000", "1", "1"]}])
    results = connector.get_results(submission, timeout_sec=100)

Unlike the reference client it checks the tasks before uploading anything, uploads inputs and
downloads outputs concurrently, returns results in submission order with the outputs decoded,
and says which tasks are not done when a wait times out.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from . import protocol
from .auth import ApiKeyAuth, Authenticator, CognitoAuth
from .config import ConfigSource, GridConfig, load_config
from .controlplane import ControlPlane, RetryPolicy
from .dataplane import DEFAULT_MAX_WORKERS, DataPlane, EndedTexts, open_dataplane
from .errors import (
    DataPlaneError,
    GridUnreachableError,
    HTCGridError,
    TaskValidationError,
    unreachable_with_hint,
)
from .tasks import (
    check_number,
    check_options,
    checked_session_id,
    checked_task_ids,
    payload_task_ids,
    validate_tasks,
)

logger = logging.getLogger(__name__)


def _reattach_hint(session_id: str) -> str:
    return (
        f"Session {session_id} may still be running on the grid: once the grid is reachable "
        f"again, get_results('{session_id}') picks it up"
    )


class AWSConnector:
    """A connection to one HTC-Grid, on AWS or embedded; the documented client API.

    Examples
    --------
    >>> connector = AWSConnector()  # doctest: +SKIP
    >>> connector.init("agent_config.json", username="alice", password="...")  # doctest: +SKIP
    >>> connector.authenticate()  # doctest: +SKIP
    >>> sub = connector.send([{"worker_arguments": ["1000", "1", "1"]}])  # doctest: +SKIP
    >>> connector.get_results(sub, timeout_sec=60)["finished_OUTPUT"]  # doctest: +SKIP
    ['1000']
    """

    def __init__(self) -> None:
        self.config: GridConfig | None = None
        self._dataplane: DataPlane | None = None
        self._control: ControlPlane | None = None
        self._auth: Authenticator | None = None

    def __repr__(self) -> str:
        if self.config is None:
            return "AWSConnector(not initialised)"
        mode = "private" if self.config.private else "public"
        return f"AWSConnector(api={self.config.api_url!r}, mode={mode})"

    # --- set-up --------------------------------------------------------------------------

    def init(
        self,
        config: ConfigSource,
        username: str = "",
        password: str = "",
        *,
        private: bool | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        """Load the grid configuration and prepare the data plane and the API client.

        Parameters
        ----------
        config : path, dict or GridConfig
            The grid's ``agent_config.json`` (``None``: the file ``AGENT_CONFIG_FILE`` names).
        username, password : str
            The Cognito user; empty strings fall back to the ``USERNAME`` and ``PASSWORD``
            environment variables. Not used in private mode.
        private : bool, optional
            Private mode (api key, private endpoint); ``None`` reads ``INTRA_VPC``.
        max_workers : int
            Concurrent data-plane requests.
        """
        self.close()
        self.config = load_config(config, private=private)
        self._dataplane = open_dataplane(self.config, max_workers=max_workers)
        if self.config.private:
            self._auth = ApiKeyAuth(self.config.api_key)
        else:
            self._auth = CognitoAuth(
                self.config,
                username or os.environ.get("USERNAME", ""),
                password or os.environ.get("PASSWORD", ""),
            )
        self._control = ControlPlane(self.config, self._auth, retry_policy)

    def authenticate(self) -> None:
        """Sign in to the grid's user pool (public mode); nothing to do in private mode."""
        auth = self._require()[2]
        if isinstance(auth, CognitoAuth):
            auth.sign_in()

    def _require(self) -> tuple[DataPlane, ControlPlane, Authenticator]:
        if self._dataplane is None or self._control is None or self._auth is None:
            raise HTCGridError("the connector is not initialised: call init(config) first")
        return self._dataplane, self._control, self._auth

    @property
    def dataplane(self) -> DataPlane:
        return self._require()[0]

    @property
    def control(self) -> ControlPlane:
        return self._require()[1]

    # --- the documented calls ------------------------------------------------------------

    def send(
        self,
        tasks: Sequence[Mapping[str, Any]],
        *,
        retries: int = protocol.DEFAULT_RETRY_COUNT,
        timeout_sec: int = protocol.DEFAULT_TASK_TIMEOUT_SEC,
        priority: int | None = None,
    ) -> dict[str, Any]:
        """Submit tasks as one session; return ``{"session_id": S, "task_ids": [...]}``.

        The tasks are checked first (a non-empty list of JSON-serialisable dicts), then their
        inputs and the session's envelope are written to the data plane concurrently, then
        /submit is called.

        Parameters
        ----------
        tasks : list of dict
            Task definitions, e.g. ``[{"worker_arguments": ["1000", "1", "1"]}]``.
        retries : int
            How many times a failed attempt of a task is retried.
        timeout_sec : int
            How long one attempt of a task may run.
        priority : int, optional
            The session's priority, for grids with priority queues.

        Raises
        ------
        TaskValidationError
            The task list or an option is malformed; nothing was uploaded.
        SubmissionUncertainError
            /submit failed, and the grid cannot tell whether it holds the session (a real
            HTC-Grid can answer an error after queueing every task). The session is not
            submitted again; the error carries its ``session_id`` and ``task_ids``.
        GridUnreachableError
            The grid could not be reached; nothing was submitted.

        Transient faults are retried within the retry policy. A /submit that fails in a way
        that leaves its outcome open is never simply repeated: the grid is asked with /result
        first, and the session is submitted again only where the grid says that it holds
        none of it (see :meth:`ControlPlane.submit_settled`).
        """
        checked = validate_tasks(tasks)
        check_options(retries, timeout_sec)
        session_id = protocol.new_session_id()
        ids = protocol.task_ids(session_id, len(checked))
        return self.submit_session(
            session_id, ids, checked, retries=retries, timeout_sec=timeout_sec, priority=priority
        )

    def submit_session(
        self,
        session_id: str,
        ids: Sequence[str],
        tasks: Sequence[Mapping[str, Any]],
        *,
        retries: int = protocol.DEFAULT_RETRY_COUNT,
        timeout_sec: int = protocol.DEFAULT_TASK_TIMEOUT_SEC,
        priority: int | None = None,
    ) -> dict[str, Any]:
        """Upload and submit checked tasks under ids made by the caller; see :meth:`send`."""
        dataplane, control, auth = self._require()
        if not auth.signed_in:
            self.authenticate()
        ids = list(ids)
        started = time.perf_counter()
        not_sent = (
            f"Session {session_id} was not submitted: send the tasks again once the grid is back"
        )
        with unreachable_with_hint(session_id, not_sent):
            dataplane.write_inputs(ids, tasks)
            dataplane.write_payload(
                protocol.make_envelope(
                    session_id,
                    ids,
                    task_timeout_sec=timeout_sec,
                    retry_count=retries,
                    priority=priority,
                )
            )
            uploaded = time.perf_counter()
            # GridUnreachableError from here means that no attempt reached the grid.
            submitted = control.submit_settled(session_id, ids)
        logger.info(
            "session %s: %d tasks uploaded in %.2f s, submitted in %.2f s",
            session_id,
            len(ids),
            uploaded - started,
            time.perf_counter() - uploaded,
        )
        return submitted

    def get_results(
        self, submission: Mapping[str, Any] | str, timeout_sec: float = 0
    ) -> dict[str, Any]:
        """Wait for a submission's tasks to end; return the documented results dict.

        Polls /result every ``dynamodb_results_pull_interval_sec`` (or, after a /result
        call that took longer, after a pause as long as that call) until every task is
        finished, failed or cancelled, or ``timeout_sec`` passes (0: no limit), and reads
        each output and error once, as its task ends. A poll that fails is retried within
        the connector's retry policy; one /result call may overrun ``timeout_sec`` by at
        most that policy's bound.

        Parameters
        ----------
        submission : dict or str
            What :meth:`send` returned, or a session id (the task list is then read from the
            session's payload in the data plane).
        timeout_sec : float
            Seconds to wait at most; 0 waits until every task has ended.

        Returns
        -------
        dict
            ``finished``, ``failed``, ``cancelled``: task ids in submission order;
            ``finished_OUTPUT[i]``: the output text of ``finished[i]`` (e.g. ``"1000"``);
            ``failed_OUTPUT[i]``: the error text of ``failed[i]``; ``cancelled_OUTPUT``:
            empty strings; ``metadata``: ``tasks_in_response`` plus ``complete`` (False when
            the wait timed out), ``not_terminal`` (the ids still pending or running),
            ``counts`` (tasks by state) and ``session_id``.

        Raises
        ------
        TaskValidationError
            The submission or a session or task id in it is malformed (nothing was read).
        GridUnreachableError
            The grid could not be reached within the retry bound; the message says how to
            pick the session up again.
        """
        session_id, ids = self._submission_ids(submission)
        check_number("timeout_sec", timeout_sec)
        control = self.control
        wanted = set(ids)
        deadline = time.monotonic() + timeout_sec if timeout_sec else None
        interval = self.config.results_pull_interval_sec if self.config else 1.0
        # Outputs and errors are read as their tasks end, during the waits between polls,
        # so that only the last few are left to read when the session is done.
        texts = EndedTexts(self.dataplane)
        with unreachable_with_hint(session_id, _reattach_hint(session_id)):
            while True:
                polled = time.monotonic()
                answer = control.result(session_id)
                asked = time.monotonic() - polled
                by_state = protocol.terminal_ids(answer)
                done = {t for state_ids in by_state.values() for t in state_ids} & wanted
                if len(done) == len(wanted):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    logger.warning(
                        "session %s: %d of %d tasks not done when the wait of %s s ended",
                        session_id,
                        len(wanted) - len(done),
                        len(wanted),
                        timeout_sec,
                    )
                    break
                try:
                    texts.read_new(by_state, wanted)
                except DataPlaneError as exc:
                    # Not fatal yet: what could not be read is read again at the end.
                    logger.debug("session %s: reading outputs: %s; later", session_id, exc)
                # A /result that took long (a large session, a busy grid) is followed by a
                # pause at least as long, so that polling takes at most half of the grid's
                # API; reading outputs is work that must be done anyway, and does not count.
                # The last poll is made when the wait ends.
                pause = max(interval - (time.monotonic() - polled), asked)
                if deadline is not None:
                    pause = min(pause, deadline - time.monotonic())
                time.sleep(max(0.0, pause))
            return self._collect(session_id, ids, by_state, answer, texts)

    def _submission_ids(self, submission: Mapping[str, Any] | str) -> tuple[str, list[str]]:
        """The session id and task ids of a submission, each checked before any I/O."""
        if isinstance(submission, str):
            session_id = checked_session_id(submission)
            with unreachable_with_hint(session_id, _reattach_hint(session_id)):
                ids = self.task_ids_of(session_id)
            if ids is None:
                raise HTCGridError(
                    f"session {session_id} has no payload in the data plane: "
                    "check the session id and the grid configuration"
                )
            return session_id, ids
        if not isinstance(submission, Mapping) or "session_id" not in submission:
            raise TaskValidationError(
                "get_results takes what send() returned ({'session_id': ..., 'task_ids': "
                f"[...]}}) or a session id, not {type(submission).__name__}"
            )
        session_id = checked_session_id(submission["session_id"])
        ids = submission.get("task_ids")
        if not ids:
            return self._submission_ids(session_id)
        return session_id, checked_task_ids(session_id, ids)

    def task_ids_of(self, session_id: str) -> list[str] | None:
        """The task ids of a session, from its payload in the data plane; None if it has none.

        Raises
        ------
        TaskValidationError
            The session id is malformed (nothing was read), or the payload lists an id that
            is not a task of this session.
        """
        session_id = checked_session_id(session_id)
        envelope = self.dataplane.read_payload(session_id)
        return None if envelope is None else payload_task_ids(session_id, envelope)

    def _collect(
        self,
        session_id: str,
        ids: list[str],
        by_state: Mapping[str, list[str]],
        answer: Mapping[str, Any],
        texts: EndedTexts | None = None,
    ) -> dict[str, Any]:
        order = {t: i for i, t in enumerate(ids)}
        ordered = {
            state: sorted((t for t in set(by_state[state]) if t in order), key=order.__getitem__)
            for state in protocol.TERMINAL_STATES
        }
        if texts is None:
            texts = EndedTexts(self.dataplane)
        texts.read_new(ordered, order, retry_missing=True)
        outputs, errors = texts.outputs, texts.errors
        missing = [t for t, text in outputs.items() if text is None]
        if missing:
            logger.warning(
                "session %s: %d finished tasks have no output in the data plane (first: %s)",
                session_id,
                len(missing),
                missing[0],
            )
        terminal = {t for state_ids in ordered.values() for t in state_ids}
        results: dict[str, Any] = {
            protocol.FINISHED: ordered[protocol.FINISHED],
            protocol.FINISHED + protocol.OUTPUT_SUFFIX: [
                outputs[t] or "" for t in ordered[protocol.FINISHED]
            ],
            protocol.FAILED: ordered[protocol.FAILED],
            protocol.FAILED + protocol.OUTPUT_SUFFIX: [
                errors[t] or "failed (no error text in the data plane)"
                for t in ordered[protocol.FAILED]
            ],
            protocol.CANCELLED: ordered[protocol.CANCELLED],
            protocol.CANCELLED + protocol.OUTPUT_SUFFIX: [""] * len(ordered[protocol.CANCELLED]),
        }
        not_terminal = [t for t in ids if t not in terminal]
        metadata: dict[str, Any] = {
            "tasks_in_response": len(terminal),
            "session_id": session_id,
            "complete": not not_terminal,
            "not_terminal": not_terminal,
        }
        if isinstance(answer.get(protocol.COUNTS_FIELD), Mapping):
            metadata["counts"] = dict(answer[protocol.COUNTS_FIELD])
        else:
            # A grid that lists only ended tasks: the others are counted as pending.
            metadata["counts"] = {
                protocol.PENDING: len(not_terminal),
                protocol.PROCESSING: 0,
                **{state: len(ordered[state]) for state in protocol.TERMINAL_STATES},
            }
        results["metadata"] = metadata
        return results

    def cancel_sessions(self, session_ids: Sequence[str] | str) -> dict[str, Any]:
        """Cancel the pending and running tasks of sessions; finished tasks stay finished.

        A cancel that fails on the way is retried within the retry policy (cancelling twice
        is harmless). If the grid acted on an attempt whose answer was lost, the retry's
        counts include only what the retry itself moved; the tasks' states, as
        :meth:`get_results` reports them, are the record.

        Returns
        -------
        dict
            Per session id: ``cancelled_pending``, ``cancelled_processing`` and
            ``total_cancelled_tasks``.
        """
        ids = [session_ids] if isinstance(session_ids, str) else list(session_ids)
        if not ids:
            raise TaskValidationError("cancel_sessions needs at least one session id")
        checked = [checked_session_id(s) for s in ids]
        try:
            return self.control.cancel(checked)
        except GridUnreachableError as exc:
            raise GridUnreachableError(
                f"{exc}. The cancel request may or may not have reached the grid; cancelling "
                "again once it is back is harmless",
                checked[0] if len(checked) == 1 else None,
            ) from None

    def close(self) -> None:
        """Release the connector's connections and threads."""
        if self._dataplane is not None:
            self._dataplane.close()
        if self._control is not None:
            self._control.close()

    def __enter__(self) -> AWSConnector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
