"""The worker process: a handler's crash, hang or bad answer ends the attempt, not the agent."""

from __future__ import annotations

import os
import signal
import time

import pytest

from htcgrid.local.worker import (
    Ending,
    HandlerContext,
    HandlerSpecError,
    Outcome,
    WorkerProcess,
    check_handler_spec,
)


@pytest.fixture
def make_worker():
    """Build workers for a test and close every one of them after it."""
    workers: list[WorkerProcess] = []

    def make(spec: str) -> WorkerProcess:
        worker = WorkerProcess(spec)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_returned_value_comes_back_with_the_context_ids(make_worker):
    worker = make_worker("handlers:echo")
    context = HandlerContext(task_id="s_0", session_id="s", agent_id="agent-1")

    outcome = worker.run({"x": [1, "two"]}, timeout_sec=30, context=context)

    assert outcome.ending is Ending.OK and outcome.ok
    assert outcome.error == ""
    assert outcome.value == {
        "event": {"x": [1, "two"]},
        "task_id": "s_0",
        "session_id": "s",
        "agent_id": "agent-1",
        "has_time_left": True,
        "pid": worker.pid,
    }


def test_the_worker_is_reused_between_attempts(make_worker):
    worker = make_worker("handlers:echo")

    first = worker.run(1, timeout_sec=30)
    second = worker.run(2, timeout_sec=30)

    assert first.value["pid"] == second.value["pid"] == worker.pid


def test_the_mock_compute_engine_returns_its_milliseconds(make_worker):
    worker = make_worker("htcgrid.workers:mock_compute_engine")

    outcome = worker.run({"worker_arguments": ["20", "1", "1"]}, timeout_sec=30)

    assert outcome == Outcome(Ending.OK, value=20)


def test_a_raising_handler_fails_with_type_message_and_traceback(make_worker):
    worker = make_worker("handlers:raise_value_error")
    worker.start()
    pid = worker.pid

    outcome = worker.run({"n": 7}, timeout_sec=30)

    assert outcome.ending is Ending.FAILED
    assert outcome.value is None
    first_line, rest = outcome.error.split("\n", 1)
    assert first_line == "ValueError: bad task {'n': 7}"
    assert "Traceback (most recent call last):" in rest
    assert 'handlers.py", line' in rest and "in raise_value_error" in rest
    # An exception is the handler's failure, not the worker's: the same process goes on.
    assert worker.pid == pid


def test_a_handler_calling_os_exit_is_a_death_with_its_exit_code(make_worker):
    worker = make_worker("handlers:exit_abruptly")
    worker.start()
    pid = worker.pid

    outcome = worker.run({"code": 3}, timeout_sec=30)

    assert outcome == Outcome(Ending.DIED, error="worker process died (exit code 3)")
    assert worker.pid is None and _gone(pid)


def test_a_worker_killed_by_a_signal_is_a_death_naming_the_signal(make_worker):
    worker = make_worker("handlers:sleep")
    worker.start()
    os.kill(worker.pid, signal.SIGKILL)

    outcome = worker.run({"seconds": 5}, timeout_sec=30)

    assert outcome == Outcome(Ending.DIED, error="worker process died (killed by signal SIGKILL)")


def test_a_fresh_worker_replaces_a_dead_one(make_worker):
    worker = make_worker("handlers:exit_abruptly")
    worker.run({"code": 1}, timeout_sec=30)

    outcome = worker.run({"code": 5}, timeout_sec=30)

    assert outcome.error == "worker process died (exit code 5)"


def test_a_handler_running_past_its_timeout_is_killed(make_worker):
    worker = make_worker("handlers:sleep")
    worker.start()
    pid = worker.pid

    started = time.monotonic()
    outcome = worker.run({"seconds": 30}, timeout_sec=0.5)
    elapsed = time.monotonic() - started

    assert outcome == Outcome(Ending.TIMED_OUT, error="timed out after 0.5 s")
    assert 0.5 <= elapsed < 5
    assert worker.pid is None and _gone(pid)
    assert worker.run({"seconds": 0}, timeout_sec=30) == Outcome(Ending.OK, value=0.0)


def test_a_stop_request_kills_the_running_handler(make_worker):
    worker = make_worker("handlers:sleep")
    worker.start()
    pid = worker.pid
    stop_at = time.monotonic() + 0.3

    outcome = worker.run(
        {"seconds": 30}, timeout_sec=60, should_stop=lambda: time.monotonic() > stop_at
    )

    assert outcome.ending is Ending.STOPPED
    assert outcome.error.startswith("stopped")
    assert worker.pid is None and _gone(pid)


def test_a_result_that_is_not_json_is_a_failed_attempt(make_worker):
    worker = make_worker("handlers:return_a_set")

    outcome = worker.run({}, timeout_sec=30)

    assert outcome.ending is Ending.FAILED
    assert outcome.error == (
        "the handler returned a set that is not JSON-serialisable (TypeError: Object of type "
        "set is not JSON serializable); return a dict, list, str, number, bool or None"
    )


@pytest.mark.parametrize(
    "spec", ["handlers", "handlers:", ":echo", "handlers:echo:x", "my module:f", "a:b-c", ""]
)
def test_a_malformed_handler_spec_is_refused_at_once(spec):
    with pytest.raises(HandlerSpecError, match="expected 'module:function'"):
        WorkerProcess(spec)


def test_a_valid_spec_splits_into_module_and_function():
    assert check_handler_spec("htcgrid.workers:mock_compute_engine") == (
        "htcgrid.workers",
        "mock_compute_engine",
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "no_such_module_here:f",
            "handler module 'no_such_module_here' (of handler spec 'no_such_module_here:f') "
            "was not found: is it installed, or on the agents' PYTHONPATH?",
        ),
        (
            "handlers:no_such_function",
            "handler module 'handlers' has no function 'no_such_function' "
            "(handler spec 'handlers:no_such_function')",
        ),
        (
            "handlers:NOT_A_FUNCTION",
            "handler spec 'handlers:NOT_A_FUNCTION' names a value of type int, not a function",
        ),
    ],
)
def test_a_handler_that_cannot_be_loaded_is_a_clear_error(make_worker, spec, message):
    worker = make_worker(spec)

    with pytest.raises(HandlerSpecError) as raised:
        worker.start()

    assert str(raised.value) == message
    assert worker.pid is None
    # Through run(), the same text is a failed attempt rather than an exception.
    assert worker.run({}, timeout_sec=30) == Outcome(
        Ending.FAILED, error=f"HandlerSpecError: {message}"
    )


def test_close_ends_the_worker(make_worker):
    worker = make_worker("handlers:echo")
    worker.start()
    pid = worker.pid

    worker.close()

    assert worker.pid is None and _gone(pid)
