"""AWSConnector against the embedded grid over loopback HTTP: the documented API end to end."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import time

import pytest

from htcgrid import AWSConnector, aws, protocol
from htcgrid.errors import AuthenticationError, TaskValidationError
from htcgrid.local.statetable import StateTable

pytestmark = pytest.mark.integration


def sleep_task(ms: int) -> dict:
    return {"worker_arguments": [str(ms), "1", "1"]}


def test_documented_simple_client(connector):
    submission = connector.send([sleep_task(1000), sleep_task(2000)])

    results = connector.get_results(submission, timeout_sec=60)

    session_id = submission["session_id"]
    assert submission["task_ids"] == [f"{session_id}_0", f"{session_id}_1"]
    assert results["finished"] == submission["task_ids"]
    assert results["finished_OUTPUT"] == ["1000", "2000"]
    assert results["failed"] == results["failed_OUTPUT"] == []
    assert results["cancelled"] == results["cancelled_OUTPUT"] == []
    assert results["metadata"]["tasks_in_response"] == 2
    assert results["metadata"]["complete"] is True
    assert results["metadata"]["not_terminal"] == []


def test_a_session_of_200_tasks_returns_every_output_in_submission_order(connector):
    tasks = [sleep_task(i % 7) for i in range(200)]

    submission = connector.send(tasks)
    results = connector.get_results(submission, timeout_sec=120)

    assert results["finished"] == submission["task_ids"]
    assert results["finished_OUTPUT"] == [str(i % 7) for i in range(200)]
    assert results["metadata"]["counts"]["finished"] == 200


def test_get_results_reads_each_output_once_as_its_task_ends(connector, monkeypatch):
    reads: list[tuple[float, str]] = []
    dataplane = connector.dataplane
    original = dataplane.get

    def timed_get(key: str):
        reads.append((time.monotonic(), key))
        return original(key)

    monkeypatch.setattr(dataplane, "get", timed_get)
    submission = connector.send([sleep_task(10), sleep_task(2500)])
    results = connector.get_results(submission, timeout_sec=60)
    returned = time.monotonic()

    quick, slow = submission["task_ids"]
    assert results["finished_OUTPUT"] == ["10", "2500"]
    output_reads = {key: at for at, key in reads if key.endswith("-output")}
    assert sorted(key for _, key in reads if key.endswith("-output")) == sorted(output_reads)
    assert set(output_reads) == {f"{quick}-output", f"{slow}-output"}
    # The quick task's output was read while the slow one still ran, not at the end.
    assert returned - output_reads[f"{quick}-output"] > 1.0


def test_results_are_in_submission_order_when_tasks_finish_out_of_order(connector):
    submission = connector.send([sleep_task(1500), sleep_task(10), sleep_task(400)])

    results = connector.get_results(submission, timeout_sec=60)

    assert results["finished"] == submission["task_ids"]
    assert results["finished_OUTPUT"] == ["1500", "10", "400"]


def test_a_raising_handler_fails_after_the_retries_with_its_traceback(connector, grid):
    submission = connector.send([{"worker_arguments": ["not-a-number"]}, sleep_task(5)], retries=2)

    results = connector.get_results(submission, timeout_sec=60)

    bad, good = submission["task_ids"]
    assert results["failed"] == [bad]
    assert results["finished"] == [good]
    error = results["failed_OUTPUT"][0]
    assert "ValueError" in error
    assert "not-a-number" in error
    assert "Traceback (most recent call last)" in error
    row = StateTable(grid.config).get(bad)
    assert row["retries"] == 2
    assert row["task_status"] == protocol.status_value("failed", submission["session_id"])


def test_every_data_plane_key_is_in_the_wire_format(connector, grid):
    tasks = [sleep_task(3), {"worker_arguments": ["7", "1", "1"], "label": "é/+?"}]

    submission = connector.send(tasks, retries=0, timeout_sec=30)
    connector.get_results(submission, timeout_sec=60)

    s3 = aws.client(grid.config, "s3")
    bucket = grid.config.s3_bucket

    def raw(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    session_id = submission["session_id"]
    for task_id, task in zip(submission["task_ids"], tasks):
        assert json.loads(base64.b64decode(raw(f"{task_id}-input"), validate=True)) == task
    assert raw(f"{session_id}_0-output") == base64.b64encode(b"3")
    assert raw(f"{session_id}_1-output") == base64.b64encode(b"7")
    envelope = json.loads(base64.urlsafe_b64decode(raw(f"{session_id}-payload")))
    assert envelope["session_id"] == session_id
    assert envelope["tasks_list"] == {"tasks": submission["task_ids"]}
    assert envelope["scheduler_data"] == {"task_timeout_sec": 30, "retry_count": 0}
    assert set(envelope["stats"]) == set(protocol.STATS_KEYS)


def test_cancel_moves_pending_and_running_tasks_and_leaves_finished_ones(connector, grid):
    quick = connector.send([sleep_task(1)])
    connector.get_results(quick, timeout_sec=30)
    slow = connector.send([sleep_task(20000)] * 4)
    table = StateTable(grid.config)
    deadline = time.monotonic() + 30
    while len(table.session_rows(slow["session_id"], "processing")) < 2:
        assert time.monotonic() < deadline, "the agents never started two tasks"
        time.sleep(0.1)

    counts = connector.cancel_sessions([slow["session_id"], quick["session_id"]])
    again = connector.cancel_sessions([slow["session_id"]])
    results = connector.get_results(slow, timeout_sec=30)

    assert counts == {
        slow["session_id"]: {
            "cancelled_pending": 2,
            "cancelled_processing": 2,
            "total_cancelled_tasks": 4,
        },
        quick["session_id"]: {
            "cancelled_pending": 0,
            "cancelled_processing": 0,
            "total_cancelled_tasks": 0,
        },
    }
    assert again[slow["session_id"]]["total_cancelled_tasks"] == 0
    assert results["cancelled"] == slow["task_ids"]
    assert connector.get_results(quick)["finished_OUTPUT"] == ["1"]


def test_a_wait_that_times_out_says_which_tasks_are_not_done(connector):
    submission = connector.send([sleep_task(5), sleep_task(15000)])
    try:
        results = connector.get_results(submission, timeout_sec=2)

        assert results["metadata"]["complete"] is False
        assert results["metadata"]["not_terminal"] == [submission["task_ids"][1]]
        assert results["finished"] == [submission["task_ids"][0]]
    finally:
        connector.cancel_sessions([submission["session_id"]])


def test_get_results_by_session_id_reads_the_task_list_from_the_payload(connector):
    submission = connector.send([sleep_task(2), sleep_task(1)])

    results = connector.get_results(submission["session_id"], timeout_sec=30)

    assert results["finished"] == submission["task_ids"]


def test_bad_tasks_are_refused_before_anything_is_sent(connector):
    with pytest.raises(TaskValidationError, match="the task list is empty"):
        connector.send([])
    with pytest.raises(TaskValidationError, match="task 1 is a str"):
        connector.send([sleep_task(1), "oops"])


def test_a_wrong_password_is_refused(grid):
    connector = AWSConnector()
    connector.init(grid.config_path, username=grid.username, password=grid.password + "x")

    with pytest.raises(AuthenticationError, match="wrong username or password"):
        connector.authenticate()


def test_an_unknown_user_is_refused(grid):
    connector = AWSConnector()
    connector.init(grid.config_path, username="mallory", password="whatever-123")

    with pytest.raises(AuthenticationError, match="mallory"):
        connector.authenticate()


def test_credentials_come_from_the_environment_as_documented_clients_read_them(grid, monkeypatch):
    monkeypatch.setenv("AGENT_CONFIG_FILE", str(grid.config_path))
    monkeypatch.setenv("USERNAME", grid.username)
    monkeypatch.setenv("PASSWORD", grid.password)
    connector = AWSConnector()
    connector.init(None)
    connector.authenticate()

    results = connector.get_results(connector.send([sleep_task(1)]), timeout_sec=30)

    assert results["finished_OUTPUT"] == ["1"]


def test_the_documented_example_runs_with_only_its_import_changed(grid, tmp_path):
    # HTC-Grid's page on using the API, verbatim but for the import line; the page leaves
    # `username` and `password` undefined, so they are read from the environment as HTC-Grid's
    # own simple client does.
    example = textwrap.dedent(
        """
        from htcgrid import AWSConnector

        import os
        import json
        import logging

        username = os.environ["USERNAME"]
        password = os.environ["PASSWORD"]

        client_config_file = os.environ['AGENT_CONFIG_FILE']

        with open(client_config_file, 'r') as file:
            client_config_file = json.loads(file.read())


        if __name__ == "__main__":

            logging.info("Simple Client")
            gridConnector = AWSConnector()

            gridConnector.init(client_config_file, username=username, password=password)
            gridConnector.authenticate()

            task_1_definition = {
                "worker_arguments": ["1000", "1", "1"]
            }

            task_2_definition = {
                "worker_arguments": ["2000", "1", "1"]
            }

            submission_resp = gridConnector.send([task_1_definition, task_2_definition])
            logging.info(submission_resp)


            results = gridConnector.get_results(submission_resp, timeout_sec=100)
            logging.info(results)
        """
    )
    script = tmp_path / "simple_client.py"
    script.write_text(example)
    env = {
        "AGENT_CONFIG_FILE": str(grid.config_path),
        "USERNAME": grid.username,
        "PASSWORD": grid.password,
        "PATH": "/usr/bin:/bin",
    }
    runner = (
        "import logging, runpy; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )

    done = subprocess.run(
        [sys.executable, "-c", runner],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "'finished_OUTPUT': ['1000', '2000']" in done.stderr
    assert grid.password not in done.stderr
