"""Verifying Cognito ID tokens, as the embedded grid's gateway does for every public request.

The checks are those of API Gateway's Cognito authorizer: an RS256 signature by a key of the
user pool's JWKS, the pool as issuer, the app client as audience, ``token_use`` of ``id`` and
an expiry in the future. The gateway also refuses tokens older than the grid's configured
token lifetime, so that tests can see tokens expire within seconds instead of an hour.

Tokens never reach a log line or an error message.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import requests
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..errors import HTCGridError

logger = logging.getLogger(__name__)

#: Seconds to wait for the JWKS from the local Cognito endpoint.
JWKS_TIMEOUT_SEC = 5
#: Seconds a token's ``iat`` may lie in the future (clock skew between processes).
CLOCK_SKEW_SEC = 5
#: Longer headers are refused unread; Cognito ID tokens are a few kilobytes.
MAX_TOKEN_LENGTH = 16_384


class InvalidTokenError(HTCGridError):
    """The token was refused; the message is a short reason, safe to send to the client."""


class JWKSUnavailableError(HTCGridError):
    """The user pool's signing keys could not be fetched (not the client's fault)."""


class TokenVerifier:
    """Verifies ID tokens of one user pool and app client.

    Parameters
    ----------
    endpoint : str
        The local AWS endpoint serving the pool's JWKS at
        ``{endpoint}/{user_pool_id}/.well-known/jwks.json``.
    region : str
        The pool's region (part of the expected issuer).
    user_pool_id, client_id : str
        The user pool and its app client (the expected audience).
    lifetime_sec : int
        Tokens issued longer ago than this are refused, whatever their ``exp`` says.

    Examples
    --------
    >>> verifier = TokenVerifier(endpoint, "us-east-1", pool, client, 3600)  # doctest: +SKIP
    >>> verifier.verify(id_token)["cognito:username"]  # doctest: +SKIP
    'htcgrid-user'
    """

    def __init__(
        self, endpoint: str, region: str, user_pool_id: str, client_id: str, lifetime_sec: int
    ) -> None:
        self.jwks_url = f"{endpoint.rstrip('/')}/{user_pool_id}/.well-known/jwks.json"
        self.issuer = f"https://cognito-idp.{region}.amazonaws.com/{user_pool_id}"
        self.client_id = client_id
        self.lifetime_sec = lifetime_sec
        self._keys: KeySet | None = None
        self._lock = threading.Lock()

    def keys(self) -> KeySet:
        """Return the pool's signing keys, fetched on first use and kept.

        Raises
        ------
        JWKSUnavailableError
            The endpoint did not answer with a valid JWKS; the next call tries again.
        """
        with self._lock:
            if self._keys is None:
                try:
                    answer = requests.get(self.jwks_url, timeout=JWKS_TIMEOUT_SEC)
                    answer.raise_for_status()
                    self._keys = KeySet.import_key_set(answer.json())
                except (requests.RequestException, ValueError, JoseError) as exc:
                    raise JWKSUnavailableError(
                        f"cannot fetch the user pool's signing keys from {self.jwks_url}: {exc}"
                    ) from exc
                logger.info("fetched %d signing key(s) of the user pool", len(self._keys.keys))
            return self._keys

    def verify(self, token: str, *, now: float | None = None) -> dict[str, Any]:
        """Return the claims of a valid ID token.

        Parameters
        ----------
        token : str
            The raw value of the ``Authorization`` header.
        now : float, optional
            The current time in epoch seconds (for tests); the clock otherwise.

        Raises
        ------
        InvalidTokenError
            The token is malformed, badly signed, for another pool or client, not an ID
            token, expired, or older than the configured lifetime.
        JWKSUnavailableError
            The signing keys could not be fetched.
        """
        if not token:
            raise InvalidTokenError("no token")
        if token.lower().startswith("bearer "):
            raise InvalidTokenError("send the raw ID token, without the 'Bearer ' prefix")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidTokenError("token too long")
        keys = self.keys()
        try:
            claims = jwt.decode(token, keys, algorithms=["RS256"]).claims
        except JoseError as exc:
            raise InvalidTokenError(f"token is malformed or badly signed ({exc.error})") from None
        except (ValueError, TypeError):
            raise InvalidTokenError("token is malformed") from None
        self._check_claims(claims, time.time() if now is None else now)
        return claims

    def _check_claims(self, claims: dict[str, Any], now: float) -> None:
        if claims.get("iss") != self.issuer:
            raise InvalidTokenError("token was issued by another user pool")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.client_id not in audiences:
            raise InvalidTokenError("token was issued to another app client")
        if claims.get("token_use") != "id":
            raise InvalidTokenError("not an ID token (send the ID token, not the access token)")
        expiry = _number(claims.get("exp"))
        issued = _number(claims.get("iat"))
        if expiry is None or issued is None:
            raise InvalidTokenError("token lacks its expiry or issue time")
        if now >= expiry:
            raise InvalidTokenError("token has expired")
        if issued > now + CLOCK_SKEW_SEC:
            raise InvalidTokenError("token was issued in the future")
        if now - issued > self.lifetime_sec:
            raise InvalidTokenError("token has expired")


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
