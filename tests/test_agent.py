"""Agents and the heartbeat checker, as processes, against moto's server over loopback HTTP.

Each test provisions a grid of its own (bucket, queues, state table) on one shared moto
server, puts tasks in as /submit does (input, pending row, queue message), starts real agent
and checker processes with their command lines, and reads the outcome from the state table,
the data plane and the queue.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from htcgrid import load_config, protocol
from htcgrid.dataplane import open_dataplane
from htcgrid.local import processes
from htcgrid.local.checker import CheckCounts, HeartbeatChecker
from htcgrid.local.provision import new_tag, provision
from htcgrid.local.settings import GridSettings
from htcgrid.local.statetable import StateTable, pending_row
from htcgrid.local.taskqueue import TaskMessage, TaskQueue

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find workers"),
]

SETTINGS = GridSettings(
    heartbeat_interval_sec=0.5,
    heartbeat_expiry_sec=2,
    checker_period_sec=0.5,
    visibility_timeout_sec=5,
    empty_queue_backoff_sec=0.2,
)
MOCK_ENGINE = "htcgrid.workers:mock_compute_engine"
#: Long enough for an agent to start on a busy two-core machine.
STARTUP_SEC = 30


@pytest.fixture(scope="module")
def aws_endpoint(tmp_path_factory):
    """The embedded grid's own AWS services process, as a grid starts it."""
    workdir = tmp_path_factory.mktemp("services")
    child = processes.spawn("services", "htcgrid.local.services", [], workdir, os.environ)
    try:
        yield processes.announcement(child, "endpoint")
    finally:
        processes.terminate([child])


class Grid:
    """A grid's AWS resources, the processes a test starts on it, and ways to look inside."""

    def __init__(self, endpoint: str, workdir: Path, handler: str) -> None:
        made = provision(endpoint, new_tag(), settings=replace(SETTINGS, handler=handler))
        # No API gateway runs in these tests; the client keys only need to be present.
        data = {**made.config, "public_api_gateway_url": "http://127.0.0.1:9/v1"}
        self.workdir = workdir
        self.config_path = workdir / "agent_config.json"
        self.config_path.write_text(json.dumps(data), encoding="utf-8")
        self.config = load_config(self.config_path)
        self.table = StateTable(self.config)
        self.queue = TaskQueue(self.config)
        self.dataplane = open_dataplane(self.config)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # --- acting as /submit ---------------------------------------------------------------

    def submit(
        self, tasks: Sequence[Any], *, max_retries: int = 0, timeout_sec: int = 30
    ) -> list[str]:
        session_id = protocol.new_session_id()
        ids = protocol.task_ids(session_id, len(tasks))
        self.dataplane.write_inputs(ids, tasks)
        rows = [
            pending_row(t, session_id, max_retries=max_retries, task_timeout_sec=timeout_sec)
            for t in ids
        ]
        self.table.put_rows(rows)
        assert self.queue.send(rows, stats=protocol.make_stats()) == []
        return ids

    # --- processes -----------------------------------------------------------------------

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", *args, "--config", str(self.config_path)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes[name] = process
        return process

    def start_agent(self, agent_id: str) -> subprocess.Popen[bytes]:
        return self._start(agent_id, "htcgrid.local.agent", "--agent-id", agent_id)

    def start_checker(self) -> subprocess.Popen[bytes]:
        return self._start("checker", "htcgrid.local.checker")

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-3000:]}" for name in self.processes)

    def wait_ready(self, name: str) -> None:
        self.wait_until(lambda: ": ready" in self.log(name), STARTUP_SEC, f"{name} to start")

    def worker_of(self, name: str) -> int:
        """The pid of an agent's worker process (once the agent is ready)."""
        self.wait_ready(name)
        workers = [
            pid for pid in _children(self.processes[name].pid) if "spawn_main" in _cmdline(pid)
        ]
        assert len(workers) == 1, workers
        return workers[0]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.stdin.close()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdin is not None and not process.stdin.closed:
                process.stdin.close()
        self.dataplane.close()

    # --- looking inside ------------------------------------------------------------------

    def row(self, task_id: str) -> dict[str, Any]:
        row = self.table.get(task_id)
        assert row is not None
        return row

    def state(self, task_id: str) -> str:
        return protocol.state_of(self.row(task_id)[protocol.TASK_STATUS])

    def wait_until(self, condition: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"waited {timeout} s for {what}\n{self.logs()}")
            time.sleep(0.1)

    def wait_for_state(self, task_id: str, state: str, timeout: float = 20) -> dict[str, Any]:
        self.wait_until(lambda: self.state(task_id) == state, timeout, f"{task_id} {state}")
        return self.row(task_id)

    def output(self, task_id: str) -> str | None:
        return self.dataplane.read_outputs([task_id])[task_id]

    def error(self, task_id: str) -> str | None:
        return self.dataplane.read_errors([task_id])[task_id]

    def messages(self) -> tuple[int, int]:
        """Messages in the task queue: (visible, in flight)."""
        return self.queue.counts()


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces and parentheses; the fields follow the last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers, but runs nothing.
    return "zombie" in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return "zombie"
    return next((line for line in status.splitlines() if line.startswith("State:")), "")


