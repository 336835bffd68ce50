"""The worker process: runs an agent's task handler in a child process of its own.

A handler that crashes the interpreter, calls ``os._exit``, hangs or leaks memory takes only
its worker down; the agent sees the attempt end as *died*, *timed out* or *stopped*, kills the
worker and starts a fresh one for the next task. The worker imports the handler once and then
serves one task at a time over a pipe.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .. import protocol

logger = logging.getLogger(__name__)

#: How often a running attempt checks its deadline and its stop request.
POLL_SEC = 0.05
#: How long a new worker may take to import its handler.
START_TIMEOUT_SEC = 120.0

_SPEC_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_READY = "ready"
_LOAD_FAILED = "load-failed"
_RETURNED = "returned"
_RAISED = "raised"


class HandlerSpecError(ValueError):
    """The handler spec is malformed, or its module or function cannot be loaded."""


class Ending(enum.Enum):
    """How an attempt ended."""

    OK = "ok"
    #: The handler raised, or returned a value that is not JSON-serialisable.
    FAILED = "failed"
    DIED = "died"
    TIMED_OUT = "timed out"
    #: The caller asked the attempt to stop (the task was cancelled or taken away).
    STOPPED = "stopped"


@dataclass(frozen=True)
class Outcome:
    """The end of one attempt: the handler's return value, or the text saying what went wrong.

    Attributes
    ----------
    ending : Ending
        How the attempt ended.
    value : object
        The handler's return value, as it reads back from JSON (only when ``ok``).
    error : str
        Empty when ``ok``; otherwise the error's type and message on the first line, then the
        traceback when there is one.
    """

    ending: Ending
    value: Any = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.ending is Ending.OK


@dataclass(frozen=True)
class HandlerContext:
    """What a handler learns about its attempt, in the spirit of a Lambda function's context.

    Attributes
    ----------
    task_id, session_id, agent_id : str
        The task, its session and the agent running it (empty when not known).
    deadline_s : float
        Epoch seconds at which the attempt times out (:meth:`WorkerProcess.run` sets it).
    """

    task_id: str = ""
    session_id: str = ""
    agent_id: str = ""
    deadline_s: float = 0.0

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the attempt times out (as Lambda's context offers)."""
        return max(0, int((self.deadline_s - time.time()) * 1000))


def check_handler_spec(spec: str) -> tuple[str, str]:
    """Split a ``"module:function"`` handler spec, or raise :class:`HandlerSpecError`."""
    if not isinstance(spec, str) or not _SPEC_RE.match(spec):
        raise HandlerSpecError(
            f"invalid handler spec {spec!r}: expected 'module:function', for example "
            "'htcgrid.workers:mock_compute_engine'"
        )
    module, function = spec.split(":")
    return module, function


def load_handler(spec: str) -> Callable[[Any, Any], Any]:
    """Import the function a handler spec names; raise :class:`HandlerSpecError` if it fails."""
    module_name, function_name = check_handler_spec(spec)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise HandlerSpecError(
                f"handler module {module_name!r} (of handler spec {spec!r}) was not found: "
                "is it installed, or on the agents' PYTHONPATH?"
            ) from None
        raise HandlerSpecError(
            f"importing the module of handler spec {spec!r} raised {_describe(exc)}"
        ) from None
    handler = getattr(module, function_name, None)
    if handler is None:
        raise HandlerSpecError(
            f"handler module {module_name!r} has no function {function_name!r} "
            f"(handler spec {spec!r})"
        )
    if not callable(handler):
        raise HandlerSpecError(
            f"handler spec {spec!r} names a value of type {type(handler).__name__}, not a function"
        )
    return handler


def _describe(exc: BaseException) -> str:
    """The error's type, message and full traceback, summary first."""
    summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return f"{summary}\n\n{''.join(traceback.format_exception(exc)).rstrip()}"


# --- the child process -------------------------------------------------------------------


