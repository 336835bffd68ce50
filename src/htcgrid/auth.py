"""Authentication to the grid's API: Cognito ID tokens (public mode) or an api key (private).

The ID token goes raw in the ``Authorization`` header, as HTC-Grid's API Gateway expects. It
is refreshed with the refresh token shortly before it expires, and again whenever the API
answers 401; if the refresh token itself is refused, the user signs in again.

Secrets stay out of log records. htcgrid's own loggers never format a password, token or api
key. botocore, at DEBUG level, logs the body of every request and response, and Cognito's
carry the password and the tokens: so a :class:`SecretRedactor` filter is attached to those
botocore loggers when a :class:`CognitoAuth` is made. It changes no level and adds no handler
(the application decides what is logged where); it only blanks secrets out of the records.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pycognito.aws_srp import AWSSRP
from pycognito.exceptions import ForceChangePasswordException

from . import aws
from .config import AUTH_PASSWORD, GridConfig
from .errors import AuthenticationError, GridUnreachableError

logger = logging.getLogger(__name__)

#: Refresh the ID token this many seconds before it expires (at most half its lifetime).
REFRESH_MARGIN_SEC = 300

#: botocore's loggers that write requests, responses or what is signed, at DEBUG level.
BOTOCORE_BODY_LOGGERS = (
    "botocore.endpoint",
    "botocore.parsers",
    "botocore.awsrequest",
    "botocore.auth",
    "botocore.httpsession",
)
#: Fields of Cognito (and STS) requests and answers whose values are secrets.
_SECRET_FIELDS = (
    "PASSWORD|Password|TemporaryPassword|ProposedPassword|PreviousPassword|NEW_PASSWORD|"
    "REFRESH_TOKEN|SECRET_HASH|PASSWORD_CLAIM_SIGNATURE|IdToken|AccessToken|RefreshToken|"
    "Session|SecretAccessKey|SessionToken"
)
_SECRET_FIELD_RE = re.compile(
    rf"(?P<q>[\"'])(?P<key>{_SECRET_FIELDS})(?P=q)\s*:\s*(?P<v>[\"'])(?:\\.|(?!(?P=v)).)*(?P=v)"
)
#: A JSON Web Token (Cognito's ID and access tokens) wherever it appears.
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
REDACTED = "<redacted>"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with every secret blanked out.

    Blanked: the values of the secret fields of Cognito's JSON bodies (``PASSWORD``,
    ``IdToken``, ``RefreshToken``, ...), anything shaped like a JSON Web Token, and each of
    ``secrets`` wherever it occurs.

    Examples
    --------
    >>> redact('{"USERNAME": "alice", "PASSWORD": "s3cret"}')
    '{"USERNAME": "alice", "PASSWORD": "<redacted>"}'
    """
    text = _SECRET_FIELD_RE.sub(
        lambda m: f"{m['q']}{m['key']}{m['q']}: {m['v']}{REDACTED}{m['v']}", text
    )
    text = _JWT_RE.sub(REDACTED, text)
    for secret in secrets:
        # Short values would blank out ordinary words; real secrets are long.
        if len(secret) >= 8:
            text = text.replace(secret, REDACTED)
    return text


class SecretRedactor(logging.Filter):
    """A logging filter that blanks secrets out of records; it never drops a record.

    Besides the patterns of :func:`redact`, it blanks the current password and tokens of
    every live :class:`Authenticator` registered with :meth:`watch`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._sources: weakref.WeakSet[Authenticator] = weakref.WeakSet()

    def watch(self, source: Authenticator) -> None:
        with self._lock:
            self._sources.add(source)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return True
        with self._lock:
            sources = list(self._sources)
        secrets = [secret for source in sources for secret in source._secrets()]
        redacted = redact(message, secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACTOR = SecretRedactor()


def redact_botocore_logs(source: Authenticator | None = None) -> None:
    """Attach the redacting filter to botocore's body loggers (once); watch ``source``.

    Levels and handlers stay as the application set them.
    """
    if source is not None:
        _REDACTOR.watch(source)
    for name in BOTOCORE_BODY_LOGGERS:
        botocore_logger = logging.getLogger(name)
        if _REDACTOR not in botocore_logger.filters:
            botocore_logger.addFilter(_REDACTOR)


class Authenticator(ABC):
    """Supplies the headers that authenticate a request to the grid's API."""

    @abstractmethod
    def headers(self) -> dict[str, str]:
        """Return the authentication headers for the next request."""

    def refresh(self) -> None:  # noqa: B027 - an api key has nothing to refresh
        """Renew the credentials after the API refused them."""

    @property
    def signed_in(self) -> bool:
        return True

    def _secrets(self) -> list[str]:
        """The secrets this authenticator holds now, for log redaction."""
        return []


