"""Programs the benchmarks run in a process of their own, each printing one JSON line.

- ``python -m benchmarks.probes startup``: start an embedded grid with its defaults and send
  one task; the seconds from ``LocalGrid().start()`` to the first accepted /submit. A fresh
  process each time, so that nothing is warm but the operating system's file cache.
- ``python -m benchmarks.probes session LOGIN --tasks N --timeout S``: as a client of the
  grid described by the JSON file LOGIN, send N zero-work tasks as one session and collect
  their results; the seconds that took and this process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time
from typing import Any


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``with`` blocks (the grid's stop) still run."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def startup() -> dict[str, Any]:
    from htcgrid import AWSConnector
    from htcgrid.local import LocalGrid

    from .harness import ZERO_TASK

    started = time.perf_counter()
    grid = LocalGrid().start()
    try:
        grid_started = time.perf_counter()
        connector = AWSConnector()
        connector.init(dict(grid.config.raw), grid.username, grid.password)
        connector.authenticate()
        connector.send([ZERO_TASK])
        submitted = time.perf_counter()
        connector.close()
    finally:
        grid.stop()
    return {
        "seconds": submitted - started,
        "start_sec": grid_started - started,
        "first_submit_sec": submitted - grid_started,
    }


def session(login_path: str, tasks: int, timeout_sec: float) -> dict[str, Any]:
    """Send and collect one session within ``timeout_sec``; report what happened by then.

    Stopped early (SIGTERM), it still reports its peak memory and how far it got.
    """
    from htcgrid import AWSConnector

    from .harness import ZERO_TASK

    with open(login_path, encoding="utf-8") as file:
        login = json.load(file)
    connector = AWSConnector()
    connector.init(login["config"], login["username"], login["password"])
    connector.authenticate()
    answer: dict[str, Any] = {
        "tasks": tasks,
        "complete": False,
        "finished": 0,
        "send_sec": None,
        "stopped": False,
        "rss_before_mb": _peak_rss_mb(),
    }

    started = time.perf_counter()
    deadline = time.monotonic() + timeout_sec
    try:
        submission = connector.send([ZERO_TASK] * tasks)
        answer["send_sec"] = time.perf_counter() - started
        left = max(1.0, deadline - time.monotonic())
        results = connector.get_results(submission, timeout_sec=left)
        answer["complete"] = bool(results["metadata"]["complete"])
        answer["finished"] = len(results["finished"])
    except SystemExit:
        answer["stopped"] = True
    finally:
        answer["seconds"] = time.perf_counter() - started
        answer["peak_rss_mb"] = _peak_rss_mb()
    if not answer["stopped"]:
        # Stopped, the connector may still hold thousands of queued uploads: main() exits
        # at once instead of closing it, which would wait for every one of them.
        connector.close()
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("startup")
    session_parser = commands.add_parser("session")
    session_parser.add_argument("login")
    session_parser.add_argument("--tasks", type=int, required=True)
    session_parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)

    _stop_on_sigterm()
    if args.command == "startup":
        answer = startup()
    else:
        answer = session(args.login, args.tasks, args.timeout)
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    if answer.get("stopped"):
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