def _exit_with_parent() -> None:
    """End this worker as soon as its agent is gone, even in the middle of a handler."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def _watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=_watch, name="parent-watch", daemon=True).start()


def _call(handler: Callable[[Any, Any], Any], event: Any, context: HandlerContext) -> tuple:
    try:
        value = handler(event, context)
    except Exception as exc:
        return _RAISED, _describe(exc)
    try:
        # Checked here, in the form the data plane will store, so that the agent only ever
        # receives plain JSON values.
        text = protocol.json_dumps(value)
    except (TypeError, ValueError) as exc:
        return _RAISED, (
            f"the handler returned a {type(value).__name__} that is not JSON-serialisable "
            f"({type(exc).__name__}: {exc}); return a dict, list, str, number, bool or None"
        )
    return _RETURNED, text


def _serve(conn: multiprocessing.connection.Connection, spec: str) -> None:
    # An interrupt from the terminal reaches the whole process group; the agent decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    try:
        handler = load_handler(spec)
    except HandlerSpecError as exc:
        conn.send((_LOAD_FAILED, str(exc)))
        return
    conn.send((_READY, None))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        event, context = request
        conn.send(_call(handler, event, context))


# --- the agent's side --------------------------------------------------------------------


class WorkerProcess:
    """A persistent child process that runs one handler, one task at a time.

    The process starts on first use (or with :meth:`start`). An attempt that dies, times out or
    is stopped kills it; the next attempt starts a fresh one. Use from one thread only, and
    :meth:`close` it when done: the worker is not a daemon process (so that a handler may start
    processes of its own), and an interpreter waits for such children before it exits.

    Parameters
    ----------
    handler_spec : str
        The handler as ``"module:function"``, importable in a new interpreter (installed, or
        on ``PYTHONPATH``).

    Examples
    --------
    >>> with WorkerProcess("htcgrid.workers:mock_compute_engine") as worker:  # doctest: +SKIP
    ...     worker.run({"worker_arguments": ["10"]}, timeout_sec=5).value
    10
    """

    def __init__(self, handler_spec: str) -> None:
        check_handler_spec(handler_spec)
        self.handler_spec = handler_spec
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None

    def __repr__(self) -> str:
        pid = self.pid
        state = f"pid {pid}" if pid is not None else "not started"
        return f"<WorkerProcess {self.handler_spec} {state}>"

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The worker's process id, or ``None`` while no worker runs."""
        return None if self._process is None else self._process.pid

    def start(self, timeout_sec: float = START_TIMEOUT_SEC) -> None:
        """Start the worker if none runs, and wait until it has loaded the handler.

        Raises
        ------
        HandlerSpecError
            The handler's module or function cannot be loaded.
        """
        if self._process is not None:
            return
        conn, child_conn = self._context.Pipe()
        process = self._context.Process(
            target=_serve, args=(child_conn, self.handler_spec), name="htcgrid-worker"
        )
        process.start()
        # Only the child may hold its end, so that its death reads as end of file here.
        child_conn.close()
        self._process, self._conn = process, conn

        error = None
        if not multiprocessing.connection.wait([conn, process.sentinel], timeout_sec):
            error = f"the worker did not load handler {self.handler_spec!r} in {timeout_sec} s"
        else:
            try:
                kind, detail = conn.recv()
            except (EOFError, OSError):
                kind, detail = None, None
            if kind == _LOAD_FAILED:
                error = detail
            elif kind != _READY:
                process.join(1.0)
                error = (
                    f"the worker {_death(process.exitcode)} while loading handler "
                    f"{self.handler_spec!r}"
                )
        if error is not None:
            self._discard()
            raise HandlerSpecError(error)
        logger.debug("worker pid %s loaded handler %s", process.pid, self.handler_spec)

    def run(
        self,
        event: Any,
        timeout_sec: float,
        should_stop: Callable[[], bool] | None = None,
        *,
        context: HandlerContext | None = None,
    ) -> Outcome:
        """Run the handler on ``event`` in the worker and say how the attempt ended.

        Parameters
        ----------
        event : object
            The task definition, passed to the handler as is (it must pickle).
        timeout_sec : float
            The attempt times out (and the worker is killed) after this many seconds.
        should_stop : callable, optional
            Polled every few tens of milliseconds; when it returns true the worker is killed
            and the attempt ends as ``STOPPED``.
        context : HandlerContext, optional
            The ids the handler's context carries; its deadline is set here.

        Returns
        -------
        Outcome
            Never raises for anything the handler does; a handler that cannot be loaded is a
            ``FAILED`` outcome too.
        """
        try:
            self.start()
        except HandlerSpecError as exc:
            return Outcome(Ending.FAILED, error=f"HandlerSpecError: {exc}")
        assert self._process is not None and self._conn is not None
        process, conn = self._process, self._conn

        started = time.monotonic()
        context = replace(context or HandlerContext(), deadline_s=time.time() + timeout_sec)
        try:
            conn.send((event, context))
        except (EOFError, OSError):
            return self._died()

        while True:
            if should_stop is not None and should_stop():
                self._discard()
                return Outcome(Ending.STOPPED, error="stopped: the attempt was called off")
            remaining = timeout_sec - (time.monotonic() - started)
            if remaining <= 0:
                self._discard()
                return Outcome(Ending.TIMED_OUT, error=f"timed out after {timeout_sec:g} s")
            if multiprocessing.connection.wait([conn, process.sentinel], min(remaining, POLL_SEC)):
                break
        try:
            kind, detail = conn.recv()
        except (EOFError, OSError):
            return self._died()
        if kind == _RETURNED:
            return Outcome(Ending.OK, value=json.loads(detail))
        return Outcome(Ending.FAILED, error=detail)

    def _died(self) -> Outcome:
        assert self._process is not None
        self._process.join(1.0)
        error = f"worker process {_death(self._process.exitcode)}"
        self._discard()
        return Outcome(Ending.DIED, error=error)

    def _discard(self) -> None:
        """Kill the worker (if still alive) and forget it; the next attempt starts another."""
        process, conn = self._process, self._conn
        self._process, self._conn = None, None
        if process is None:
            return
        if process.exitcode is None:
            process.kill()
        process.join(5.0)
        if conn is not None:
            conn.close()
        if process.exitcode is not None:
            process.close()

    def kill(self) -> None:
        """Kill the worker at once; safe from any thread (the attempt in progress ends DIED)."""
        process = self._process
        if process is not None and process.exitcode is None:
            process.kill()

    def close(self, timeout_sec: float = 2.0) -> None:
        """End the worker: ask it to leave, and kill it if it has not within ``timeout_sec``."""
        if self._process is None:
            return
        assert self._conn is not None
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(timeout_sec)
        self._discard()


def _death(exitcode: int | None) -> str:
    """Say how a process ended, from its exit code."""
    if exitcode is None:
        return "died (its exit code is unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"died (killed by signal {name})"
    return f"died (exit code {exitcode})"