class ApiKeyAuth(Authenticator):
    """Private mode: the grid's api key in ``x-api-key``; no sign-in."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key
        redact_botocore_logs(self)

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self._api_key}

    def __repr__(self) -> str:
        return "ApiKeyAuth(api_key=<hidden>)"

    def _secrets(self) -> list[str]:
        return [self._api_key]


class CognitoAuth(Authenticator):
    """Public mode: sign in to the grid's Cognito user pool and keep the ID token fresh.

    A real deployment is signed in to with SRP (``USER_SRP_AUTH``, through pycognito); the
    embedded grid asks for ``USER_PASSWORD_AUTH`` in its configuration, because the AWS
    emulator it runs on does not check passwords in the SRP flow.
    """

    def __init__(self, config: GridConfig, username: str, password: str) -> None:
        self.config = config
        self.username = username
        self._password = password
        self._lock = threading.Lock()
        self._cognito = aws.client(config, "cognito-idp")
        self._id_token: str | None = None
        self._refresh_token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self._access_token: str | None = None
        redact_botocore_logs(self)

    def __repr__(self) -> str:
        return f"CognitoAuth(user={self.username!r}, pool={self.config.user_pool_id!r})"

    def _secrets(self) -> list[str]:
        held = (self._password, self._id_token, self._refresh_token, self._access_token)
        return [secret for secret in held if secret]

    @property
    def signed_in(self) -> bool:
        return self._id_token is not None

    def sign_in(self) -> None:
        """Sign in with the username and password; raise AuthenticationError if refused."""
        if not self.username or not self._password:
            raise AuthenticationError(
                "a username and password are needed to sign in to the grid's user pool: pass "
                "them to init() or set the USERNAME and PASSWORD environment variables"
            )
        with self._lock:
            self._store(self._authenticate())
        logger.info("signed in to user pool %s as %s", self.config.user_pool_id, self.username)

    def _authenticate(self) -> dict[str, Any]:
        try:
            if self.config.auth_flow == AUTH_PASSWORD:
                answer = self._cognito.initiate_auth(
                    ClientId=self.config.client_id,
                    AuthFlow=AUTH_PASSWORD,
                    AuthParameters={"USERNAME": self.username, "PASSWORD": self._password},
                )
            else:
                srp = AWSSRP(
                    username=self.username,
                    password=self._password,
                    pool_id=self.config.user_pool_id,
                    client_id=self.config.client_id,
                    client=self._cognito,
                )
                answer = srp.authenticate_user()
        except ForceChangePasswordException:
            raise AuthenticationError(
                f"user {self.username!r} must set a new password before signing in: do it once "
                "in the Cognito console or with 'aws cognito-idp admin-set-user-password'"
            ) from None
        except ClientError as exc:
            raise self._sign_in_error(exc) from None
        except BotoCoreError as exc:
            raise GridUnreachableError(
                f"the grid is unreachable: its Cognito service did not answer the sign-in "
                f"({exc}); check that the grid is running and that the configuration names it"
            ) from None
        if "AuthenticationResult" not in answer:
            challenge = answer.get("ChallengeName", "an unknown challenge")
            raise AuthenticationError(
                f"Cognito asks user {self.username!r} for {challenge}, which htcgrid does not "
                "support; use a user without MFA or other challenges"
            )
        return answer["AuthenticationResult"]

    def _sign_in_error(self, exc: ClientError) -> AuthenticationError:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NotAuthorizedException":
            return AuthenticationError(
                f"the grid refused the sign-in of user {self.username!r}: wrong username or "
                "password"
            )
        if code == "UserNotFoundException":
            return AuthenticationError(
                f"user {self.username!r} does not exist in user pool {self.config.user_pool_id}"
            )
        if code in ("ResourceNotFoundException", "InvalidParameterException"):
            return AuthenticationError(
                f"Cognito refused the sign-in ({code}): check 'user_pool_id' and "
                f"'cognito_userpool_client_id' in {self.config.source}"
            )
        return AuthenticationError(f"signing in as {self.username!r} failed: {code or exc}")

    def _store(self, result: dict[str, Any]) -> None:
        now = time.monotonic()
        lifetime = float(result.get("ExpiresIn", 3600))
        self._id_token = result["IdToken"]
        self._access_token = result.get("AccessToken")
        self._refresh_token = result.get("RefreshToken", self._refresh_token)
        self._expires_at = now + lifetime
        self._refresh_at = now + max(lifetime - min(REFRESH_MARGIN_SEC, lifetime / 2), 0.0)

    def headers(self) -> dict[str, str]:
        if self._id_token is None:
            raise AuthenticationError("not signed in: call authenticate() first")
        if time.monotonic() >= self._refresh_at:
            self.refresh()
        assert self._id_token is not None
        return {"Authorization": self._id_token}

    def refresh(self) -> None:
        """Renew the ID token with the refresh token, or sign in again if that is refused."""
        with self._lock:
            if self._refresh_token:
                try:
                    answer = self._cognito.initiate_auth(
                        ClientId=self.config.client_id,
                        AuthFlow="REFRESH_TOKEN_AUTH",
                        AuthParameters={"REFRESH_TOKEN": self._refresh_token},
                    )
                    self._store(answer["AuthenticationResult"])
                    logger.debug("refreshed the ID token of %s", self.username)
                    return
                except ClientError as exc:
                    logger.info(
                        "refresh token refused (%s); signing in again",
                        exc.response.get("Error", {}).get("Code"),
                    )
                except BotoCoreError as exc:
                    raise GridUnreachableError(
                        "the grid is unreachable: its Cognito service did not answer the "
                        f"token refresh ({exc})"
                    ) from None
            self._store(self._authenticate())
