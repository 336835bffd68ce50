"""The benchmark command: run the chosen benchmarks one after another, print the table.

Each benchmark runs in a process of its own (:mod:`benchmarks.worker`) with a time budget;
this process waits for it, stops it if it overruns, and gathers the figures into one table
and one JSON file. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .figures import BENCHMARKS, BUDGETS, PRESETS, SPECS, Sizes, format_number, label_of
from .harness import ROOT, child_env, stop_process

DEFAULT_JSON = ROOT / "benchmarks" / "results.json"
#: Seconds past its budget a benchmark process has to stop its grid and write its report.
OVERRUN_SEC = 60.0

LATENCY_METHOD = (
    "a delaying TCP proxy on 127.0.0.1, in a process of its own, in front of the grid's AWS "
    "endpoint and API; both clients get a copy of the grid's configuration pointing at it. "
    "Every chunk of bytes from client to grid is forwarded {delay:g} ms after it arrived "
    "(once per request, not per chunk); answers come back undelayed; new connections cost "
    "nothing extra. So each request/response exchange takes {delay:g} ms longer."
)


def run_benchmark(name: str, preset: str, budget: float) -> dict[str, Any]:
    """Run one benchmark in a child process; return its report (never raises for its failures)."""
    print(f"\n== {name} (budget {budget:.0f} s)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="htcgrid-bench-") as folder:
        out = Path(folder) / "report.json"
        command = [sys.executable, "-m", "benchmarks.worker", name, "--preset", preset]
        command += ["--budget", str(budget), "--out", str(out)]
        started = time.monotonic()
        # A session of its own: Ctrl-C reaches only this process, which then stops the child
        # so that it can stop its grid.
        process = subprocess.Popen(command, env=child_env(), start_new_session=True)
        try:
            process.wait(timeout=budget + OVERRUN_SEC)
        except subprocess.TimeoutExpired:
            stop_process(process)
        except BaseException:
            stop_process(process)
            raise
        if out.exists():
            return dict(json.loads(out.read_text(encoding="utf-8")))
        elapsed = time.monotonic() - started
        hung = elapsed >= budget + OVERRUN_SEC
        return {
            "name": name,
            "status": "timed out" if hung else "error",
            "reason": (
                f"timed out after {elapsed:.0f} s and was stopped"
                if hung
                else f"the benchmark process exited with code {process.returncode}"
            ),
            "seconds": round(elapsed, 2),
            "budget_sec": budget,
            "figures": [],
            "notes": [],
        }


def all_figures(reports: Sequence[dict[str, Any]], sizes: Sizes) -> list[dict[str, Any]]:
    """Every figure of the benchmarks that ran, in table order; a row for each one missing."""
    by_key = {f["key"]: f for report in reports for f in report["figures"]}
    ran = {report["name"]: report for report in reports}
    rows = []
    for spec in SPECS:
        if spec.benchmark not in ran:
            continue
        if spec.key in by_key:
            rows.append(by_key[spec.key])
            continue
        report = ran[spec.benchmark]
        rows.append(
            {
                "key": spec.key,
                "label": label_of(spec, sizes),
                "value": None,
                "unit": spec.unit,
                "target": str(spec.target) if spec.target else None,
                "detail": "",
                "data": {},
                "missing": report["reason"] or "not measured",
                "status": "MISS" if spec.target else "info",
            }
        )
    return rows


def _explanation(row: dict[str, Any]) -> str:
    """How a figure was measured, or why it has no value."""
    return str(row["detail"] if row["value"] is not None else row["missing"])


def text_table(rows: Sequence[dict[str, Any]]) -> str:
    width = max([len(r["label"]) for r in rows] + [6])
    lines = [f"{'figure':<{width}}  {'value':>15}  {'target':<14}  status"]
    lines.append("-" * (width + 40))
    for row in rows:
        value = format_number(row["value"], row["unit"])
        target = row["target"] or ""
        lines.append(f"{row['label']:<{width}}  {value:>15}  {target:<14}  {row['status']}")
        if _explanation(row):
            lines.append(f"    {_explanation(row)}")
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| figure | value | target | status | measured as |",
        "|---|---:|---|---|---|",
    ]
    for row in rows:
        value = format_number(row["value"], row["unit"])
        cells = [
            row["label"].strip(),
            value,
            row["target"] or "",
            row["status"],
            _explanation(row),
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def speed_line(speed: dict[str, Any], stolen: Sequence[float]) -> str:
    """One line on how fast the machine was: the loop speed, and the host's stolen time."""
    values = [reading["value"] for reading in speed["readings"]]
    line = (
        f"loop speed {speed['median']:.1f} M iterations/s on one core, Python "
        f"{platform.python_version()} (median of {len(values)} readings, one before the first "
        f"benchmark and one after each: {min(values):.1f} to {max(values):.1f})"
    )
    if stolen:
        line += f"; CPU time taken by the host during the benchmarks: {max(stolen):.1f}% at most"
    return line