@pytest.fixture
def make_grid(aws_endpoint, tmp_path):
    """Build grids for a test, and stop every process the test started on them."""
    grids: list[Grid] = []

    def make(handler: str = MOCK_ENGINE) -> Grid:
        grid = Grid(aws_endpoint, tmp_path, handler)
        grids.append(grid)
        return grid

    yield make
    for grid in grids:
        grid.stop()


# --- agents ------------------------------------------------------------------------------


def test_an_agent_runs_tasks_to_finished_with_their_outputs(make_grid):
    grid = make_grid()
    ids = grid.submit([{"worker_arguments": ["100", "1", "1"]}, {"worker_arguments": ["200"]}])

    grid.start_agent("agent-1")

    for task_id in ids:
        row = grid.wait_for_state(task_id, protocol.FINISHED)
        assert row[protocol.TASK_OWNER] == "agent-1"
        assert row[protocol.RETRIES] == 0
        assert row[protocol.TASK_COMPLETION_TIMESTAMP] >= row[protocol.START_TIMESTAMP] > 0
        assert grid.error(task_id) is None
    assert [grid.output(t) for t in ids] == ["100", "200"]
    grid.wait_until(lambda: grid.messages() == (0, 0), 5, "the messages to be deleted")


def test_a_raising_handler_is_retried_then_failed_with_its_traceback(make_grid):
    grid = make_grid("handlers:raise_value_error")
    [task_id] = grid.submit([{"n": 1}], max_retries=2)

    grid.start_agent("agent-1")

    row = grid.wait_for_state(task_id, protocol.FAILED)
    assert row[protocol.RETRIES] == 2
    assert row[protocol.TASK_OWNER] == "agent-1"
    error = grid.error(task_id)
    assert error.startswith("ValueError: bad task {'n': 1}\n\nTraceback (most recent call last):")
    assert "in raise_value_error" in error
    assert grid.output(task_id) is None
    grid.wait_until(lambda: grid.messages() == (0, 0), 5, "the messages to be deleted")
    log = grid.log("agent-1")
    assert [f"{task_id} (attempt {n})" in log for n in (1, 2, 3, 4)] == [True, True, True, False]


def test_a_worker_that_dies_or_overruns_fails_the_attempt_and_the_agent_goes_on(make_grid):
    grid = make_grid("handlers:act")
    died, overran = grid.submit([{"exit": 3}, {"sleep": 30}], timeout_sec=1)
    [later] = grid.submit([{"return": [1, "a"]}])

    grid.start_agent("agent-1")

    row = grid.wait_for_state(died, protocol.FAILED)
    assert (row[protocol.RETRIES], grid.error(died)) == (0, "worker process died (exit code 3)")
    row = grid.wait_for_state(overran, protocol.FAILED)
    assert (row[protocol.RETRIES], grid.error(overran)) == (0, "timed out after 1 s")
    grid.wait_for_state(later, protocol.FINISHED)
    assert grid.output(later) == '[1,"a"]'
    assert [grid.output(died), grid.output(overran)] == [None, None]
    grid.wait_until(lambda: grid.messages() == (0, 0), 5, "the messages to be deleted")


