"""The embedded grid's API: /submit, /result and /cancel over HTTP on a loopback port.

Run as ``python -m htcgrid.local.gateway --config PATH``. The process waits for PATH to exist
(up to a minute), prints one JSON line, ``{"url": "http://127.0.0.1:PORT/v1"}``, once it
serves, then serves until its standard input reaches end of file or it receives SIGTERM.

It answers as HTC-Grid's API Gateway does: one ``submission_content`` query parameter, no body,
the ID token as the raw ``Authorization`` header (or the api key as ``x-api-key``), 542/543
with a short text when the backend fails. Unlike a crashing lambda, a malformed request gets
a 4xx with a message saying what is wrong. Stack traces go to the log, never to the client.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from .. import protocol
from ..config import GridConfig, load_config
from ..dataplane import open_dataplane
from ..errors import ConfigError, HTCGridError
from .cli import Lifeline, announce, configure_logging
from .handlers import (
    CANCEL_WORKERS,
    GridHandlers,
    InvalidRequestError,
    SessionExistsError,
    SubmitFailedError,
    UnknownSessionError,
)
from .services import LOOPBACK
from .settings import GridSettings
from .statetable import StateTable
from .taskqueue import TaskQueue
from .tokens import InvalidTokenError, JWKSUnavailableError, TokenVerifier

logger = logging.getLogger(__name__)

#: The API stage, as in a real deployment's ``.../v1`` urls.
STAGE = "v1"
API_KEY_HEADER = "x-api-key"
#: HTC-Grid's status codes for a failed backend call.
SUBMIT_FAILED = 543
BACKEND_FAILED = 542

_ERROR_STATUS: dict[type[Exception], int] = {
    InvalidRequestError: 400,
    InvalidTokenError: 401,
    UnknownSessionError: 404,
    SessionExistsError: 409,
    SubmitFailedError: SUBMIT_FAILED,
}

_URL_KEYS = ("public_api_gateway_url", "private_api_gateway_url")
#: Seconds the gateway waits for its configuration file: the grid starts the gateway while it
#: creates the resources the file names, so that both take their time at once.
CONFIG_WAIT_SEC = 60.0


def _json(status: int, value: Any) -> Response:
    return Response(protocol.json_dumps(value), status=status, mimetype="application/json")


def _text(status: int, text: str) -> Response:
    return Response(text, status=status, mimetype="text/plain")


class Gateway:
    """The WSGI application: routing, authentication, parameters, error mapping.

    Parameters
    ----------
    handlers : GridHandlers
        What the three calls do.
    verifier : TokenVerifier
        Checks the ``Authorization`` header of public requests.
    api_key : str
        The key private requests send as ``x-api-key``.
    """

    def __init__(self, handlers: GridHandlers, verifier: TokenVerifier, api_key: str) -> None:
        self.handlers = handlers
        self.verifier = verifier
        self._api_key = api_key.encode("utf-8")
        # path -> (method, call, status when the backend fails)
        self._routes: dict[str, tuple[str, Callable[[Request], Any], int]] = {
            f"/{STAGE}/submit": ("POST", self._submit, SUBMIT_FAILED),
            f"/{STAGE}/result": ("GET", self._result, BACKEND_FAILED),
            f"/{STAGE}/cancel": ("POST", self._cancel, BACKEND_FAILED),
        }

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        started = time.perf_counter()
        response = self.dispatch(request)
        logger.info(
            "%s %r %d %.1f ms",
            request.method,
            request.path[:200],
            response.status_code,
            (time.perf_counter() - started) * 1000,
        )
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        """Answer one request; never raises."""
        route = self._routes.get(request.path.rstrip("/"))
        if route is None:
            return _json(404, {"message": f"no such resource: {request.path[:200]}"})
        method, call, failure_status = route
        if request.method != method:
            response = _json(405, {"message": f"{request.path} takes {method} only"})
            response.headers["Allow"] = method
            return response
        try:
            refused = self._authenticate(request)
            if refused is not None:
                return refused
            return _json(200, call(request))
        except tuple(_ERROR_STATUS) as exc:
            status = next(code for kind, code in _ERROR_STATUS.items() if isinstance(exc, kind))
            if status >= 500:
                return _text(status, str(exc))
            return _json(status, {"message": str(exc)})
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            return _text(failure_status, f"internal error of the grid in {request.path}")

    def _authenticate(self, request: Request) -> Response | None:
        key = request.headers.get(API_KEY_HEADER)
        if key is not None and hmac.compare_digest(key.encode("utf-8"), self._api_key):
            return None
        token = request.headers.get("Authorization")
        if token:
            self.verifier.verify(token)
            return None
        if key is not None:
            return _json(403, {"message": "Forbidden: invalid api key"})
        return _json(401, {"message": "Unauthorized: no Authorization header (the ID token)"})

    @staticmethod
    def _parameter(request: Request) -> str:
        value = request.args.get(protocol.QUERY_PARAMETER)
        if value is None:
            raise InvalidRequestError(f"missing the {protocol.QUERY_PARAMETER} query parameter")
        return value

    def _decoded(self, request: Request, key: str) -> Any:
        try:
            value = protocol.decode_query(self._parameter(request))
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        if not isinstance(value, dict) or key not in value:
            raise InvalidRequestError(
                f"{protocol.QUERY_PARAMETER} must encode a JSON object with a {key!r} key"
            )
        return value[key]

    def _submit(self, request: Request) -> Any:
        return self.handlers.submit(self._parameter(request))

    def _result(self, request: Request) -> Any:
        session_id = self._decoded(request, "session_id")
        if not isinstance(session_id, str):
            raise InvalidRequestError("session_id must be a string")
        return self.handlers.result(session_id)

    def _cancel(self, request: Request) -> Any:
        session_ids = self._decoded(request, "session_ids_to_cancel")
        if not isinstance(session_ids, list) or not all(isinstance(s, str) for s in session_ids):
            raise InvalidRequestError("session_ids_to_cancel must be a list of session ids")
        return self.handlers.cancel(session_ids)


class _QuietRequestHandler(WSGIRequestHandler):
    # The gateway logs each request itself, without the query string.
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def load_gateway_config(path: str | Path, url: str) -> GridConfig:
    """Load the grid's configuration, naming ``url`` as the API where the file names none.

    The file is written before the gateway starts, so it cannot know the gateway's port yet.

    Raises
    ------
    ConfigError
        The file is unreadable, not JSON, or lacks a key.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the grid configuration {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"grid configuration file {path} must hold a JSON object")
    for key in _URL_KEYS:
        if not data.get(key):
            data[key] = url
    return load_config(data, private=False)


