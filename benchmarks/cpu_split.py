"""Where the embedded grid's time goes: CPU per task of each of its processes, and a timeline.

``python benchmarks/cpu_split.py [--tasks N] [--agents N] [--repeats R]`` starts an embedded
grid, runs one untimed warm-up session, then sends R sessions of N zero-work tasks and reads,
around each, the CPU time (user + system) of every process of the grid and of this client
process. It prints, per process, the milliseconds of CPU per task (median over the sessions),
how many of the machine's cores were busy on average, and from the grid's per-task times when
the first task started after the send began, how long the tasks ran and at what rate, and
how long the results took after the last task ended.

It needs psutil (in the ``bench`` extra). It is not a figure with a target: it says where to
look when the end-to-end figure of ``benchmarks/run.py`` moves.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

#: The task of the zero-work benchmarks (as in benchmarks.harness).
ZERO_TASK = {"worker_arguments": ["0", "1", "1"]}


def _cpu_seconds(process: Any) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _processes(grid: Any) -> dict[str, list[Any]]:
    """The grid's processes by role; agents' worker processes under "workers"."""
    import psutil

    roles: dict[str, list[Any]] = defaultdict(list)
    for name, pid in grid.pids.items():
        process = psutil.Process(pid)
        role = "agents" if name.startswith("agent-") else name
        roles[role].append(process)
        if role == "agents":
            roles["workers"].extend(process.children(recursive=True))
    roles["client"].append(psutil.Process())
    return dict(roles)


def _snapshot(roles: dict[str, list[Any]]) -> dict[Any, tuple[str, float]]:
    """Each live process's role and CPU seconds so far."""
    import psutil

    taken = {}
    for role, processes in roles.items():
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                taken[process] = (role, _cpu_seconds(process))
    return taken


def _used(
    before: dict[Any, tuple[str, float]], after: dict[Any, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds used between two snapshots, by role.

    A process that ended in between (a worker killed after a timeout) is left out: its time
    is lost with it.
    """
    used: dict[str, float] = defaultdict(float)
    for process, (role, seconds) in before.items():
        if process in after:
            used[role] += after[process][1] - seconds
    return dict(used)


def _timeline(details: dict[str, Any], send_started_s: float, done_s: float) -> dict[str, float]:
    from htcgrid import protocol

    started = sorted(
        d[protocol.TASK_INFO_STARTED_MS] / 1000
        for d in details.values()
        if d.get(protocol.TASK_INFO_STARTED_MS)
    )
    ended = sorted(
        d[protocol.TASK_INFO_FINISHED_MS] / 1000
        for d in details.values()
        if d.get(protocol.TASK_INFO_FINISHED_MS)
    )
    span = max(ended[-1] - started[0], 1e-9)
    return {
        "first_start_sec": started[0] - send_started_s,
        "run_span_sec": span,
        "run_rate": len(ended) / span,
        "after_last_sec": done_s - ended[-1],
    }


def measure(tasks: int, agents: int | None, repeats: int) -> dict[str, Any]:
    """Run the sessions; return per-role CPU ms per task and the timelines."""
    from htcgrid import AWSConnector, protocol
    from htcgrid.local import LocalGrid

    per_task: dict[str, list[float]] = defaultdict(list)
    busy: list[float] = []
    walls: list[float] = []
    timelines: list[dict[str, float]] = []
    with LocalGrid(agents=agents) as grid:
        connector = AWSConnector()
        connector.init(dict(grid.config.raw), grid.username, grid.password)
        connector.authenticate()
        try:
            warm = connector.send([ZERO_TASK] * min(200, tasks))
            connector.get_results(warm, timeout_sec=120)
            for _ in range(repeats):
                # Read anew each time: an agent starts a new worker when one is killed.
                roles = _processes(grid)
                before = _snapshot(roles)
                send_started_s = time.time()
                started = time.perf_counter()
                submission = connector.send([ZERO_TASK] * tasks)
                results = connector.get_results(submission, timeout_sec=600)
                wall = time.perf_counter() - started
                done_s = time.time()
                after = _snapshot(roles)
                if not results["metadata"]["complete"]:
                    raise RuntimeError(f"a session of {tasks} tasks did not end within 600 s")
                used = _used(before, after)
                for role, seconds in used.items():
                    per_task[role].append(1000 * seconds / tasks)
                busy.append(sum(used.values()) / wall)
                walls.append(wall)
                answer = connector.control.result(submission["session_id"])
                timelines.append(_timeline(answer[protocol.TASKS_FIELD], send_started_s, done_s))
            agent_count = grid.agents
        finally:
            connector.close()
    return {
        "tasks": tasks,
        "agents": agent_count,
        "cpu_ms_per_task": {role: statistics.median(v) for role, v in per_task.items()},
        "busy_cores": statistics.median(busy),
        "wall_sec": statistics.median(walls),
        "timeline": {k: statistics.median(t[k] for t in timelines) for k in timelines[0]},
    }


def render(result: dict[str, Any]) -> str:
    """The figures as a small text table."""
    split = result["cpu_ms_per_task"]
    total = sum(split.values())
    lines = [
        f"{result['tasks']} zero-work tasks on {result['agents']} agents, "
        f"{result['wall_sec']:.2f} s per session "
        f"({result['tasks'] / result['wall_sec']:.1f} tasks/s), "
        f"{result['busy_cores']:.2f} of {os.cpu_count()} cores busy",
        "",
        f"{'process':<20} {'CPU ms/task':>12} {'share':>7}",
    ]
    for role, ms in sorted(split.items(), key=lambda item: -item[1]):
        lines.append(f"{role:<20} {ms:>12.2f} {100 * ms / total:>6.1f}%")
    lines.append(f"{'all':<20} {total:>12.2f}")
    timeline = result["timeline"]
    lines += [
        "",
        f"first task started {timeline['first_start_sec']:.2f} s after the send began",
        f"tasks ran for {timeline['run_span_sec']:.2f} s, {timeline['run_rate']:.1f} tasks/s",
        f"results were in hand {timeline['after_last_sec']:.2f} s after the last task ended",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per session (1000)")
    parser.add_argument("--agents", type=int, default=None, help="agents (one per CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="sessions measured (3)")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.repeats < 1:
        parser.error("--tasks and --repeats must be at least 1")
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("cpu_split needs psutil: pip install '.[bench]'", file=sys.stderr)
        return 2
    print(render(measure(args.tasks, args.agents, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