def test_a_killed_agents_task_is_retried_by_the_checker_on_another_agent(make_grid):
    grid = make_grid()
    [task_id] = grid.submit([{"worker_arguments": ["1500"]}], max_retries=3)
    grid.start_agent("agent-1")
    grid.start_agent("agent-2")
    grid.start_checker()

    first = grid.wait_for_state(task_id, protocol.PROCESSING, STARTUP_SEC)[protocol.TASK_OWNER]
    worker = grid.worker_of(first)
    grid.processes[first].send_signal(signal.SIGKILL)
    grid.processes[first].wait(5)

    grid.wait_until(lambda: _gone(worker), 5, "the dead agent's worker to exit")
    row = grid.wait_for_state(task_id, protocol.FINISHED)
    second = {"agent-1": "agent-2", "agent-2": "agent-1"}[first]
    assert (row[protocol.TASK_OWNER], row[protocol.RETRIES]) == (second, 1)
    assert grid.output(task_id) == "1500"
    assert grid.error(task_id).startswith(f"heartbeat lost: agent {first} stopped answering;")
    # The dead agent never deleted the message it took; once its visibility ends, an agent
    # receives it, finds the task finished and drops it.
    grid.wait_until(
        lambda: grid.messages() == (0, 0),
        SETTINGS.visibility_timeout_sec + 10,
        "the dead agent's message to be dropped",
    )


def test_a_task_cancelled_while_running_has_its_handler_stopped(make_grid):
    grid = make_grid()
    [task_id] = grid.submit([{"worker_arguments": ["30000"]}], max_retries=2)
    grid.start_agent("agent-1")
    row = grid.wait_for_state(task_id, protocol.PROCESSING, STARTUP_SEC)
    worker = grid.worker_of("agent-1")

    assert grid.table.cancel(task_id, row[protocol.SESSION_ID]) == protocol.PROCESSING

    grid.wait_until(lambda: _gone(worker), 5, "the cancelled task's worker to be killed")
    grid.wait_until(lambda: grid.messages() == (0, 0), 5, "the message to be deleted")
    assert grid.state(task_id) == protocol.CANCELLED
    assert (grid.output(task_id), grid.error(task_id)) == (None, None)
    # The agent goes on with a fresh worker.
    [later] = grid.submit([{"worker_arguments": ["10"]}])
    grid.wait_for_state(later, protocol.FINISHED)
    assert grid.output(later) == "10"
    assert grid.state(task_id) == protocol.CANCELLED
    assert grid.row(task_id)[protocol.RETRIES] == 0


def test_an_agent_exits_when_its_stdin_closes_killing_a_running_handler(make_grid):
    grid = make_grid()
    [task_id] = grid.submit([{"worker_arguments": ["30000"]}])
    agent = grid.start_agent("agent-1")
    grid.wait_for_state(task_id, protocol.PROCESSING, STARTUP_SEC)
    worker = grid.worker_of("agent-1")

    started = time.monotonic()
    agent.stdin.close()

    assert agent.wait(10) == 0
    assert time.monotonic() - started < 5
    assert _gone(worker)
    # The task is left to the checker, which retries it once its heartbeat has expired.
    assert grid.state(task_id) == protocol.PROCESSING


def test_idle_agents_exit_on_sigterm_and_sigint(make_grid):
    grid = make_grid()
    agents = {
        signal.SIGTERM: grid.start_agent("agent-1"),
        signal.SIGINT: grid.start_agent("agent-2"),
    }
    workers = [grid.worker_of("agent-1"), grid.worker_of("agent-2")]

    for signum, agent in agents.items():
        agent.send_signal(signum)

    assert [agent.wait(10) for agent in agents.values()] == [0, 0]
    assert [_gone(worker) for worker in workers] == [True, True]
    assert "agent agent-1: stopped" in grid.log("agent-1")
    assert "agent agent-2: stopped" in grid.log("agent-2")


