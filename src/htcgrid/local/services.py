"""The embedded grid's AWS services: moto's server on a loopback port, in a process of its own.

Run as ``python -m htcgrid.local.services``. The process prints one JSON line,
``{"endpoint": "http://127.0.0.1:PORT"}``, then serves S3, SQS, DynamoDB and Cognito until its
standard input reaches end of file (the parent closed it, or died) or it receives SIGTERM.

moto's application is served by waitress rather than by moto's own ``ThreadedMotoServer``:
that one runs werkzeug's development server, which closes the connection after every answer
and starts a thread for every request; waitress keeps boto3's connections alive and runs
requests on a fixed pool of threads. On this project's machine that took a third off the
server's CPU time per request, the embedded grid's largest cost.

Like every process of the embedded grid, it lives exactly as long as the pipe its parent
holds open (:class:`htcgrid.local.cli.Lifeline`).
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from . import cli, moto_tuning

logger = logging.getLogger(__name__)

#: The only address the embedded grid listens on.
LOOPBACK = "127.0.0.1"
#: What a call to the local AWS services raises when it fails (for ``except`` clauses).
AWS_ERRORS: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
#: Threads serving requests. An SQS receive holds its thread for as long as it long-polls
#: (up to a second), so there must be room for every agent's receive and still for the other
#: requests: enough for a hundred agents, far more than two cores can use. An idle thread
#: costs next to nothing.
SERVER_THREADS = 128
#: Open connections a server accepts: every boto3 client in the grid and in its clients keeps
#: a pool of them alive (up to ten each, 32 for a client's data plane). Past the limit a
#: server accepts nothing until a connection closes, so the limit is high and idle
#: connections are closed after IDLE_TIMEOUT_SEC (boto3 opens a new one when it needs it).
CONNECTION_LIMIT = 10_000
IDLE_TIMEOUT_SEC = 30


def moto_application() -> Any:
    """moto's WSGI application (every service), remembering which backend serves which host.

    moto finds the backend of a request from its host, or from its signature's credential
    scope, and for each request lists moto's package directory to do so; the answer for a host
    never changes, so it is looked up once. The request line reaches moto as werkzeug would
    pass it, which S3 keys depend on.
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    class _Dispatcher(DomainDispatcherApplication):
        def __init__(self) -> None:
            super().__init__(create_backend_app)
            self._backends: dict[str | None, Any] = {}

        def get_backend_for_host(self, host: str | None) -> Any:
            try:
                return self._backends[host]
            except KeyError:
                backend = self._backends[host] = super().get_backend_for_host(host)
                return backend

        def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
            # moto reads an S3 key from the request line as sent (werkzeug's RAW_URI), and
            # otherwise from the decoded path, in which "a%3Fb" and "a?b", or "a%2Fb" and
            # "a/b", are the same key. Waitress calls the request line REQUEST_URI.
            if "RAW_URI" not in environ and "REQUEST_URI" in environ:
                environ["RAW_URI"] = environ["REQUEST_URI"]
            return super().__call__(environ, start_response)

    return _Dispatcher()


def make_server(port: int = 0) -> Any:
    """A waitress server of moto's application on 127.0.0.1 (not yet running).

    ``asyncore_use_poll``: waitress otherwise watches its sockets with ``select()``, which
    fails for good once a descriptor passes 1023, well within :data:`CONNECTION_LIMIT`.
    """
    from waitress.server import create_server

    return create_server(
        moto_application(),
        host=LOOPBACK,
        port=port,
        threads=SERVER_THREADS,
        connection_limit=CONNECTION_LIMIT,
        channel_timeout=IDLE_TIMEOUT_SEC,
        asyncore_use_poll=True,
        ident="htcgrid-moto",
    )


def main() -> int:
    """Start moto's server on a free loopback port and serve until released.

    The exit status is 0 after a requested stop, 1 if the server stopped by itself.
    """
    cli.configure_logging()
    # Room for the connections: as many open files as the system lets this process have.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            logger.info("cannot raise the open-file limit from %d: %s", soft, exc)
    moto_tuning.apply_all()
    lifeline = cli.Lifeline()
    server = make_server()
    failed = threading.Event()

    def serve() -> None:
        try:
            server.run()
        except BaseException:
            logger.exception("the AWS services' server failed")
        # Whether it raised or returned, nothing is served any more: the process must end, so
        # that the grid sees a dead child rather than a silent port.
        failed.set()
        lifeline.released.set()

    threading.Thread(target=serve, name="waitress", daemon=True).start()
    endpoint = f"http://{LOOPBACK}:{server.effective_port}"
    logger.info("AWS services listening at %s", endpoint)
    cli.announce(endpoint=endpoint)

    lifeline.hold()
    # moto keeps everything in memory, so there is nothing to flush: the process's exit closes
    # the socket.
    logger.info("AWS services stopping")
    return 1 if failed.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
