"""The grid's HTTP API as the client calls it: /submit, /result and /cancel.

One ``requests`` session per client, a timeout on every call, and bounded retries with
exponential backoff and jitter on connection errors, 429 and 5xx. /submit is retried only
where the grid surely did not act on the first attempt (the connection was never made, the
gateway throttled it, or refused the token); any other failure of /submit is reported as
uncertain, because a real HTC-Grid can answer an error after queueing every task; the grid
is then asked with /result whether it holds the session before anything is resubmitted
(:meth:`ControlPlane.submit_settled`).
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions

from . import protocol
from .auth import Authenticator
from .config import GridConfig
from .errors import (
    APIError,
    AuthenticationError,
    GridUnreachableError,
    HTCGridError,
    SubmissionUncertainError,
)

logger = logging.getLogger(__name__)

#: Status codes worth another attempt for an idempotent call.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 542})
#: The gateway throttled the request before any backend saw it: safe to retry any call.
THROTTLED = 429


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently an API call is retried.

    Attributes
    ----------
    attempts : int
        Attempts per call, the first included.
    backoff_sec, max_backoff_sec : float
        The delay before attempt ``n + 2`` is ``min(backoff_sec * 2**n, max_backoff_sec)``,
        jittered to 50-100 % of that; a 429 answer's ``Retry-After`` is honoured up to
        ``max_backoff_sec``.
    connect_timeout_sec, read_timeout_sec : float
        Timeouts of one attempt (API Gateway itself gives up after 29 s).
    give_up_after_sec : float
        No new attempt starts later than this after the first one.

    With the defaults, a grid that refuses connections is reported unreachable after about
    4 to 8 s, and no call retries for longer than ``give_up_after_sec`` plus one timeout.

    Examples
    --------
    >>> RetryPolicy(attempts=3, backoff_sec=0.01).delay(1) <= 0.02
    True
    """

    attempts: int = 6
    backoff_sec: float = 0.25
    max_backoff_sec: float = 8.0
    connect_timeout_sec: float = 5.0
    read_timeout_sec: float = 35.0
    give_up_after_sec: float = 90.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0 for the first)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff_sec)
        base = min(self.backoff_sec * 2**attempt, self.max_backoff_sec)
        return base * (0.5 + random.random() / 2)


class _Held(enum.Enum):
    """How much of a session the grid says it holds, after an uncertain /submit."""

    ALL = "all"
    SOME = "some"
    NONE = "none"
    UNKNOWN = "unknown"


class SubmitOutcomeUnknown(Exception):
    """Internal: /submit failed in a way that does not prove the grid did nothing."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _is_connect_failure(exc: requests.RequestException) -> bool:
    """True when the request surely never reached the server (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    # requests wraps urllib3's MaxRetryError, whose reason says why the connection failed.
    seen: list[object] = list(exc.args)
    while seen:
        cause = seen.pop()
        if isinstance(cause, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError)):
            return True
        reason = getattr(cause, "reason", None)
        if reason is not None:
            seen.append(reason)
    return False


def _retry_after(answer: requests.Response) -> float | None:
    value = answer.headers.get("Retry-After", "")
    try:
        return float(value)
    except ValueError:
        # An HTTP date, or nothing: the policy's own backoff applies.
        return None


