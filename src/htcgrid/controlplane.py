"""The grid's HTTP API as the client calls it: /submit, /result and /cancel.

One ``requests`` session per client, a timeout on every call, and bounded retries with
exponential backoff and jitter on connection errors, 429 and 5xx. /submit is retried only
where the grid surely did not act on the first attempt (the connection was never made, or the
gateway throttled it); any other failure of /submit is reported as uncertain, because a real
HTC-Grid can answer an error after queueing every task.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests

from . import protocol
from .auth import Authenticator
from .config import GridConfig
from .errors import APIError, AuthenticationError, GridUnreachableError

logger = logging.getLogger(__name__)

#: Status codes worth another attempt for an idempotent call.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 542})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently an API call is retried."""

    attempts: int = 6
    backoff_sec: float = 0.25
    max_backoff_sec: float = 8.0
    connect_timeout_sec: float = 5.0
    read_timeout_sec: float = 35.0

    def delay(self, attempt: int) -> float:
        base = min(self.backoff_sec * 2**attempt, self.max_backoff_sec)
        return base * (0.5 + random.random() / 2)


class SubmitOutcomeUnknown(Exception):
    """Internal: /submit failed in a way that does not prove the grid did nothing."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _is_connect_failure(exc: requests.RequestException) -> bool:
    """True when the request surely never reached the server."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        text = repr(exc)
        return "NewConnectionError" in text or "Connection refused" in text
    return False


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
        the error, ``APIError`` with status 409 when it already holds the session.
        """
        protocol.check_session_id(session_id)
        return self._call("POST", "submit", session_id, idempotent=False)

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
                    timeout=(self.policy.connect_timeout_sec, self.policy.read_timeout_sec),
                )
            except requests.RequestException as exc:
                retryable = idempotent or _is_connect_failure(exc)
                if not retryable:
                    raise SubmitOutcomeUnknown(
                        f"the connection failed mid-request ({exc})"
                    ) from None
                if attempt + 1 >= self.policy.attempts:
                    raise GridUnreachableError(
                        f"the grid's API at {self.config.api_url} cannot be reached after "
                        f"{self.policy.attempts} attempts ({type(exc).__name__}): check that "
                        "the grid is running and the URL in the configuration is right"
                    ) from None
                self._pause(path, attempt, type(exc).__name__)
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
                # An expired or revoked token: renew it once and try again.
                self.auth.refresh()
                refreshed = True
                continue
            if status in (401, 403):
                raise AuthenticationError(
                    f"the grid's API refused the credentials ({status}: {_short(answer.text)})"
                )
            retryable = status == 429 or (idempotent and status in RETRY_STATUSES)
            if retryable and attempt + 1 < self.policy.attempts:
                self._pause(path, attempt, f"HTTP {status}")
                attempt += 1
                continue
            if not idempotent and status >= 500:
                raise SubmitOutcomeUnknown(f"HTTP {status}: {_short(answer.text)}", status)
            raise APIError(
                f"/{path} failed with HTTP {status}: {_short(answer.text)}", status, answer.text
            )

    def _pause(self, path: str, attempt: int, reason: str) -> None:
        delay = self.policy.delay(attempt)
        logger.warning(
            "/%s: %s; retrying in %.2f s (attempt %d of %d)",
            path,
            reason,
            delay,
            attempt + 2,
            self.policy.attempts,
        )
        time.sleep(delay)


def _short(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
