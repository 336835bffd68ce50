"""Added network latency for the benchmarks: a delaying TCP proxy on 127.0.0.1.

The embedded grid listens on 127.0.0.1 only, so the benchmark puts a proxy in front of each of
its loopback endpoints (the AWS services and the API) and hands the clients a copy of the grid's
configuration whose URLs point at the proxy. The proxy is a delay line on the request path:

- every chunk of bytes a client sends is forwarded to the grid ``delay`` seconds after it
  arrived (chunks keep their order; a request split into several chunks is delayed once, not
  once per chunk, as on a real link with spare bandwidth);
- bytes from the grid back to the client are not delayed.

So every request/response exchange takes ``delay`` longer, as if the client sat ``delay`` of
round-trip time away from the grid (a notebook outside the AWS region), and both the client
under test and the baseline pay the same. Opening a connection costs nothing extra: against
AWS a client keeps its connections alive and pays one round trip per request, while the
embedded grid's servers close the connection after every answer, so charging for the handshake
here would charge each request twice. The proxy runs in a process of its own (``python -m
benchmarks.latency --delay-ms 20 HOST:PORT ...``) so that it does not compete with the client
for the interpreter lock; it prints one JSON line mapping each upstream to its listening
address, and serves until its standard input closes or it receives SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

LOOPBACK = "127.0.0.1"
_URL_RE = re.compile(r"^(https?://)(127\.0\.0\.1|localhost):(\d+)(.*)$")
_CHUNK = 65536
_READY_TIMEOUT_SEC = 20.0


# --- the proxy process -------------------------------------------------------------------


async def _forward_delayed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` after its arrival, in order."""
    loop = asyncio.get_running_loop()
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        try:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(_CHUNK):
                    line.put_nowait((loop.time() + delay, data))
        finally:
            # End of stream, a reset or a cancel: the sender stops after what came before.
            line.put_nowait((loop.time() + delay, b""))

    receiving = asyncio.create_task(receive())
    try:
        while True:
            due, data = await line.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
    finally:
        receiving.cancel()


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()


async def _relay(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream: tuple[str, int],
    delay: float,
) -> None:
    try:
        grid_reader, grid_writer = await asyncio.open_connection(*upstream)
    except OSError:
        client_writer.close()
        return
    request_path = asyncio.create_task(_forward_delayed(client_reader, grid_writer, delay))
    try:
        # The connection is over when the grid's side closes (HTTP servers close, clients
        # rarely half-close); a client that goes away ends the request path, then this.
        await _forward(grid_reader, client_writer)
    except (ConnectionError, OSError):
        pass
    finally:
        request_path.cancel()
        for writer in (client_writer, grid_writer):
            writer.close()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await request_path


async def _serve(upstreams: list[tuple[str, int]], delay: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def watch_stdin() -> None:
        # The parent holds the other end of stdin: when it closes or dies, the proxy goes.
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()

    routes: dict[str, str] = {}
    servers = []
    connections: set[asyncio.Task[None]] = set()
    for host, port in upstreams:

        async def handle(
            reader: asyncio.StreamReader,
            writer: asyncio.StreamWriter,
            target: tuple[str, int] = (host, port),
        ) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await _relay(reader, writer, target, delay)
            except asyncio.CancelledError:
                # Shutting down: the connection just ends; nothing to report.
                pass
            finally:
                connections.discard(task)

        server = await asyncio.start_server(handle, LOOPBACK, 0)
        servers.append(server)
        listening = server.sockets[0].getsockname()
        routes[f"{host}:{port}"] = f"{listening[0]}:{listening[1]}"
    sys.stdout.write(json.dumps(routes) + "\n")
    sys.stdout.flush()

    await stop.wait()
    for server in servers:
        server.close()
    for task in list(connections):
        task.cancel()
    await asyncio.gather(*connections, return_exceptions=True)


def _parse_upstream(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host not in (LOOPBACK, "localhost"):
        raise argparse.ArgumentTypeError(f"only loopback upstreams are allowed, not {text!r}")
    return LOOPBACK, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A delaying TCP proxy on 127.0.0.1.")
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("upstreams", nargs="+", type=_parse_upstream, metavar="HOST:PORT")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.upstreams, args.delay_ms / 1000))
    return 0


# --- the parent's side -------------------------------------------------------------------


def _urls(value: Any) -> Iterator[re.Match[str]]:
    """Every loopback URL in a configuration value, however deeply nested."""
    if isinstance(value, str):
        match = _URL_RE.match(value)
        if match:
            yield match
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _urls(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _urls(item)


def loopback_endpoints(config: Mapping[str, Any]) -> list[str]:
    """The ``127.0.0.1:PORT`` of every loopback URL in a grid configuration, sorted."""
    return sorted({f"{LOOPBACK}:{match.group(3)}" for match in _urls(config)})


def rewrite_config(config: Mapping[str, Any], routes: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``config`` whose loopback URLs go through the proxy's listening addresses.

    Every URL is rewritten, nested ones included, not just those this version of the client
    reads, so that a client reading another endpoint key (one per AWS service, say) still
    goes through the proxy.
    """

    def rewrite(value: Any) -> Any:
        if isinstance(value, str):
            match = _URL_RE.match(value)
            if not match:
                return value
            upstream = f"{LOOPBACK}:{match.group(3)}"
            return f"{match.group(1)}{routes[upstream]}{match.group(4)}"
        if isinstance(value, Mapping):
            return {key: rewrite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [rewrite(item) for item in value]
        return value

    return {key: rewrite(value) for key, value in config.items()}


class DelayProxy:
    """The proxy process in front of a grid's loopback endpoints, as a context manager.

    Examples
    --------
    >>> with DelayProxy(grid.config.raw, delay_ms=20) as proxy:  # doctest: +SKIP
    ...     connector.init(proxy.config, username, password)
    """

    def __init__(self, config: Mapping[str, Any], delay_ms: float) -> None:
        self.delay_ms = delay_ms
        self._grid_config = dict(config)
        self._process: subprocess.Popen[bytes] | None = None
        self.routes: dict[str, str] = {}
        self.config: dict[str, Any] = {}

    def start(self) -> DelayProxy:
        upstreams = loopback_endpoints(self._grid_config)
        if not upstreams:
            raise RuntimeError("the grid configuration names no loopback endpoint to delay")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.latency", "--delay-ms", str(self.delay_ms)]
            + upstreams,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], _READY_TIMEOUT_SEC)
        line = self._process.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise RuntimeError("the delaying proxy did not start")
        self.routes = json.loads(line)
        self.config = rewrite_config(self._grid_config, self.routes)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def measure_added_latency(direct_url: str, proxied_url: str, samples: int = 10) -> float:
    """Median extra seconds of one HTTP exchange through the proxy, on kept-alive connections.

    A check that the proxy adds what it claims; the URL may answer anything (401 is fine).
    """
    import requests

    def median_exchange(url: str) -> float:
        with requests.Session() as http:
            http.get(url, timeout=10)  # opens the connection: not counted
            times = []
            for _ in range(samples):
                started = time.perf_counter()
                http.get(url, timeout=10)
                times.append(time.perf_counter() - started)
        times.sort()
        return times[len(times) // 2]

    return median_exchange(proxied_url) - median_exchange(direct_url)


if __name__ == "__main__":
    sys.exit(main())
