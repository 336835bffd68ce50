"""A fault-injecting HTTP proxy in front of a grid's API, on a loopback port, for tests.

Each call (``submit``, ``result``, ``cancel``) has a script of faults: each request of that
call takes the next fault of its script, and passes through untouched once the script is
empty. A fault either acts before forwarding (the grid never sees the request) or after (the
grid acted, then the client is told something else)::

    with FaultProxy(grid.api_url) as proxy:
        proxy.script("submit", status_after(543))   # the reference grid's 543 after queueing
        proxy.script("result", RESET_BEFORE, status_before(503))
        connector = connector_for(proxy.url)
        ...
        assert proxy.outcomes("submit") == ["543 after 200"]

``reference_results`` makes /result answer as a real HTC-Grid does: without the embedded
grid's per-state counts and task details, and with empty lists (not 404) for a session the
grid does not know.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

from htcgrid import protocol

#: Seconds the proxy waits for the grid's answer.
UPSTREAM_TIMEOUT_SEC = 30
CALLS = ("submit", "result", "cancel")


@dataclass(frozen=True)
class Fault:
    """What happens to one request.

    Attributes
    ----------
    action : str
        ``"pass"``, ``"reset"`` (the connection is reset without an answer) or ``"status"``
        (the client gets ``status`` with a short text body).
    forward : bool
        Whether the grid gets the request first.
    status : int
        The status code of a ``"status"`` fault.
    body : str
        Its body.
    """

    action: str
    forward: bool
    status: int = 0
    body: str = ""

    @property
    def name(self) -> str:
        what = "reset" if self.action == "reset" else str(self.status)
        return f"{what} {'after' if self.forward else 'before'}"


PASS = Fault("pass", forward=True)
RESET_BEFORE = Fault("reset", forward=False)
RESET_AFTER = Fault("reset", forward=True)


def status_before(status: int, body: str = "") -> Fault:
    """Answer ``status`` without forwarding the request."""
    return Fault("status", False, status, body or f"injected {status}")


def status_after(status: int, body: str = "") -> Fault:
    """Forward the request, then answer ``status`` instead of the grid's answer."""
    return Fault("status", True, status, body or f"injected {status}")


@dataclass(frozen=True)
class Exchange:
    """One request through the proxy: the call, its query, the fault, the grid's status."""

    call: str
    query: str
    fault: Fault
    upstream_status: int | None

    @property
    def outcome(self) -> str:
        """E.g. ``"pass 200"``, ``"503 before"``, ``"reset after 200"``."""
        if self.fault.action == "pass":
            return f"pass {self.upstream_status}"
        if self.fault.forward:
            return f"{self.fault.name} {self.upstream_status}"
        return self.fault.name


class FaultProxy:
    """A loopback HTTP proxy to ``upstream`` (a stage URL such as ``http://127.0.0.1:P/v1``).

    Parameters
    ----------
    upstream : str
        The grid's API stage URL; the proxy serves the same stage path.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream_host = parts.hostname or "127.0.0.1"
        self._upstream_port = parts.port or 80
        self._stage = parts.path.rstrip("/")
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Fault]] = {call: deque() for call in CALLS}
        self._always: Fault | None = None
        self._exchanges: list[Exchange] = []
        self.reference_results = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fault-proxy",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The proxy's stage URL, to put in a configuration in place of the grid's."""
        return f"http://127.0.0.1:{self._server.server_port}{self._stage}"

    # --- scripting ---------------------------------------------------------------------

    def script(self, call: str, *faults: Fault) -> None:
        """Queue ``faults`` for the next requests of ``call``, in order."""
        with self._lock:
            self._scripts[call].extend(faults)

    def always(self, fault: Fault | None) -> None:
        """Apply ``fault`` to every request with an empty script (``None``: pass again)."""
        with self._lock:
            self._always = fault

    def _next(self, call: str) -> Fault:
        with self._lock:
            script = self._scripts.get(call)
            if script:
                return script.popleft()
            return self._always or PASS

    # --- what happened -----------------------------------------------------------------

    def exchanges(self, call: str | None = None) -> list[Exchange]:
        with self._lock:
            return [e for e in self._exchanges if call is None or e.call == call]

    def outcomes(self, call: str) -> list[str]:
        """The outcome of each request of ``call`` so far, in order."""
        return [e.outcome for e in self.exchanges(call)]

    def forwarded(self, call: str) -> int:
        """How many requests of ``call`` the grid received."""
        return sum(e.fault.forward for e in self.exchanges(call))

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self._exchanges.append(exchange)

    # --- forwarding --------------------------------------------------------------------

    def _forward(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection(
            self._upstream_host, self._upstream_port, timeout=UPSTREAM_TIMEOUT_SEC
        )
        try:
            connection.request(method, path, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
            return answer.status, answer.getheader("Content-Type", "text/plain"), body
        finally:
            connection.close()

    def _as_reference(self, status: int, body: bytes) -> tuple[int, bytes]:
        """A /result answer as a real HTC-Grid gives it (terminal lists only)."""
        if status == 404:
            return 200, protocol.json_dumps(protocol.results_answer({})).encode()
        if status != 200:
            return status, body
        answer = json.loads(body)
        answer.pop(protocol.COUNTS_FIELD, None)
        answer.pop(protocol.TASKS_FIELD, None)
        return 200, protocol.json_dumps(answer).encode()

    # --- life cycle --------------------------------------------------------------------

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so that a reset never hits a pooled connection.
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: object) -> None:
        # The query strings are the test's business; stderr stays quiet.
        pass

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        path, _, query = self.path.partition("?")
        call = path.rstrip("/").rsplit("/", 1)[-1]
        fault = proxy._next(call)
        headers = {
            name: value
            for name, value in self.headers.items()
            if name.lower() in ("authorization", "x-api-key", "content-type")
        }

        upstream: tuple[int, str, bytes] | None = None
        if fault.forward:
            upstream = proxy._forward(self.command, self.path, headers)
        proxy._record(Exchange(call, query, fault, upstream[0] if upstream else None))

        if fault.action == "reset":
            self._reset()
        elif fault.action == "status":
            self._answer(fault.status, "text/plain", fault.body.encode())
        else:
            assert upstream is not None
            status, content_type, body = upstream
            if call == "result" and proxy.reference_results:
                status, body = proxy._as_reference(status, body)
            self._answer(status, content_type, body)

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout: closing sends a TCP reset, not an orderly end.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()
