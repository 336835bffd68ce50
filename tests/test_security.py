"""Secrets never reach a log line, ids are checked before any I/O, and the CLI logs safely."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import htcgrid
from conftest import start_grid
from htcgrid import AWSConnector, protocol
from htcgrid.auth import CognitoAuth, SecretRedactor, redact
from htcgrid.errors import AuthenticationError, TaskValidationError

pytestmark = pytest.mark.integration


class _Capture(logging.Handler):
    """Keeps every record it sees, formatted, with its exception text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.loggers: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.loggers.add(record.name)


@contextlib.contextmanager
def all_logs() -> Iterator[_Capture]:
    """Every log record of this process, at every level and from every library."""
    capture = _Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)


def grid_logs(workdir: Path) -> dict[str, str]:
    """The embedded grid's own log files: each child process's stdout and stderr."""
    return {
        path.name: path.read_text(encoding="utf-8", errors="replace")
        for path in workdir.iterdir()
        if path.suffix in (".log", ".out")
    }


def test_no_password_token_or_api_key_reaches_a_log_line(monkeypatch):
    # A full run with everything logged: sign-in, a wrong password, submit, results with
    # tokens expiring underway (the gateway refuses them after 2 s), cancel, and api-key mode.
    # The grid itself starts before the capture: test_connect_... covers that part.
    tokens: list[str] = []
    store = CognitoAuth._store

    def keep_tokens(self: CognitoAuth, result: dict[str, Any]) -> None:
        tokens.extend(value for key, value in result.items() if key.endswith("Token"))
        store(self, result)

    monkeypatch.setattr(CognitoAuth, "_store", keep_tokens)
    grid = start_grid(agents=1, keep_workdir=True, settings={"token_lifetime_sec": 2})
    workdir = grid.workdir
    secrets = {
        "password": grid.password,
        "wrong password": grid.password[::-1],
        "api key": grid.config.api_key,
    }
    try:
        with all_logs() as captured:
            with pytest.raises(AuthenticationError):
                htcgrid.connect(
                    grid.config_path, username=grid.username, password=secrets["wrong password"]
                )
            with htcgrid.connect(
                grid.config_path, username=grid.username, password=grid.password
            ) as client:
                frame = client.submit(
                    [{"worker_arguments": ["3000", "1", "1"]}, {"worker_arguments": ["oops"]}],
                    retries=0,
                ).result(timeout=30)
                slow = client.connector.send([{"worker_arguments": ["30000", "1", "1"]}])
                cancelled = client.connector.cancel_sessions(slow["session_id"])
            with AWSConnector() as private:
                private.init(grid.config_path, private=True)
                finished = private.get_results(private.send([{"worker_arguments": ["1"]}]), 30)
    finally:
        grid.stop()
        logs = grid_logs(workdir)
        shutil.rmtree(workdir, ignore_errors=True)

    assert list(frame["status"]) == ["finished", "failed"]
    assert cancelled[slow["session_id"]]["total_cancelled_tasks"] == 1
    assert finished["finished_OUTPUT"] == ["1"]
    # Sign-in plus at least one refresh after a 401; each gives an ID and an access token.
    assert len(tokens) >= 5
    assert " 401 " in logs["gateway.log"]
    # The capture saw what a leak would come through: botocore's bodies, urllib3, htcgrid.
    assert {"botocore.endpoint", "botocore.parsers", "urllib3.connectionpool"} <= captured.loggers
    assert {"htcgrid.auth", "htcgrid.controlplane", "htcgrid.connector"} <= captured.loggers
    assert any('"PASSWORD": "<redacted>"' in line for line in captured.lines)
    secrets.update({f"token {i}": token for i, token in enumerate(tokens)})
    everything = "\n".join([*captured.lines, *logs.values()])
    assert sorted(name for name, secret in secrets.items() if secret in everything) == []


def test_connect_starting_an_embedded_grid_logs_no_password():
    # connect() without a configuration provisions a grid, and its user, in this process.
    with all_logs() as captured, htcgrid.connect(workers=1) as client:
        password = client.grid.password
        output = client.submit([{"worker_arguments": ["1", "1", "1"]}]).result(timeout=30)
        # The children write their logs line by line: all of the run is there now.
        logs = grid_logs(client.grid.workdir)

    assert list(output["output"]) == [1]
    assert any('"Password": "<redacted>"' in line for line in captured.lines)
    assert password not in "\n".join([*captured.lines, *logs.values()])


