"""What every benchmark shares: deadlines, the embedded grid and its clients, child processes.

A benchmark is a function ``(sizes, deadline, report) -> None`` that adds figures to the
:class:`~benchmarks.figures.Report` as it goes, so that whatever it measured before running
out of time is still reported.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .figures import Report

#: The task of the zero-work benchmarks: the mock compute engine sleeping 0 ms.
ZERO_TASK: dict[str, Any] = {"worker_arguments": ["0", "1", "1"]}


def sleep_task(milliseconds: int) -> dict[str, Any]:
    """A mock compute engine task that sleeps ``milliseconds`` and returns that number."""
    return {"worker_arguments": [str(milliseconds), "1", "1"]}


class OutOfTime(Exception):
    """A benchmark's budget ran out; the message says what was left undone."""


class Deadline:
    """The end of a benchmark's time budget."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._started = time.monotonic()
        self._end = self._started + seconds

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self._end - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def part(self, fraction: float) -> Deadline:
        """A deadline for one phase: ``fraction`` of the time left."""
        return Deadline(self.remaining() * fraction)

    def check(self, what: str, reserve: float = 0.0) -> float:
        """Return the seconds left for ``what``, keeping ``reserve`` back; raise if none."""
        left = self.remaining() - reserve
        if left <= 1.0:
            raise OutOfTime(f"no time left for {what} (budget {self.seconds:.0f} s)")
        return left


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def seconds_list(values: Sequence[float]) -> list[float]:
    """Round timings for the JSON file (milliseconds are all that matter here)."""
    return [round(v, 4) for v in values]


def ideal_seconds(tasks: int, agents: int, task_ms: int) -> float:
    """Wall time of ``tasks`` tasks of ``task_ms`` on ``agents`` agents with no overhead."""
    return math.ceil(tasks / agents) * task_ms / 1000


# --- the embedded grid and its clients --------------------------------------------------


@contextlib.contextmanager
def running_grid(report: Report, agents: int | None = None) -> Iterator[Any]:
    """Start an embedded grid with default settings; stop it at the end of the block."""
    from htcgrid.local import LocalGrid

    started = time.perf_counter()
    grid = LocalGrid(agents=agents).start()
    try:
        report.progress(
            f"grid with {grid.agents} agent(s) started in {time.perf_counter() - started:.1f} s"
        )
        yield grid
    finally:
        grid.stop()


def grid_login(grid: Any) -> dict[str, Any]:
    """What a client needs to reach a grid: its configuration and user."""
    return {"config": dict(grid.config.raw), "username": grid.username, "password": grid.password}


def open_connector(login: Mapping[str, Any]) -> Any:
    """An authenticated :class:`htcgrid.AWSConnector` with default options."""
    from htcgrid import AWSConnector

    connector = AWSConnector()
    connector.init(dict(login["config"]), login["username"], login["password"])
    connector.authenticate()
    return connector


@dataclass
class SessionRun:
    """One session sent and waited for: the seconds from send to results, and what came."""

    seconds: float
    submission: dict[str, Any]
    results: dict[str, Any]

    @property
    def complete(self) -> bool:
        return bool(self.results["metadata"]["complete"])

    @property
    def finished(self) -> int:
        return len(self.results.get("finished") or [])


def run_session(
    connector: Any, tasks: Sequence[Mapping[str, Any]], timeout_sec: float
) -> SessionRun:
    """Send ``tasks`` as one session and wait for all of them (at most ``timeout_sec``)."""
    started = time.perf_counter()
    submission = connector.send(tasks)
    results = connector.get_results(submission, timeout_sec=max(1.0, timeout_sec))
    return SessionRun(time.perf_counter() - started, submission, results)


def timed_sessions(
    connector: Any,
    tasks: Sequence[Mapping[str, Any]],
    repeats: int,
    deadline: Deadline,
    report: Report,
    reserve: float = 15.0,
) -> tuple[list[float], str]:
    """Run ``repeats`` sessions of ``tasks`` one after another; return their seconds.

    Stops early, with a note, when the next one would not fit in the deadline (keeping
    ``reserve`` seconds to clean up) or when one does not finish in time; the string says
    why there are fewer than ``repeats`` (empty if there are not).
    """
    times: list[float] = []
    for repetition in range(repeats):
        if times and deadline.remaining() < times[-1] * 1.5 + reserve:
            report.note(f"only {len(times)} of {repeats} sessions fit in the time budget")
            return times, "out of time"
        run = run_session(connector, tasks, deadline.check("a session", reserve))
        if not run.complete:
            why_not = (
                f"timed out after {run.seconds:.0f} s "
                f"({run.finished} of {len(tasks)} tasks finished)"
            )
            report.note(f"session {repetition + 1} {why_not}")
            return times, why_not
        times.append(run.seconds)
        report.progress(f"session {repetition + 1}: {run.seconds:.2f} s")
    return times, ""


def warm_up(connector: Any, agents: int, report: Report, deadline: Deadline) -> None:
    """Run one small untimed session so that every agent has started and imported its code."""
    run = run_session(connector, [sleep_task(200)] * max(1, agents), deadline.check("the warm-up"))
    if not run.complete:
        raise OutOfTime(f"the warm-up session did not finish within {run.seconds:.0f} s")
    report.progress(f"warm-up session of {agents} task(s) done in {run.seconds:.1f} s")


# --- child processes ---------------------------------------------------------------------

#: The folder holding the ``benchmarks`` package, which child processes must be able to import.
ROOT = Path(__file__).resolve().parent.parent
#: Seconds a child process has, after SIGTERM, to clean up (stop its grid) before SIGKILL.
STOP_GRACE_SEC = 20.0


def child_env() -> dict[str, str]:
    """The environment of the suite's child processes: ``benchmarks`` importable."""
    env = dict(os.environ)
    paths = [str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM a child that leads its own session; SIGKILL its group if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SEC)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_probe(args: Sequence[str], timeout_sec: float) -> dict[str, Any]:
    """Run ``python -m benchmarks.probes ARGS``; return the JSON it prints.

    Raises
    ------
    OutOfTime
        The probe did not finish within ``timeout_sec`` (it is stopped).
    RuntimeError
        The probe failed; its standard error went to ours.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.probes", *args],
        stdout=subprocess.PIPE,
        env=child_env(),
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout_sec)
    except subprocess.TimeoutExpired:
        # A probe stopped by SIGTERM may still say how far it got: keep that if it does.
        stop_process(process)
        out, _ = process.communicate()
        lines = out.decode("utf-8", errors="replace").strip().splitlines()
        if lines:
            return {**json.loads(lines[-1]), "stopped_after_sec": timeout_sec}
        raise OutOfTime(f"the probe {args[0]} did not finish within {timeout_sec:.0f} s") from None
    except BaseException:
        stop_process(process)
        raise
    lines = out.decode("utf-8", errors="replace").strip().splitlines()
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"the probe {args[0]} failed with exit code {process.returncode}")
    return dict(json.loads(lines[-1]))
