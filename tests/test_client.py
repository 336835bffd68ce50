"""The notebook API against the embedded grid: futures, DataFrames, polling, reattach."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import sys
import textwrap
import threading

import pandas as pd
import pytest

import htcgrid
from htcgrid import GridClient, Session, SessionNotFoundError, TaskFailuresError
from htcgrid.errors import TaskValidationError
from htcgrid.session import SessionTimeoutError

pytestmark = pytest.mark.integration


def sleep_task(ms: int) -> dict:
    return {"worker_arguments": [str(ms), "1", "1"]}


@pytest.fixture
def client(grid):
    client = htcgrid.connect(grid.config_path, username=grid.username, password=grid.password)
    try:
        yield client
    finally:
        client.close()


def test_submit_returns_a_session_future_that_resolves_to_a_dataframe(client):
    session = client.submit([sleep_task(300), sleep_task(10)])

    assert isinstance(session, Session)
    assert isinstance(session, concurrent.futures.Future)
    assert session.task_ids == [f"{session.session_id}_0", f"{session.session_id}_1"]
    frame = session.result(timeout=60)
    assert session.done() and not session.running()
    assert list(frame["status"]) == ["finished", "finished"]
    assert list(frame["output"]) == [300, 10]
    assert session.outputs() == [300, 10]
    assert session.exception() is None


def test_a_sweep_of_50_tasks_with_two_failing_reads_as_a_table(client):
    tasks = [{"worker_arguments": [str(i), "1", "1"], "rate": i / 100} for i in range(50)]
    tasks[7] = {"worker_arguments": ["seven"], "rate": 0.07}
    tasks[31] = {"worker_arguments": ["thirty-one"], "rate": 0.31}

    frame = client.submit(tasks, retries=0).result(timeout=120)

    assert len(frame) == 50
    assert list(frame.index) == list(range(50))
    assert list(frame.columns[:10]) == [
        "task_id",
        "status",
        "output",
        "error",
        "retries",
        "agent",
        "submitted_at",
        "started_at",
        "finished_at",
        "duration_s",
    ]
    assert list(frame.columns[10:]) == ["input.worker_arguments", "input.rate"]
    assert list(frame["task_id"]) == [f"{frame.loc[0, 'task_id'][:-2]}_{i}" for i in range(50)]
    failed = frame[frame["status"] == "failed"]
    assert list(failed.index) == [7, 31]
    assert failed["error"].str.contains("ValueError").all()
    finished = frame[frame["status"] == "finished"]
    assert len(finished) == 48
    assert list(finished["output"]) == [i for i in range(50) if i not in (7, 31)]
    assert list(frame["input.rate"]) == [i / 100 for i in range(50)]
    assert finished["agent"].str.startswith("agent-").all()
    assert (finished["finished_at"] >= finished["started_at"]).all()
    assert (finished["duration_s"] >= 0).all()
    assert (frame["retries"] == 0).all()


def test_raise_for_failures_lists_the_failed_tasks(client):
    session = client.submit([sleep_task(1), {"worker_arguments": ["nope"]}], retries=0)
    session.result(timeout=60)

    with pytest.raises(TaskFailuresError, match=r"1 of 2 tasks failed") as caught:
        session.raise_for_failures()

    assert list(caught.value.failed) == [session.task_ids[1]]


def test_status_totals_add_up_while_running(client):
    session = client.submit([sleep_task(1500)] * 6)
    seen = []
    while not session.done():
        seen.append(session.status())
        session.wait(0.2)

    assert all(sum(c[s] for s in htcgrid.protocol.STATES) == c["total"] == 6 for c in seen)
    assert any(c["processing"] > 0 for c in seen)
    assert session.status()["finished"] == 6


def test_concurrent_futures_wait_and_as_completed(client):
    slow = client.submit([sleep_task(1500)])
    fast = client.submit([sleep_task(1)])

    done, not_done = concurrent.futures.wait([slow, fast], timeout=60)
    order = list(client.as_completed([slow, fast], timeout=60))

    assert done == {slow, fast} and not not_done
    assert set(order) == {slow, fast}


def test_await_in_an_event_loop(client):
    async def run() -> pd.DataFrame:
        return await client.submit([sleep_task(5)])

    frame = asyncio.run(run())

    assert frame.loc[0, "output"] == 5


def test_result_timeout_names_the_tasks_not_done(client):
    session = client.submit([sleep_task(1), sleep_task(20000)])
    try:
        with pytest.raises(SessionTimeoutError, match="1 of 2 tasks not done") as caught:
            session.result(timeout=2)
        assert caught.value.not_terminal == [session.task_ids[1]]
        assert isinstance(caught.value, concurrent.futures.TimeoutError)
    finally:
        session.cancel()
    assert list(session.result(timeout=30)["status"]) == ["finished", "cancelled"]


def test_map_splits_into_sessions_and_gather_joins_them(client):
    sessions = client.map([sleep_task(i) for i in range(25)], chunk_size=10)

    frame = client.gather(sessions, timeout=60)

    assert [len(s.task_ids) for s in sessions] == [10, 10, 5]
    assert list(frame["output"]) == list(range(25))
    assert list(frame["session_id"].unique()) == [s.session_id for s in sessions]
    assert list(client.sessions()["session_id"])[-3:] == [s.session_id for s in sessions]


def test_the_poller_downloads_each_output_once(client, monkeypatch):
    reads: list[str] = []
    lock = threading.Lock()
    dataplane = client.connector.dataplane
    original = dataplane.get

    def counting_get(key: str):
        with lock:
            reads.append(key)
        return original(key)

    monkeypatch.setattr(dataplane, "get", counting_get)
    session = client.submit([sleep_task(50 * (i % 5)) for i in range(20)])
    session.result(timeout=60)

    output_reads = [k for k in reads if k.endswith("-output")]
    assert sorted(output_reads) == sorted(f"{t}-output" for t in session.task_ids)


def test_reattach_from_another_process(grid, client):
    session = client.submit([sleep_task(200), sleep_task(100)])
    code = textwrap.dedent(
        f"""
        import json, htcgrid
        client = htcgrid.connect({str(grid.config_path)!r}, username={grid.username!r},
                                 password={grid.password!r})
        frame = client.session({session.session_id!r}).result(timeout=60)
        print(json.dumps({{"ids": list(frame["task_id"]), "outputs": list(frame["output"]),
                          "inputs": list(frame["input.worker_arguments"])}}))
        client.close()
        """
    )

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=90, check=False
    )

    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "ids": session.task_ids,
        "outputs": [200, 100],
        "inputs": [["200", "1", "1"], ["100", "1", "1"]],
    }


def test_reattach_to_an_unknown_or_malformed_session_id(client):
    with pytest.raises(SessionNotFoundError, match="no session 0000-abc on this grid"):
        client.session("0000-abc")
    with pytest.raises(SessionNotFoundError, match="invalid session id"):
        client.session("../secrets")


def test_submit_checks_tasks_and_options_at_once(client):
    with pytest.raises(TaskValidationError, match="the task list is empty"):
        client.submit([])
    with pytest.raises(TaskValidationError, match="retries must be a whole number"):
        client.submit([sleep_task(1)], retries=-1)
    with pytest.raises(TaskValidationError, match="task timeout must be a whole number"):
        client.submit([sleep_task(1)], timeout=0)


def test_client_shows_itself(client):
    text = repr(client)
    html = client._repr_html_()

    assert "embedded" in text
    assert "htcgrid client" in html and "sessions" in html
    assert isinstance(client, GridClient)


def test_session_repr_and_html_show_counts(client):
    session = client.submit([sleep_task(1)])
    session.result(timeout=30)

    assert repr(session).startswith(f"<Session {session.session_id} done: 1 finished")
    assert "1 finished" in session._repr_html_()


def test_cancelling_a_session_not_sent_yet_ends_it_here(client, monkeypatch):
    release = threading.Event()
    sent: list[str] = []
    original = client.connector.submit_session

    def held_submit(session_id, *args, **kwargs):
        sent.append(session_id)
        release.wait(30)
        return original(session_id, *args, **kwargs)

    monkeypatch.setattr(client.connector, "submit_session", held_submit)
    first, second = client.submit([sleep_task(1)]), client.submit([sleep_task(1)])
    waiting = client.submit([sleep_task(1), sleep_task(1)])

    assert waiting.cancel() is True
    frame = waiting.result(timeout=5)
    release.set()

    assert list(frame["status"]) == ["cancelled", "cancelled"]
    assert waiting.session_id not in sent
    assert first.result(timeout=60)["output"].tolist() == [1]
    assert second.result(timeout=60)["output"].tolist() == [1]


def test_closing_the_client_ends_every_wait_with_the_way_back(grid):
    client = htcgrid.connect(grid.config_path, username=grid.username, password=grid.password)
    session = client.submit([sleep_task(20000)])
    session.wait(1)

    client.close()

    error = session.exception(timeout=5)
    assert isinstance(error, htcgrid.HTCGridError)
    assert f".session('{session.session_id}')" in str(error)
    other = htcgrid.connect(grid.config_path, username=grid.username, password=grid.password)
    try:
        assert other.session(session.session_id).cancel() is True
    finally:
        other.close()
