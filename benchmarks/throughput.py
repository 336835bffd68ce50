"""The embedded grid end to end: start-up, zero-work throughput, efficiency, a large session.

Each timed session runs from ``AWSConnector.send`` until ``get_results`` has every output, on
a grid with default settings, after one untimed warm-up session (so agents' start-up is not
counted: the start-up figure covers it). ProcessPoolExecutor and dask run the same function
calls on as many worker processes as the grid has agents, for context.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .figures import Report, Sizes
from .harness import (
    ZERO_TASK,
    Deadline,
    OutOfTime,
    grid_login,
    ideal_seconds,
    median,
    open_connector,
    run_probe,
    running_grid,
    seconds_list,
    sleep_task,
    timed_sessions,
    warm_up,
)

#: Seconds kept back at the end of a budget to stop the grid and write the report.
CLEAN_UP_SEC = 15.0


def bench_startup(sizes: Sizes, deadline: Deadline, report: Report) -> None:
    """Seconds from ``LocalGrid().start()`` to the first accepted /submit, in fresh processes."""
    runs: list[dict[str, Any]] = []
    for _ in range(sizes.startup_repeats):
        try:
            runs.append(run_probe(["startup"], deadline.check("a start-up probe", CLEAN_UP_SEC)))
        except OutOfTime as exc:
            if not runs:
                report.add("startup", None, missing=f"timed out: {exc}")
                return
            report.note(f"only {len(runs)} of {sizes.startup_repeats} start-ups fit in the budget")
            break
        report.progress(f"start-up probe: {runs[-1]['seconds']:.2f} s")
    seconds = [run["seconds"] for run in runs]
    report.add(
        "startup",
        median(seconds),
        detail=(
            f"start() {median([r['start_sec'] for r in runs]):.2f} s + first send "
            f"{median([r['first_submit_sec'] for r in runs]):.2f} s, median of {len(runs)}, "
            "each in a new process"
        ),
        seconds=seconds_list(seconds),
        runs=runs,
    )


def bench_e2e(sizes: Sizes, deadline: Deadline, report: Report) -> None:
    """Zero-work tasks per second on the grid's default agents; the same calls elsewhere."""
    tasks = [ZERO_TASK] * sizes.e2e_tasks
    # The grid gets most of the budget; the pool and dask need a few seconds each.
    grid_deadline = deadline.part(0.75)
    agents = os.cpu_count() or 1
    try:
        with running_grid(report) as grid:
            agents = grid.agents
            connector = open_connector(grid_login(grid))
            try:
                warm_up(connector, agents, report, grid_deadline)
                times, why_not = timed_sessions(
                    connector, tasks, sizes.repeats, grid_deadline, report
                )
            finally:
                connector.close()
    except OutOfTime as exc:
        times, why_not = [], f"timed out: {exc}"
    if times:
        report.add(
            "e2e.grid",
            len(tasks) / median(times),
            detail=f"{median(times):.2f} s per session, median of {len(times)}, {agents} agents",
            seconds=seconds_list(times),
            agents=agents,
        )
    else:
        report.add("e2e.grid", None, missing=why_not, agents=agents)

    _context_figure(report, "e2e.process_pool", sizes, agents, deadline, _process_pool_seconds)
    try:
        import distributed  # noqa: F401
    except ImportError:
        report.add(
            "e2e.dask",
            None,
            missing="skipped: dask.distributed is not installed (pip install '.[bench]')",
        )
        return
    _context_figure(report, "e2e.dask", sizes, agents, deadline, _dask_seconds)


def _context_figure(
    report: Report,
    key: str,
    sizes: Sizes,
    workers: int,
    deadline: Deadline,
    measure: Callable[[int, int, int, float], list[float]],
) -> None:
    tasks = sizes.e2e_tasks
    try:
        times = measure(tasks, workers, sizes.repeats, deadline.check(key, CLEAN_UP_SEC))
    except OutOfTime as exc:
        report.add(key, None, missing=f"timed out: {exc}")
        return
    report.add(
        key,
        tasks / median(times),
        detail=f"{median(times):.2f} s, median of {len(times)}, {workers} worker processes",
        seconds=seconds_list(times),
        workers=workers,
    )