class ControlPlane:
    """Calls the grid's API for one configuration, with an authenticator."""

    def __init__(
        self, config: GridConfig, auth: Authenticator, policy: RetryPolicy | None = None
    ) -> None:
        self.config = config
        self.auth = auth
        self.policy = policy or RetryPolicy()
        self._http = requests.Session()

    def close(self) -> None:
        self._http.close()

    # --- the three calls -----------------------------------------------------------------

    def submit(self, session_id: str) -> dict[str, Any]:
        """POST /submit with the raw session id; the grid's answer.

        Raises ``SubmitOutcomeUnknown`` when the grid may have accepted the session despite
        the error, ``APIError`` with status 409 when it already holds the session, and
        ``GridUnreachableError`` when no attempt could connect (nothing was submitted).
        """
        protocol.check_session_id(session_id)
        return self._call("POST", "submit", session_id, idempotent=False)

    def submit_settled(self, session_id: str, task_ids: Sequence[str]) -> dict[str, Any]:
        """POST /submit, and settle an uncertain outcome with the grid; the grid's answer.

        Returns ``{"session_id": S, "task_ids": [...]}``. See :meth:`_settle` for what
        happens when /submit fails in a way that does not prove that the grid did nothing.

        Raises
        ------
        SubmissionUncertainError
            The grid cannot tell whether it holds the session; nothing was resubmitted.
        GridUnreachableError
            No attempt reached the grid: nothing was submitted.
        APIError
            The grid refused the session, or failed every attempt while holding none of it.
        """
        ids = list(task_ids)
        try:
            answer = self.submit(session_id)
        except SubmitOutcomeUnknown as exc:
            return self._settle(session_id, ids, exc.reason, exc.status)
        except APIError as exc:
            if exc.status != 409:
                raise
            # The grid already holds this session: an earlier attempt got through.
            return self._settle(session_id, ids, "HTTP 409", 409)
        return {
            "session_id": answer.get("session_id", session_id),
            "task_ids": list(answer.get("task_ids") or ids),
        }

    def _settle(
        self, session_id: str, ids: list[str], reason: str, status: int | None
    ) -> dict[str, Any]:
        """After an uncertain /submit, find out from the grid whether it holds the session.

        /result is asked first, every round. If the grid holds every task, the session was
        submitted. If it answers that it knows no such session (a grid that also refuses a
        session id it already holds, as the embedded grid does), /submit is tried again, up to
        the retry bound; a 409 then means an earlier attempt got through. If it holds some
        tasks only, a submit is still under way there: look again after a backoff. Anything
        else (a grid that lists only ended tasks, or /result failing) cannot be told apart
        from a queued session, so nothing is resubmitted: ``SubmissionUncertainError``.
        """
        policy = self.policy
        submits = 1
        for look in range(policy.attempts):
            held = self._held(session_id, ids)
            if held is _Held.ALL:
                logger.warning(
                    "session %s: /submit reported an error (%s), but the grid holds all "
                    "%d tasks; carrying on",
                    session_id,
                    reason,
                    len(ids),
                )
                return {"session_id": session_id, "task_ids": ids}
            if held is _Held.UNKNOWN:
                break
            if held is _Held.SOME:
                time.sleep(policy.delay(look))
                continue
            if submits >= policy.attempts:
                self._raise_not_submitted(session_id, submits, reason, status)
            time.sleep(policy.delay(submits - 1))
            logger.warning(
                "session %s: /submit failed (%s) and the grid holds none of it; submitting "
                "again (attempt %d of %d)",
                session_id,
                reason,
                submits + 1,
                policy.attempts,
            )
            submits += 1
            try:
                answer = self.submit(session_id)
            except SubmitOutcomeUnknown as exc:
                reason, status = exc.reason, exc.status
                continue
            except APIError as exc:
                if exc.status != 409:
                    raise
                continue
            return {
                "session_id": answer.get("session_id", session_id),
                "task_ids": list(answer.get("task_ids") or ids),
            }
        raise SubmissionUncertainError(
            f"/submit of session {session_id} failed ({reason}), and the grid cannot tell "
            f"whether it holds the session's {len(ids)} tasks: they may be queued and running. "
            f"Do not submit this session id again; watch it with get_results('{session_id}') "
            f"or cancel it with cancel_sessions(['{session_id}']).",
            session_id,
            ids,
            reason,
        )

    def _held(self, session_id: str, ids: Sequence[str]) -> _Held:
        try:
            answer = self.result(session_id)
        except APIError as exc:
            return _Held.NONE if exc.status == 404 else _Held.UNKNOWN
        except HTCGridError:
            return _Held.UNKNOWN
        counts = answer.get(protocol.COUNTS_FIELD)
        if isinstance(counts, Mapping):
            total = sum(v for v in counts.values() if isinstance(v, int))
            return _Held.ALL if total >= len(ids) else _Held.SOME
        # A grid that lists only ended tasks shows a queued session only once it has ended.
        ended = {t for state_ids in protocol.terminal_ids(answer).values() for t in state_ids}
        return _Held.ALL if ended >= set(ids) else _Held.UNKNOWN

    @staticmethod
    def _raise_not_submitted(
        session_id: str, submits: int, reason: str, status: int | None
    ) -> None:
        message = (
            f"/submit of session {session_id} failed {submits} times (last: {reason}), and the "
            "grid holds none of its tasks: nothing of it will run. Send the tasks again once "
            "the grid is healthy."
        )
        if status is None:
            raise GridUnreachableError(message, session_id)
        raise APIError(message, status)

    def result(self, session_id: str) -> dict[str, Any]:
        """GET /result for one session."""
        content = protocol.encode_query({"session_id": protocol.check_session_id(session_id)})
        return self._call("GET", "result", content, idempotent=True)

    def cancel(self, session_ids: Sequence[str]) -> dict[str, Any]:
        """POST /cancel for sessions; per session, the counts of tasks cancelled."""
        ids = [protocol.check_session_id(s) for s in session_ids]
        content = protocol.encode_query({"session_ids_to_cancel": ids})
        return self._call("POST", "cancel", content, idempotent=True)

    # --- plumbing ------------------------------------------------------------------------

    def _call(self, method: str, path: str, content: str, *, idempotent: bool) -> Any:
        url = f"{self.config.api_url}/{path}"
        policy = self.policy
        give_up_at = time.monotonic() + policy.give_up_after_sec
        refreshed = False
        attempt = 0
        while True:
            headers = self.auth.headers()
            try:
                answer = self._http.request(
                    method,
                    url,
                    params={protocol.QUERY_PARAMETER: content},
                    headers=headers,
                    timeout=(policy.connect_timeout_sec, policy.read_timeout_sec),
                )
            except requests.RequestException as exc:
                if not idempotent and not _is_connect_failure(exc):
                    raise SubmitOutcomeUnknown(f"{_describe(exc)} mid-request") from None
                delay = policy.delay(attempt)
                if attempt + 1 >= policy.attempts or time.monotonic() + delay > give_up_at:
                    raise GridUnreachableError(
                        f"the grid is unreachable: its API at {self.config.api_url} did not "
                        f"answer /{path} in {attempt + 1} attempts ({_describe(exc)}); check "
                        "that the grid is running and that the configuration names it"
                    ) from None
                self._pause(path, attempt, _describe(exc), delay)
                attempt += 1
                continue

            status = answer.status_code
            if status == 200:
                try:
                    return answer.json()
                except ValueError:
                    raise APIError(
                        f"/{path} answered 200 with a body that is not JSON", status, answer.text
                    ) from None
            if status in (401, 403) and not refreshed and self.auth.signed_in:
                # An expired or revoked token: renew it once and try again. The gateway's
                # authorizer refused the request, so no backend acted on it.
                logger.debug("/%s: HTTP %d; renewing the credentials", path, status)
                self.auth.refresh()
                refreshed = True
                continue
            if status in (401, 403):
                raise AuthenticationError(
                    f"the grid's API refused the credentials ({status}: {_short(answer.text)})"
                )
            retryable = status == THROTTLED or (idempotent and status in RETRY_STATUSES)
            delay = policy.delay(attempt, _retry_after(answer) if status == THROTTLED else None)
            if (
                retryable
                and attempt + 1 < policy.attempts
                and time.monotonic() + delay <= give_up_at
            ):
                self._pause(path, attempt, f"HTTP {status}", delay)
                attempt += 1
                continue
            if not idempotent and status >= 500:
                raise SubmitOutcomeUnknown(f"HTTP {status}: {_short(answer.text)}", status)
            raise APIError(
                f"/{path} failed with HTTP {status} after {attempt + 1} attempt(s): "
                f"{_short(answer.text)}",
                status,
                answer.text,
            )

    def _pause(self, path: str, attempt: int, reason: str, delay: float) -> None:
        logger.warning(
            "/%s: %s; retrying in %.2f s (attempt %d of %d)",
            path,
            reason,
            delay,
            attempt + 2,
            self.policy.attempts,
        )
        time.sleep(delay)


def _describe(exc: requests.RequestException) -> str:
    """Name a connection failure in a few words, without urllib3's nested reprs."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if _is_connect_failure(exc):
        return "connection refused"
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "connection lost"
    return type(exc).__name__


def _short(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
