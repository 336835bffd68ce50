"""Authentication to the grid's API: Cognito ID tokens (public mode) or an api key (private).

The ID token goes raw in the ``Authorization`` header, as HTC-Grid's API Gateway expects. It
is refreshed with the refresh token shortly before it expires, and again whenever the API
answers 401; if the refresh token itself is refused, the user signs in again.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
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


class ApiKeyAuth(Authenticator):
    """Private mode: the grid's api key in ``x-api-key``; no sign-in."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self._api_key}

    def __repr__(self) -> str:
        return "ApiKeyAuth(api_key=<hidden>)"


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

    def __repr__(self) -> str:
        return f"CognitoAuth(user={self.username!r}, pool={self.config.user_pool_id!r})"

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
                f"cannot reach the grid's Cognito service to sign in: {exc}"
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
                        f"cannot reach the grid's Cognito service to refresh the token: {exc}"
                    ) from None
            self._store(self._authenticate())
