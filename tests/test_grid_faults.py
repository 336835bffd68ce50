"""The embedded grid under faults, end to end: agents killed or restarted, handlers that raise,
die, overrun or are cancelled, and task messages delivered twice.

One grid for the module, over loopback HTTP, driven through ``AWSConnector``. Its handler,
``handlers:record_attempt``, logs the start of every attempt (task, worker pid, agent) and the
end of every attempt that returns, so that each test counts executions exactly. Tests that
kill or stop agents leave the pool as they found it (see ``_full_pool``). The last test drives
the gateway's handlers in this process, to make a race of /cancel with the queue feeding
happen every time.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import start_grid
from htcgrid import AWSConnector, aws, protocol
from htcgrid.config import load_config
from htcgrid.dataplane import open_dataplane
from htcgrid.local import LocalGrid, dispatcher
from htcgrid.local.handlers import GridHandlers
from htcgrid.local.statetable import StateTable
from htcgrid.local.taskqueue import TaskQueue

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc for workers"),
]

AGENTS = 2
#: Generous bounds for waits on a busy two-core machine; the scenarios take seconds.
WAIT_SEC = 60
STARTUP_SEC = 30
NO_TASKS = dict.fromkeys(protocol.STATES, 0)


# --- the grid and what the tests read from it --------------------------------------------


@pytest.fixture(scope="module")
def grid() -> Iterator[LocalGrid]:
    """The module's grid (it replaces conftest's, so ``connector`` signs in here)."""
    grid = start_grid(handler="handlers:record_attempt", agents=AGENTS)
    try:
        yield grid
    finally:
        grid.stop()


@pytest.fixture(autouse=True)
def _full_pool(grid: LocalGrid) -> Iterator[None]:
    yield
    # Replaces agents a test killed or stopped; those started now are ready in a second or two.
    grid.scale_agents(AGENTS)


@pytest.fixture(scope="module")
def table(grid: LocalGrid) -> StateTable:
    return StateTable(grid.config)


@pytest.fixture(scope="module")
def queue(grid: LocalGrid) -> TaskQueue:
    return TaskQueue(grid.config)


class Record:
    """The attempts the handler logged: ``start <task> <pid> <agent>`` and ``end <task>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def task(self, **what: Any) -> dict[str, Any]:
        """A task for ``handlers:record_attempt`` that logs here and does ``what``."""
        return {"record_to": str(self.path), **what}

    def _lines(self, kind: str) -> list[list[str]]:
        if not self.path.exists():
            return []
        lines = [line.split() for line in self.path.read_text(encoding="utf-8").splitlines()]
        return [fields[1:] for fields in lines if fields[0] == kind]

    def starts(self) -> Counter[str]:
        """How many attempts of each task started."""
        return Counter(fields[0] for fields in self._lines("start"))

    def ends(self) -> Counter[str]:
        """How many attempts of each task ran their handler to its return."""
        return Counter(fields[0] for fields in self._lines("end"))

    def attempts(self) -> list[tuple[str, int, str]]:
        """Every attempt that started, in order: task, worker pid, agent."""
        return [(task_id, int(pid), agent) for task_id, pid, agent in self._lines("start")]

    def workers(self, task_id: str) -> list[int]:
        """The worker process of each attempt of a task, in order."""
        return [int(fields[1]) for fields in self._lines("start") if fields[0] == task_id]

    def agents(self, task_id: str) -> list[str]:
        """The agent of each attempt of a task, in order."""
        return [fields[2] for fields in self._lines("start") if fields[0] == task_id]


@pytest.fixture
def record(tmp_path: Path) -> Record:
    return Record(tmp_path / "attempts.txt")