def test_an_agent_with_a_handler_that_cannot_load_exits_at_once(make_grid):
    grid = make_grid("handlers:no_such_function")

    agent = grid.start_agent("agent-1")

    assert agent.wait(STARTUP_SEC) == 2
    assert (
        "agent agent-1 cannot start: handler module 'handlers' has no function "
        "'no_such_function'" in grid.log("agent-1")
    )


# --- the checker -------------------------------------------------------------------------


def _claim_expired(grid: Grid, task_id: str, receipt: str, agent_id: str = "agent-9") -> None:
    session_id = protocol.session_of(task_id)
    heartbeat = int(time.time()) - 10
    assert grid.table.claim(task_id, session_id, agent_id, receipt, heartbeat) is not None


def test_the_checker_retries_an_expired_task_then_fails_it(make_grid):
    grid = make_grid()
    [task_id] = grid.submit([{"worker_arguments": ["1"]}], max_retries=1)
    checker = HeartbeatChecker(grid.config)
    [message] = grid.queue.receive()
    _claim_expired(grid, task_id, message.receipt)
    now = int(time.time())

    assert checker.run_once(now) == CheckCounts(expired=1, retried=1, failed=0)

    row = grid.row(task_id)
    assert (grid.state(task_id), row[protocol.RETRIES]) == (protocol.PENDING, 1)
    assert row[protocol.TASK_OWNER] == protocol.NO_OWNER
    assert grid.error(task_id) == (
        f"heartbeat lost: agent agent-9 stopped answering; its heartbeat expired at {now - 10} "
        f"and was still expired at {now} (epoch seconds)"
    )
    # A fresh message, sent before the task went back to pending: the old one is still held.
    again = _receive_one(grid)
    assert again.task_id == task_id
    assert again.receipt != message.receipt
    assert grid.messages() == (0, 2)

    _claim_expired(grid, task_id, again.receipt)
    assert checker.run_once() == CheckCounts(expired=1, retried=0, failed=1)
    assert (grid.state(task_id), grid.row(task_id)[protocol.RETRIES]) == (protocol.FAILED, 1)
    assert checker.run_once() == CheckCounts()
    checker.close()


def test_the_checker_queues_a_fresh_message_when_the_old_one_was_deleted(make_grid):
    grid = make_grid()
    [task_id] = grid.submit([{"worker_arguments": ["1"]}], max_retries=1)
    [message] = grid.queue.receive()
    grid.queue.delete(message.receipt)
    _claim_expired(grid, task_id, message.receipt)
    checker = HeartbeatChecker(grid.config)

    assert checker.run_once() == CheckCounts(expired=1, retried=1, failed=0)

    fresh = _receive_one(grid)
    assert fresh.task_id == task_id
    assert grid.state(task_id) == protocol.PENDING
    checker.close()


def _receive_one(grid: Grid, within_sec: float = 5.0) -> TaskMessage:
    """The next message; a retry's message is hidden for a moment after it is sent."""
    deadline = time.monotonic() + within_sec
    while time.monotonic() < deadline:
        messages = grid.queue.receive(1, 1)
        if messages:
            return messages[0]
    raise AssertionError(f"no message within {within_sec} s")


def test_the_checker_leaves_live_heartbeats_alone(make_grid):
    grid = make_grid()
    [task_id] = grid.submit([{"worker_arguments": ["1"]}])
    [message] = grid.queue.receive()
    session_id = protocol.session_of(task_id)
    grid.table.claim(task_id, session_id, "agent-1", message.receipt, int(time.time()) + 60)
    checker = HeartbeatChecker(grid.config)

    assert checker.run_once() == CheckCounts()
    assert grid.state(task_id) == protocol.PROCESSING
    assert grid.error(task_id) is None
    checker.close()


def test_the_checker_process_exits_when_its_stdin_closes(make_grid):
    grid = make_grid()
    checker = grid.start_checker()
    grid.wait_ready("checker")

    checker.stdin.close()

    assert checker.wait(10) == 0
    assert "checker: stopped" in grid.log("checker")