def test_redaction_blanks_cognito_fields_tokens_and_known_secrets():
    body = (
        '{\'body\': b\'{"AuthFlow": "REFRESH_TOKEN_AUTH", "AuthParameters": '
        '{"REFRESH_TOKEN": "19e39577-77a1-48dd"}, "ClientId": "abc"}\'}'
    )
    record = logging.LogRecord(
        "botocore.endpoint", logging.DEBUG, __file__, 1, "Sending %s as %s", (body, "alice"), None
    )

    kept = SecretRedactor().filter(record)

    assert kept is True
    assert record.getMessage() == (
        'Sending {\'body\': b\'{"AuthFlow": "REFRESH_TOKEN_AUTH", "AuthParameters": '
        '{"REFRESH_TOKEN": "<redacted>"}, "ClientId": "abc"}\'} as alice'
    )
    assert redact("Authorization: eyJhbGciOiJSUzI1.eyJzdWIiOiIxMjM0.sig_-x end") == (
        "Authorization: <redacted> end"
    )
    assert redact("key=0123456789abcdef and short", ["0123456789abcdef", "short"]) == (
        "key=<redacted> and short"
    )


# --- ids become data-plane keys: nothing unchecked may reach I/O ---------------------------


@pytest.fixture
def no_io(connector: AWSConnector, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every data-plane and API request the connector makes, instead of making it."""
    made: list[str] = []
    monkeypatch.setattr(connector.dataplane, "get", lambda key: made.append(f"get {key}"))
    monkeypatch.setattr(connector.dataplane, "put", lambda key, data: made.append(f"put {key}"))
    monkeypatch.setattr(
        connector.control._http, "request", lambda *args, **kwargs: made.append("http")
    )
    return made


def test_malicious_ids_are_refused_before_any_io(connector, no_io):
    good = protocol.new_session_id()
    calls = [
        lambda: connector.get_results("../../etc/passwd"),
        lambda: connector.get_results({"session_id": "a/b", "task_ids": ["a/b_0"]}),
        lambda: connector.get_results({"session_id": good, "task_ids": [f"{good}_0/../x"]}),
        lambda: connector.get_results({"session_id": good, "task_ids": ["other-session_0"]}),
        lambda: connector.cancel_sessions([good, "x_y"]),
        lambda: connector.control.result("a\\b"),
        lambda: connector.control.submit("%2e%2e"),
    ]

    messages = []
    for call in calls:
        with pytest.raises(ValueError) as caught:
            call()
        messages.append(str(caught.value).split(":")[0])

    assert no_io == []
    assert messages == [
        "invalid session id '../../etc/passwd'",
        "invalid session id 'a/b'",
        f"invalid task id '{good}_0/../x'",
        f"task 'other-session_0' is not a task of session {good}",
        "invalid session id 'x_y'",
        "invalid session id 'a\\\\b'",
        "invalid session id '%2e%2e'",
    ]


def test_task_ids_read_from_a_payload_are_checked_before_they_become_keys(connector):
    session_id = protocol.new_session_id()
    envelope = protocol.make_envelope(session_id, [f"{session_id}_0"])
    envelope["tasks_list"]["tasks"].append(f"{session_id}_1/../../victim")
    connector.dataplane.write_payload(envelope)
    read: list[str] = []
    get = connector.dataplane.get
    connector.dataplane.get = lambda key: read.append(key) or get(key)  # type: ignore[method-assign]

    with pytest.raises(TaskValidationError, match=r"^invalid task id '.*_1/\.\./\.\./victim'"):
        connector.get_results(session_id)

    assert read == [f"{session_id}-payload"]


# --- the command line ----------------------------------------------------------------------


def test_the_cli_at_debug_level_logs_htcgrid_but_never_botocore(grid, tmp_path: Path):
    env = {
        **os.environ,
        "AGENT_CONFIG_FILE": str(grid.config_path),
        "USERNAME": grid.username,
        "PASSWORD": grid.password,
    }

    done = subprocess.run(
        [sys.executable, "-m", "htcgrid", "simple-client", "--log", "debug", "--timeout", "60"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("2 of 2 tasks finished")
    assert f"INFO htcgrid.auth: signed in to user pool {grid.config.user_pool_id}" in done.stderr
    assert "INFO htcgrid.connector: session " in done.stderr
    assert "botocore" not in done.stderr and "urllib3" not in done.stderr
    assert grid.password not in done.stdout + done.stderr
    assert "eyJ" not in done.stdout + done.stderr