def _process_pool_seconds(tasks: int, workers: int, repeats: int, budget: float) -> list[float]:
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import wait as wait_all

    from htcgrid.workers import mock_compute_engine

    deadline = Deadline(budget)
    times = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # Start every worker process before the clock runs, as the grid's agents are.
        list(pool.map(mock_compute_engine, [ZERO_TASK] * workers * 2))
        for _ in range(repeats):
            started = time.perf_counter()
            futures = [pool.submit(mock_compute_engine, ZERO_TASK) for _ in range(tasks)]
            _, pending = wait_all(futures, timeout=deadline.check("ProcessPoolExecutor"))
            if pending:
                for future in pending:
                    future.cancel()
                raise OutOfTime(f"ProcessPoolExecutor did not finish within {budget:.0f} s")
            times.append(time.perf_counter() - started)
    return times


def _dask_seconds(tasks: int, workers: int, repeats: int, budget: float) -> list[float]:
    from distributed import Client, LocalCluster
    from distributed import wait as wait_all

    from htcgrid.workers import mock_compute_engine

    deadline = Deadline(budget)
    times = []
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        # The default client of this process, which distributed.wait looks for.
        Client(cluster) as client,
    ):
        client.gather(client.map(mock_compute_engine, [ZERO_TASK] * workers * 2, pure=False))
        for _ in range(repeats):
            started = time.perf_counter()
            futures = client.map(mock_compute_engine, [ZERO_TASK] * tasks, pure=False)
            done = wait_all(futures, timeout=deadline.check("dask"))
            if done.not_done:
                raise OutOfTime(f"dask did not finish within {budget:.0f} s")
            client.gather(futures)
            times.append(time.perf_counter() - started)
    return times


def bench_efficiency(sizes: Sizes, deadline: Deadline, report: Report) -> None:
    """Tasks of ``efficiency_task_ms`` on ``efficiency_agents`` agents: wall over ideal."""
    tasks = [sleep_task(sizes.efficiency_task_ms)] * sizes.efficiency_tasks
    agents = sizes.efficiency_agents
    ideal = ideal_seconds(len(tasks), agents, sizes.efficiency_task_ms)
    with running_grid(report, agents=agents) as grid:
        connector = open_connector(grid_login(grid))
        try:
            warm_up(connector, agents, report, deadline)
            times, why_not = timed_sessions(connector, tasks, sizes.repeats, deadline, report)
        finally:
            connector.close()
    if not times:
        report.add("efficiency", None, missing=why_not, ideal_sec=ideal)
        return
    report.add(
        "efficiency",
        median(times) / ideal,
        detail=f"{median(times):.2f} s vs ideal {ideal:g} s, median of {len(times)}",
        seconds=seconds_list(times),
        ideal_sec=ideal,
    )


def bench_session(sizes: Sizes, deadline: Deadline, report: Report) -> None:
    """One large session of zero-work tasks, its client in a process of its own."""
    with running_grid(report) as grid:
        login = grid_login(grid)
        connector = open_connector(login)
        warm_up(connector, grid.agents, report, deadline)
        connector.close()
        # The login holds the grid's password: a file only this user can read, removed after.
        fd, login_path = tempfile.mkstemp(prefix="htcgrid-bench-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(login, file)
            wait = deadline.check("the session", CLEAN_UP_SEC)
            # The probe stops waiting early enough to collect what finished and report it.
            probe_timeout = wait - max(CLEAN_UP_SEC, 0.15 * wait)
            answer = run_probe(
                [
                    "session",
                    login_path,
                    "--tasks",
                    str(sizes.session_tasks),
                    "--timeout",
                    f"{probe_timeout:.0f}",
                ],
                wait,
            )
        finally:
            os.unlink(login_path)

    if answer["complete"]:
        report.add(
            "session.seconds",
            answer["seconds"],
            detail=f"send {answer['send_sec']:.2f} s, then waiting and collecting",
            **answer,
        )
        report.add(
            "session.rss",
            answer["peak_rss_mb"],
            detail=(
                f"ru_maxrss of the client process; {answer['rss_before_mb']:.0f} MB after sign-in"
            ),
            rss_before_mb=answer["rss_before_mb"],
        )
        return
    if answer["send_sec"] is None:
        how_far = "still sending"
    else:
        how_far = (
            f"sent in {answer['send_sec']:.0f} s, {answer['finished']} of {answer['tasks']} "
            "tasks finished"
        )
    report.add(
        "session.seconds",
        None,
        missing=f"timed out after {answer['seconds']:.0f} s ({how_far})",
        **answer,
    )
    # A peak reached by part of a session says little about the whole: no verdict on it.
    report.add(
        "session.rss",
        None,
        missing=f"session incomplete; peak so far {answer['peak_rss_mb']:.0f} MB",
        peak_rss_mb=answer["peak_rss_mb"],
    )
