"""Run one benchmark in this process and write its report as JSON.

``python -m benchmarks.worker NAME --preset quick --budget 90 --out report.json``. ``run.py``
starts one such process per benchmark, so that each starts from a quiet machine and a clean
interpreter, and so that one that overruns its budget can be stopped without losing the rest.
When the budget runs out (or SIGTERM arrives), the benchmark is interrupted, its grid stopped,
and whatever it had measured is written with the status "timed out".
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .figures import BENCHMARKS, PRESETS, Report, Sizes
from .harness import Deadline, OutOfTime
from .throughput import bench_e2e, bench_efficiency, bench_session, bench_startup
from .transfer import bench_collect, bench_send

FUNCTIONS: dict[str, Callable[[Sizes, Deadline, Report], None]] = {
    "startup": bench_startup,
    "send": bench_send,
    "collect": bench_collect,
    "e2e": bench_e2e,
    "efficiency": bench_efficiency,
    "session": bench_session,
}
assert set(FUNCTIONS) == set(BENCHMARKS)


class Interrupted(BaseException):
    """The budget ran out or the process was asked to stop; unwinds through every ``with``."""


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run(name: str, preset: str, budget: float) -> dict[str, Any]:
    """Run the benchmark ``name``; return its report (figures, notes, status)."""
    sizes = PRESETS[preset]
    report = Report(name, sizes)
    deadline = Deadline(budget)
    status, reason = "ok", ""
    signal.signal(signal.SIGALRM, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        FUNCTIONS[name](sizes, deadline, report)
    except Interrupted as exc:
        status = "timed out"
        reason = f"timed out after {deadline.elapsed():.0f} s ({exc})"
    except OutOfTime as exc:
        status, reason = "timed out", str(exc)
    except Exception as exc:
        status, reason = "error", f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if reason:
        report.progress(f"{status}: {reason}")
    return {
        "name": name,
        "status": status,
        "reason": reason,
        "seconds": round(deadline.elapsed(), 2),
        "budget_sec": budget,
        "figures": [figure.to_json() for figure in report.figures],
        "notes": report.notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one benchmark; write its report.")
    parser.add_argument("name", choices=BENCHMARKS)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--budget", type=float, required=True, help="seconds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    answer = run(args.name, args.preset, args.budget)
    args.out.write_text(json.dumps(answer, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