@pytest.fixture
def send(connector: AWSConnector) -> Iterator[Callable[..., dict[str, Any]]]:
    """``connector.send``, with every session cancelled after the test.

    A test that fails half way must not leave tasks that hold the agents of the next one.
    """
    sessions: list[str] = []

    def _send(tasks: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        submission = connector.send(tasks, **options)
        sessions.append(submission["session_id"])
        return submission

    yield _send
    if sessions:
        connector.cancel_sessions(sessions)


def details(connector: AWSConnector, submission: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The embedded grid's per-task details of a session (state, retries, agent, times)."""
    return connector.control.result(submission["session_id"])[protocol.TASKS_FIELD]


def counts(connector: AWSConnector, submission: dict[str, Any]) -> dict[str, int]:
    return connector.control.result(submission["session_id"])[protocol.COUNTS_FIELD]


def retries(connector: AWSConnector, submission: dict[str, Any]) -> dict[str, int]:
    tasks = details(connector, submission)
    return {t: tasks[t][protocol.TASK_INFO_RETRIES] for t in submission["task_ids"]}


@pytest.fixture(scope="module")
def messages(queue: TaskQueue) -> Callable[[], tuple[int, int]]:
    """Counts the messages in the task queue: (visible, in flight)."""
    return queue.counts


def gone(pid: int) -> bool:
    """True once the process has ended (a zombie left for init to reap counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def logs(grid: LocalGrid) -> str:
    """The end of the agents' and the checker's logs, to explain a wait that failed."""
    tails = []
    for path in sorted(grid.workdir.glob("*.log")):
        if path.name.startswith(("agent-", "checker")):
            text = path.read_text(encoding="utf-8", errors="replace")
            tails.append(f"--- {path.name} ---\n{text[-2000:]}")
    return "\n".join(tails)


def wait_for(grid: LocalGrid, condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}\n{logs(grid)}")
        time.sleep(0.02)


def results_of(connector: AWSConnector, submission: dict[str, Any]) -> dict[str, Any]:
    results = connector.get_results(submission, timeout_sec=WAIT_SEC)
    assert results["metadata"]["complete"] is True, results["metadata"]
    return results


# --- 1. an agent killed mid-task -----------------------------------------------------------


def test_a_task_whose_agent_is_killed_is_finished_once_by_another_agent(
    grid, connector, send, record
):
    submission = send([record.task(sleep=2, **{"return": "survived"})], retries=2)
    [task_id] = submission["task_ids"]
    wait_for(grid, lambda: record.starts()[task_id], STARTUP_SEC, "the first attempt")
    [first_agent], [first_worker] = record.agents(task_id), record.workers(task_id)

    os.kill(grid.pids[first_agent], signal.SIGKILL)
    results = results_of(connector, submission)

    assert results["finished"] == [task_id]
    assert results["finished_OUTPUT"] == ['"survived"']
    assert results["metadata"]["counts"] == {**NO_TASKS, "finished": 1}
    assert record.starts() == {task_id: 2}
    assert record.ends() == {task_id: 1}
    second_agent = record.agents(task_id)[1]
    assert second_agent != first_agent
    [info] = details(connector, submission).values()
    assert (info["retries"], info["agent"]) == (1, second_agent)
    # The checker, not the agent, ended the first attempt; its note stays in the data plane.
    [error] = connector.dataplane.read_errors([task_id]).values()
    assert error.startswith(f"heartbeat lost: agent {first_agent} stopped answering;")
    # The killed agent's worker did not outlive it.
    assert gone(first_worker)
    assert grid.agents == AGENTS - 1


# --- 2. a handler that always raises ------------------------------------------------------


@pytest.mark.parametrize("retry_count", [0, 3])
def test_a_handler_that_always_raises_fails_after_exactly_the_retry_bound(
    connector, send, record, retry_count
):
    submission = send(
        [record.task(**{"raise": "boom"}), record.task(**{"return": 1})], retries=retry_count
    )
    bad, good = submission["task_ids"]

    results = results_of(connector, submission)

    attempts = retry_count + 1
    assert (results["failed"], results["finished"]) == ([bad], [good])
    assert results["finished_OUTPUT"] == ["1"]
    [error] = results["failed_OUTPUT"]
    # The last attempt's error: type and message first, then its traceback.
    assert error.startswith(
        f"RuntimeError: boom on attempt {attempts}\n\nTraceback (most recent call last):\n"
    )
    assert ", in record_attempt\n" in error
    assert error.endswith(f"\nRuntimeError: boom on attempt {attempts}")
    assert record.starts() == {bad: attempts, good: 1}
    assert record.ends() == {good: 1}
    assert retries(connector, submission) == {bad: retry_count, good: 0}


# --- 3. a handler that kills its worker ----------------------------------------------------


def test_a_handler_that_kills_its_worker_fails_and_its_agent_serves_the_session_on(
    grid, connector, send, record
):
    # One agent, so that the tasks after the first death must run on the agent it hit.
    grid.scale_agents(1)
    [agent] = [name for name in grid.pids if name.startswith("agent-")]
    tasks = [record.task(exit=3)] + [record.task(**{"return": i}) for i in range(1, 7)]
    submission = send(tasks, retries=2)
    dying, *others = submission["task_ids"]

    results = results_of(connector, submission)

    assert results["failed"] == [dying]
    assert results["failed_OUTPUT"] == ["worker process died (exit code 3)"]
    assert results["finished"] == others
    assert results["finished_OUTPUT"] == [str(i) for i in range(1, 7)]
    assert record.starts() == {dying: 3, **dict.fromkeys(others, 1)}
    assert record.ends() == dict.fromkeys(others, 1)
    assert retries(connector, submission) == {dying: 2, **dict.fromkeys(others, 0)}
    # Each death took its worker with it: no attempt ran in it afterwards, and a new worker
    # on the same agent, which is still there, took the next task.
    attempts = [(task_id, pid) for task_id, pid, _ in record.attempts()]
    deaths = [n for n, (task_id, _) in enumerate(attempts) if task_id == dying]
    assert len(deaths) == 3
    for n in deaths:
        assert attempts[n][1] not in [pid for _, pid in attempts[n + 1 :]]
        assert gone(attempts[n][1])
    assert {name for _, _, name in record.attempts()} == {agent}
    assert grid.pids.keys() >= {agent}


# --- 4. a task that overruns its timeout --------------------------------------------------


def test_a_task_running_past_its_timeout_is_stopped_retried_then_failed(connector, send, record):
    submission = send(
        [record.task(sleep=60), record.task(**{"return": "quick"})], retries=1, timeout_sec=1
    )
    slow, quick = submission["task_ids"]

    results = results_of(connector, submission)

    assert results["failed"] == [slow]
    assert results["failed_OUTPUT"] == ["timed out after 1 s"]
    assert results["finished"] == [quick]
    assert results["finished_OUTPUT"] == ['"quick"']
    assert record.starts() == {slow: 2, quick: 1}
    assert record.ends() == {quick: 1}
    assert retries(connector, submission) == {slow: 1, quick: 0}
    # Stopped, not left sleeping: both workers that ran it were killed.
    assert all(gone(pid) for pid in record.workers(slow))


# --- 5. cancel -----------------------------------------------------------------------------


def test_cancel_moves_pending_and_running_tasks_stops_them_and_spares_finished_ones(
    grid, connector, send, record, messages
):
    # Whichever two tasks start first return at once; the next two run until stopped.
    tasks = [record.task(sleep=60, quick_first=2, **{"return": i}) for i in range(12)]
    submission = send(tasks)
    session_id, ids = submission["session_id"], submission["task_ids"]
    expected = {**NO_TASKS, "finished": 2, "processing": AGENTS, "pending": 10 - AGENTS}

    def settled() -> bool:
        # The running tasks' handlers have started, too.
        return counts(connector, submission) == expected and len(record.starts()) == 2 + AGENTS

    wait_for(grid, settled, WAIT_SEC, f"{expected}, every running handler started")
    done = [t for t in ids if t in record.ends()]
    running = [t for t in ids if t in record.starts() and t not in done]
    workers = [pid for t in running for pid in record.workers(t)]
    assert len(done) == 2
    assert len(running) == len(workers) == AGENTS

    first = connector.cancel_sessions([session_id])
    second = connector.cancel_sessions(session_id)

    assert first == {
        session_id: {
            "cancelled_pending": 10 - AGENTS,
            "cancelled_processing": AGENTS,
            "total_cancelled_tasks": 10,
        }
    }
    assert second == {session_id: protocol.cancel_counts(0, 0)}
    wait_for(grid, lambda: all(gone(pid) for pid in workers), 10, "the handlers to be stopped")
    # The agents are free again: a new session runs at once, and the cancelled tasks'
    # messages are all received and dropped.
    after = send([record.task(**{"return": "after"})] * AGENTS)
    assert results_of(connector, after)["finished_OUTPUT"] == ['"after"'] * AGENTS
    wait_for(grid, lambda: messages() == (0, 0), WAIT_SEC, "the queue to empty")

    results = results_of(connector, submission)
    cancelled = [t for t in ids if t not in done]
    assert results["finished"] == done
    assert results["finished_OUTPUT"] == [str(ids.index(t)) for t in done]
    assert results["cancelled"] == cancelled
    assert results["cancelled_OUTPUT"] == [""] * 10
    assert results["metadata"]["counts"] == {**NO_TASKS, "finished": 2, "cancelled": 10}
    # No cancelled task ran to its end, and none but those running at the cancel started.
    assert record.starts() == dict.fromkeys([*done, *running, *after["task_ids"]], 1)
    assert record.ends() == dict.fromkeys([*done, *after["task_ids"]], 1)
    assert set(connector.dataplane.read_outputs(cancelled).values()) == {None}
    assert set(retries(connector, submission).values()) == {0}


# --- 6. duplicate delivery ----------------------------------------------------------------


def test_a_task_delivered_again_runs_once_and_never_changes_after_it_ends(
    grid, connector, send, record, table, queue, messages
):
    submission = send([record.task(sleep=4, **{"return": "once"})], retries=3)
    [task_id] = submission["task_ids"]
    wait_for(grid, lambda: record.starts()[task_id], STARTUP_SEC, "the first attempt")

    # A second message while the task runs (as when its visibility runs out): the idle agent
    # takes it, cannot claim the task, and leaves the message be while the task may yet run.
    assert queue.send([table.get(task_id)], stats={}) == []
    wait_for(grid, lambda: messages() == (0, 2), 3.5, "the copy to be received")
    assert record.ends() == {}
    results = results_of(connector, submission)
    ended = table.get(task_id)
    # A third message after the task finished.
    assert queue.send([ended], stats={}) == []
    wait_for(grid, lambda: messages() == (0, 0), WAIT_SEC, "every copy to be dropped")

    assert results["finished"] == [task_id]
    assert results["finished_OUTPUT"] == ['"once"']
    assert record.starts() == record.ends() == {task_id: 1}
    assert table.get(task_id) == ended
    assert protocol.state_of(ended[protocol.TASK_STATUS]) == protocol.FINISHED
    assert retries(connector, submission) == {task_id: 0}


# --- 7. restarting the agents -------------------------------------------------------------


def test_stopping_every_agent_mid_session_and_starting_them_again_loses_nothing(
    grid, connector, send, record, table
):
    submission = send([record.task(sleep=1, **{"return": i}) for i in range(6)])
    ids = submission["task_ids"]

    def half_done() -> bool:
        starts, ends = record.starts(), record.ends()
        return sum(ends.values()) >= 2 and len(starts - ends) == AGENTS

    wait_for(grid, half_done, WAIT_SEC, "two tasks done and two running")
    grid.scale_agents(0)

    states = {
        t: protocol.state_of(row[protocol.TASK_STATUS]) for t, row in table.get_many(ids).items()
    }
    interrupted = sorted(t for t, state in states.items() if state == protocol.PROCESSING)
    finished = sum(state == protocol.FINISHED for state in states.values())
    assert len(interrupted) == AGENTS, states
    assert Counter(states.values()) == Counter(
        finished=finished, processing=AGENTS, pending=4 - finished
    )

    # With no agent left, the checker puts the interrupted tasks back once their heartbeats
    # expire; nothing else moves.
    def retried() -> bool:
        rows = table.get_many(interrupted)
        return all(row[protocol.RETRIES] == 1 for row in rows.values())

    wait_for(grid, retried, WAIT_SEC, "the interrupted tasks to go back to pending")
    assert counts(connector, submission) == {
        **NO_TASKS,
        "finished": finished,
        "pending": 6 - finished,
    }
    grid.scale_agents(AGENTS)
    results = results_of(connector, submission)

    assert results["finished"] == ids
    assert results["finished_OUTPUT"] == [str(i) for i in range(6)]
    assert record.starts() == {t: 2 if t in interrupted else 1 for t in ids}
    assert record.ends() == dict.fromkeys(ids, 1)
    assert retries(connector, submission) == {t: int(t in interrupted) for t in ids}


# --- the gateway's cancel, in this process -------------------------------------------------


class _BackedUpQueue:
    """A queue that says it is full, so that the dispatcher holds tasks back, until drained."""

    def __init__(self, queue: TaskQueue) -> None:
        self.queue = queue
        self.full = True

    def approximate_depth(self) -> int:
        return dispatcher.HIGH_WATER if self.full else self.queue.approximate_depth()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)


@pytest.fixture
def gateway(grid: LocalGrid, table: StateTable) -> Iterator[tuple[GridHandlers, _BackedUpQueue]]:
    """The gateway's handlers on the grid's table and data plane, with a queue of their own.

    No agent reads that queue, so its tasks stay pending; it starts out full.
    """
    sqs = aws.client(grid.config, "sqs")
    name = f"htc_task_queue_private-{protocol.new_session_id()}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    config = load_config({**grid.config.raw, "tasks_queue_name": name})
    queue = _BackedUpQueue(TaskQueue(config))
    dataplane = open_dataplane(config)
    try:
        yield GridHandlers(table, queue, dataplane), queue
    finally:
        dataplane.close()
        sqs.delete_queue(QueueUrl=url)


@pytest.mark.parametrize("queued", [True, False], ids=["queued-after-a-result", "never-queued"])
def test_cancel_reaches_every_task_however_recently_it_was_queued(
    gateway, table, monkeypatch, queued
):
    handlers, queue = gateway
    # /result answers from a read of the table that it keeps for at least this long (a tenth
    # of a second in the gateway); long enough here that the cancel never meets a fresh one.
    monkeypatch.setattr(dispatcher, "REFRESH_PERIOD_SEC", 3600.0)
    session_id = protocol.new_session_id()
    ids = protocol.task_ids(session_id, 3)
    handlers.dataplane.write_inputs(ids, [{"n": i} for i in range(3)])
    handlers.dataplane.write_payload(protocol.make_envelope(session_id, ids))
    handlers.submit(session_id)
    before = handlers.result(session_id)
    if queued:
        queue.full = False
        assert handlers.dispatcher.feed_once() == 3

    answer = handlers.cancel([session_id])

    assert before[protocol.COUNTS_FIELD] == {**NO_TASKS, "pending": 3}
    assert answer == {session_id: protocol.cancel_counts(3, 0)}
    rows = table.get_many(ids)
    assert [protocol.state_of(rows[t][protocol.TASK_STATUS]) for t in ids] == ["cancelled"] * 3
    assert handlers.result(session_id)["cancelled"] == ids
    assert handlers.cancel([session_id]) == {session_id: protocol.cancel_counts(0, 0)}