def build_gateway(config: GridConfig) -> Gateway:
    """Return the gateway application of a grid configuration."""
    if not config.aws_endpoint_url:
        raise ConfigError("the gateway serves the embedded grid only: 'aws_endpoint_url' is unset")
    settings = GridSettings.from_config(config)
    handlers = GridHandlers(
        StateTable(config, max_pool_connections=CANCEL_WORKERS + 2),
        TaskQueue(config),
        open_dataplane(config, max_workers=4),
    )
    verifier = TokenVerifier(
        config.aws_endpoint_url,
        config.region,
        config.user_pool_id,
        config.client_id,
        settings.token_lifetime_sec,
    )
    return Gateway(handlers, verifier, config.api_key)


def _await_file(path: Path, lifeline: Lifeline) -> bool:
    """Wait until ``path`` exists; False if released first or after ``CONFIG_WAIT_SEC``."""
    deadline = time.monotonic() + CONFIG_WAIT_SEC
    while not path.exists():
        if lifeline.released.wait(0.01) or time.monotonic() > deadline:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Serve the API on a free loopback port until released."""
    parser = argparse.ArgumentParser(
        prog="python -m htcgrid.local.gateway",
        description="Serve the embedded HTC-Grid's API until standard input closes.",
    )
    parser.add_argument("--config", required=True, help="the grid's agent_config.json")
    args = parser.parse_args(argv)
    configure_logging()
    lifeline = Lifeline()
    config_path = Path(args.config)
    if not _await_file(config_path, lifeline):
        logger.error("gateway: no configuration appeared at %s", config_path)
        return 2

    # Bound first: the configuration names the url, which needs the port.
    server = make_server(
        LOOPBACK,
        0,
        lambda environ, start_response: [],
        threaded=True,
        request_handler=_QuietRequestHandler,
    )
    url = f"http://{LOOPBACK}:{server.server_port}/{STAGE}"
    try:
        gateway = build_gateway(load_gateway_config(config_path, url))
    except (HTCGridError, ValueError, BotoCoreError, ClientError) as exc:
        logger.error("gateway cannot start: %s", exc)
        server.server_close()
        return 2
    server.app = gateway
    try:
        gateway.verifier.keys()
    except JWKSUnavailableError as exc:
        logger.warning("signing keys not fetched yet (will retry per request): %s", exc)

    serving = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="gateway"
    )
    serving.start()
    feeding = threading.Thread(
        target=gateway.handlers.dispatcher.run, args=(lifeline.released,), name="dispatcher"
    )
    feeding.start()
    logger.info("API listening at %s", url)
    announce(url=url)
    lifeline.hold()
    server.shutdown()
    # The dispatcher may be in a pause of up to a second; it sees the stop when woken.
    gateway.handlers.dispatcher.wake()
    serving.join()
    feeding.join()
    server.server_close()
    logger.info("API stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
