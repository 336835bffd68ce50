"""The ``htcgrid`` command interrupted with Ctrl-C: what it says, and what it leaves behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

SENT = re.compile(r"INFO htcgrid\.connector: session (\S+): \d+ tasks uploaded")


def start_batch_client(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "htcgrid", "client", "--log", "info", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt_once_sent(process: subprocess.Popen[str], sessions: int) -> tuple[list[str], str]:
    """Wait until the client has sent ``sessions`` sessions, Ctrl-C it; (their ids, stderr)."""
    assert process.stderr is not None
    lines: list[str] = []
    sent: list[str] = []
    deadline = time.monotonic() + 60
    while len(sent) < sessions:
        assert time.monotonic() < deadline, "".join(lines)
        line = process.stderr.readline()
        assert line, f"the client ended before sending {sessions} sessions:\n{''.join(lines)}"
        lines.append(line)
        if match := SENT.search(line):
            sent.append(match.group(1))
    # Let the client's threads get into their waits on the results.
    threading.Event().wait(0.5)
    lines.append("--- interrupted here ---\n")
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=30)
    return sent, "".join(lines) + rest


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_ctrl_c_on_a_configured_grid_lists_the_sessions_left_running(grid, connector):
    env = {
        **os.environ,
        "AGENT_CONFIG_FILE": str(grid.config_path),
        "USERNAME": grid.username,
        "PASSWORD": grid.password,
    }
    process = start_batch_client(env, "--nthreads", "2", "--worker_arguments", "20000 1 1")
    try:
        sent, stderr = interrupt_once_sent(process, 2)
    finally:
        process.kill()
    try:
        assert process.returncode == 130, stderr
        after = stderr.split("--- interrupted here ---", 1)[1]
        assert "2 sessions are still running on the grid" in after, stderr
        for session_id in sent:
            assert f"  {session_id}\n" in after, stderr
        assert after.strip().endswith("interrupted"), stderr
        # The grid still holds them: the command only stopped waiting.
        assert set(connector.cancel_sessions(sent)) == set(sent)
    finally:
        connector.cancel_sessions(sent)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_ctrl_c_with_an_embedded_grid_stops_it_without_retry_noise(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("AGENT_CONFIG_FILE", "INTRA_VPC")}
    env["TMPDIR"] = str(tmp_path)
    process = start_batch_client(env, "--agents", "1", "--worker_arguments", "20000 1 1")
    try:
        _, stderr = interrupt_once_sent(process, 1)
    finally:
        process.kill()

    assert process.returncode == 130, stderr
    after = stderr.split("--- interrupted here ---", 1)[1]
    # The embedded grid stops with the command: nothing is left running, nothing to list,
    # and the client's abandoned threads do not log their retries against the stopping grid.
    assert "still running" not in after, stderr
    assert "WARNING" not in after and "retrying" not in after, stderr
    assert after.strip().endswith("interrupted"), stderr
    assert not list(tmp_path.glob("htcgrid-*")), "the embedded grid left its folder behind"