def git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{' (modified)' if dirty else ''}"


#: Iterations of the loop that :func:`loop_speed` times.
SPEED_LOOP = 2_000_000


def loop_speed() -> float:
    """Millions of iterations a second of a fixed pure-Python loop on one core, best of 5.

    Not a figure with a target, and not a measure of the machine as the grid uses it (two
    cores, system calls, loopback networking): a fixed point to compare runs by, read while
    no benchmark runs. It depends on the Python version as much as on the machine.
    """
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(SPEED_LOOP):
            total += i & 7
        best = min(best, time.perf_counter() - started)
    return SPEED_LOOP / best / 1e6


def cpu_ticks() -> tuple[int, int] | None:
    """All CPU time and the part stolen by the host (Linux ``/proc/stat``), in ticks."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(field) for field in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, counted in user]
    return sum(fields[:8]), (fields[7] if len(fields) > 7 else 0)


def stolen_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time that its host gave to others in between."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return round(100 * (after[1] - before[1]) / (after[0] - before[0]), 1)


def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        htcgrid_version = version("htcgrid")
    except PackageNotFoundError:
        htcgrid_version = None
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "htcgrid": htcgrid_version,
        "commit": git_commit(),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="htcgrid's benchmarks: figures against same-run baselines and targets.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_const",
        dest="preset",
        const="quick",
        help="small sizes: a smoke run of every benchmark in about a minute",
    )
    size.add_argument(
        "--smoke",
        action="store_const",
        dest="preset",
        const="smoke",
        help="the smallest sizes, one repetition (for the test suite)",
    )
    parser.set_defaults(preset="full")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these benchmarks (repeatable or comma-separated): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        metavar="PATH",
        help=f"where to write the results (default: {DEFAULT_JSON.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--markdown", type=Path, metavar="PATH", help="also write the table as Markdown"
    )
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply every benchmark's time budget by F (a slower machine)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for item in args.only or [] for n in item.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    args.names = [n for n in BENCHMARKS if n in names] if names else list(BENCHMARKS)
    if args.budget_scale <= 0:
        parser.error("--budget-scale must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = PRESETS[args.preset]
    started_at = datetime.datetime.now(datetime.timezone.utc)
    started = time.monotonic()

    reports = []
    speeds = [{"after": None, "value": round(loop_speed(), 1)}]
    for name in args.names:
        budget = BUDGETS[args.preset][name] * args.budget_scale
        ticks = cpu_ticks()
        report = run_benchmark(name, args.preset, budget)
        report["stolen_percent"] = stolen_percent(ticks, cpu_ticks())
        reports.append(report)
        speeds.append({"after": name, "value": round(loop_speed(), 1)})
    rows = all_figures(reports, sizes)
    total = time.monotonic() - started

    info = machine()
    values = [reading["value"] for reading in speeds]
    info["loop_speed"] = {
        "unit": "million iterations per second of a fixed pure-Python loop, one core",
        "median": round(statistics.median(values), 1),
        "readings": speeds,
    }
    stolen = [r["stolen_percent"] for r in reports if r["stolen_percent"] is not None]
    print()
    print(
        f"htcgrid benchmarks, preset {args.preset}, {info['cpus']} CPUs, Python "
        f"{info['python']}, commit {info['commit']}, {total:.0f} s"
    )
    print(speed_line(info["loop_speed"], stolen))
    if args.preset != "full":
        print(
            f"(preset {args.preset}: sizes far below the full run's, which the targets are "
            "set for; at these sizes start-up costs dominate, so PASS and MISS say little)"
        )
    if {"send", "collect"} & set(args.names):
        print("latency: " + LATENCY_METHOD.format(delay=sizes.latency_ms))
    print()
    print(text_table(rows))
    for report in reports:
        for note in report["notes"]:
            print(f"note ({report['name']}): {note}")

    document = {
        "suite": "htcgrid benchmarks",
        "preset": args.preset,
        "sizes": asdict(sizes),
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(total, 1),
        "machine": info,
        "latency_method": LATENCY_METHOD.format(delay=sizes.latency_ms),
        "figures": rows,
        "benchmarks": reports,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults written to {args.json}")
    if args.markdown:
        caption = f"preset {args.preset}, commit {info['commit']}, {total:.0f} s; " + speed_line(
            info["loop_speed"], stolen
        )
        args.markdown.write_text(markdown_table(rows) + f"\n{caption}\n", encoding="utf-8")
        print(f"table written to {args.markdown}")
    return 1 if any(report["status"] == "error" for report in reports) else 0
