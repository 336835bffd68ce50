"""Send and collect: htcgrid's concurrent data plane against the sequential baseline.

Both clients talk to the same embedded grid, first over plain loopback, then through the
delaying proxy of :mod:`benchmarks.latency`. Their runs alternate (htcgrid first in odd
repetitions, the baseline first in even ones), so that a grid that slows down as it fills
weighs on both alike; each figure is the median of the per-repetition speed-ups.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from .baseline import SequentialClient
from .figures import Report, Sizes
from .harness import (
    ZERO_TASK,
    Deadline,
    OutOfTime,
    grid_login,
    median,
    open_connector,
    run_session,
    running_grid,
    seconds_list,
)
from .latency import DelayProxy, measure_added_latency

#: The share of the time left that the loopback setting may use; the delayed one needs more.
LOOPBACK_SHARE = 0.35
#: Tasks each client sends once, untimed, before the measured runs (loads models, pools).
WARM_UP_TASKS = 5


@contextlib.contextmanager
def network(grid: Any, delay_ms: float, report: Report) -> Iterator[tuple[dict[str, Any], dict]]:
    """Yield the configuration clients should use for a setting, and facts about it.

    With ``delay_ms`` 0 that is the grid's own configuration; otherwise a copy pointing at a
    delaying proxy, whose added latency is measured and reported.
    """
    if not delay_ms:
        yield dict(grid.config.raw), {"method": "direct loopback"}
        return
    with DelayProxy(grid.config.raw, delay_ms) as proxy:
        key = "public_api_gateway_url"
        added = measure_added_latency(
            f"{grid.config.raw[key]}/result", f"{proxy.config[key]}/result"
        )
        report.progress(f"proxy up, {delay_ms:g} ms asked, {added * 1000:.1f} ms measured")
        yield (
            proxy.config,
            {
                "method": "delaying TCP proxy on 127.0.0.1, request path",
                "delay_ms": delay_ms,
                "measured_added_ms": round(added * 1000, 2),
            },
        )


def paired_runs(
    report: Report,
    deadline: Deadline,
    repeats: int,
    htcgrid_run: Callable[[], float],
    baseline_run: Callable[[], float],
) -> tuple[list[float], list[float]]:
    """Time both clients ``repeats`` times, alternating which goes first.

    Stops early, with a note, when another repetition would not fit in the deadline; raises
    :class:`OutOfTime` when not even one does.
    """
    htcgrid: list[float] = []
    baseline: list[float] = []
    last = 0.0
    for repetition in range(repeats):
        if repetition and deadline.remaining() < last * 1.5:
            report.note(f"only {repetition} of {repeats} repetitions fit in the time budget")
            break
        deadline.check("a repetition")
        started = time.monotonic()
        order = [(htcgrid_run, htcgrid), (baseline_run, baseline)]
        for run, times in order if repetition % 2 == 0 else reversed(order):
            times.append(run())
        last = time.monotonic() - started
        report.progress(
            f"repetition {repetition + 1}: htcgrid {htcgrid[-1]:.2f} s, "
            f"sequential {baseline[-1]:.2f} s"
        )
    return htcgrid, baseline


def speedup(htcgrid: list[float], baseline: list[float]) -> tuple[float, str]:
    """The median speed-up of paired runs, and a sentence saying what it compares."""
    value = median([b / h for h, b in zip(htcgrid, baseline)])
    detail = (
        f"htcgrid {median(htcgrid):.2f} s vs sequential {median(baseline):.2f} s, "
        f"median of {len(htcgrid)}"
    )
    return value, detail


def settings(sizes: Sizes) -> list[tuple[str, float]]:
    return [("loopback", 0.0), ("latency", sizes.latency_ms)]


# --- send --------------------------------------------------------------------------------


def bench_send(sizes: Sizes, deadline: Deadline, report: Report) -> None:
    """Send ``send_tasks`` zero-work tasks: AWSConnector.send vs one put after another.

    Each setting gets a fresh grid with no agents, so that nothing runs the tasks and competes
    with the clients for the CPU, and so that the loopback runs leave no queue behind for the
    delayed ones.
    """
    for name, delay_ms in settings(sizes):
        phase = deadline.part(LOOPBACK_SHARE) if name == "loopback" else deadline
        try:
            with running_grid(report, agents=0) as grid:
                _send_setting(grid, f"send.{name}", delay_ms, sizes, phase, report)
        except OutOfTime as exc:
            report.add(f"send.{name}", None, missing=f"timed out: {exc}")


def _send_setting(
    grid: Any, key: str, delay_ms: float, sizes: Sizes, deadline: Deadline, report: Report
) -> None:
    tasks = [ZERO_TASK] * sizes.send_tasks
    login = grid_login(grid)
    phases: list[dict[str, float]] = []
    with network(grid, delay_ms, report) as (config, facts):
        connector = open_connector({**login, "config": config})
        baseline = SequentialClient(config, login["username"], login["password"])

        def htcgrid_run() -> float:
            started = time.perf_counter()
            submission = connector.send(tasks)
            seconds = time.perf_counter() - started
            if len(submission["task_ids"]) != len(tasks):
                raise RuntimeError("htcgrid's send returned the wrong number of task ids")
            return seconds

        def baseline_run() -> float:
            timing = baseline.send(tasks)
            phases.append({"upload_sec": timing.upload_sec, "submit_sec": timing.submit_sec})
            return timing.total_sec

        try:
            connector.send([ZERO_TASK] * WARM_UP_TASKS)
            baseline.send([ZERO_TASK] * WARM_UP_TASKS)
            htcgrid, sequential = paired_runs(
                report, deadline, sizes.repeats, htcgrid_run, baseline_run
            )
        finally:
            connector.close()
            baseline.close()

    value, detail = speedup(htcgrid, sequential)
    uploads = median([p["upload_sec"] for p in phases])
    submits = median([p["submit_sec"] for p in phases])
    detail += f"; sequential = uploads {uploads:.2f} s + /submit {submits:.2f} s"
    report.add(
        key,
        value,
        detail=detail,
        network=facts,
        htcgrid_sec=seconds_list(htcgrid),
        sequential_sec=seconds_list(sequential),
        sequential_phases=phases,
    )


# --- collect -----------------------------------------------------------------------------


def bench_collect(sizes: Sizes, deadline: Deadline, report: Report) -> None:
    """Collect ``collect_tasks`` finished results: get_results vs one get after another.

    One session of zero-work tasks runs to the end on a grid with its default agents (not
    timed); the agents are then stopped, and both clients collect that session's results,
    each repetition with a new htcgrid connector so that nothing is cached between them.
    """
    tasks = [ZERO_TASK] * sizes.collect_tasks
    with running_grid(report) as grid:
        connector = open_connector(grid_login(grid))
        run = run_session(connector, tasks, deadline.check("the session to collect", 30))
        connector.close()
        if not run.complete:
            raise OutOfTime(
                f"the session to collect did not finish within {run.seconds:.0f} s "
                f"({run.finished} of {len(tasks)} tasks finished)"
            )
        report.progress(f"{len(tasks)} tasks to collect ran in {run.seconds:.1f} s")
        grid.scale_agents(0)

        for name, delay_ms in settings(sizes):
            phase = deadline.part(LOOPBACK_SHARE) if name == "loopback" else deadline
            try:
                _collect_setting(
                    grid, f"collect.{name}", delay_ms, run.submission, sizes, phase, report
                )
            except OutOfTime as exc:
                report.add(f"collect.{name}", None, missing=f"timed out: {exc}")


def _collect_setting(
    grid: Any,
    key: str,
    delay_ms: float,
    submission: dict[str, Any],
    sizes: Sizes,
    deadline: Deadline,
    report: Report,
) -> None:
    login = grid_login(grid)
    expected = ["0"] * sizes.collect_tasks
    with network(grid, delay_ms, report) as (config, facts):
        baseline = SequentialClient(config, login["username"], login["password"])

        def htcgrid_run() -> float:
            # A new connector each time: what one collected must not make the next one free.
            connector = open_connector({**login, "config": config})
            try:
                started = time.perf_counter()
                results = connector.get_results(submission, timeout_sec=60)
                seconds = time.perf_counter() - started
            finally:
                connector.close()
            if results["finished_OUTPUT"] != expected:
                raise RuntimeError("htcgrid's get_results did not return every output")
            return seconds

        def baseline_run() -> float:
            started = time.perf_counter()
            outputs = baseline.collect(submission["session_id"])
            seconds = time.perf_counter() - started
            if sorted(outputs.values()) != expected:
                raise RuntimeError("the sequential baseline did not get every output")
            return seconds

        try:
            htcgrid, sequential = paired_runs(
                report, deadline, sizes.repeats, htcgrid_run, baseline_run
            )
        finally:
            baseline.close()

    value, detail = speedup(htcgrid, sequential)
    report.add(
        key,
        value,
        detail=detail,
        network=facts,
        htcgrid_sec=seconds_list(htcgrid),
        sequential_sec=seconds_list(sequential),
    )
