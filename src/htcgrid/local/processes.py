"""The embedded grid's child processes: starting them, hearing them announce, stopping them.

Each child is ``python -m <module>``, leads a process group of its own, writes its stdout and
stderr to files in the grid's workdir, and lives as long as the pipe to its stdin stays open
(see :class:`htcgrid.local.cli.Lifeline`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import LocalGridError

logger = logging.getLogger(__name__)

#: Seconds a child process has to announce itself before the start is given up.
READY_TIMEOUT_SEC = 30.0
#: Seconds a group of child processes has to exit before it is killed.
STOP_TIMEOUT_SEC = 5.0
_POLL_SEC = 0.01
_LOG_TAIL_CHARS = 2000


@dataclass
class ChildProcess:
    """One child process and its log files (``.out``: stdout, ``.log``: stderr)."""

    name: str
    process: subprocess.Popen[bytes]
    out_path: Path
    log_path: Path

    @property
    def pid(self) -> int:
        """The child's process id, which is also its process group id."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """True while the child runs (a child found dead is reaped)."""
        return self.process.poll() is None

    def log_tail(self) -> str:
        """The end of the child's stderr, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return text[-_LOG_TAIL_CHARS:].strip() or "(empty log)"


def spawn(
    name: str, module: str, args: Sequence[str | Path], workdir: Path, env: Mapping[str, str]
) -> ChildProcess:
    """Start ``python -m module *args`` with its stdin a pipe and its output in ``workdir``."""
    out_path = workdir / f"{name}.out"
    log_path = workdir / f"{name}.log"
    with open(out_path, "wb") as out, open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=log,
            env=dict(env),
            # A group of its own: Ctrl-C in a terminal reaches only the parent, which then
            # stops the children in order, and a child's own subprocesses can be killed with it.
            start_new_session=True,
        )
    logger.debug("started %s (pid %d)", name, process.pid)
    return ChildProcess(name, process, out_path, log_path)


def announcement(child: ChildProcess, key: str, timeout: float = READY_TIMEOUT_SEC) -> str:
    """Wait for the JSON line a child prints on stdout once ready; return its ``key``.

    Raises
    ------
    LocalGridError
        The child exited, printed something else, or was silent for ``timeout`` seconds; the
        message ends with the child's log.
    """
    deadline = time.monotonic() + timeout
    while True:
        text = child.out_path.read_bytes().decode("utf-8", errors="replace")
        if "\n" in text:
            line = text.split("\n", 1)[0]
            try:
                return str(json.loads(line)[key])
            except (ValueError, KeyError, TypeError):
                raise LocalGridError(
                    f"the embedded grid's {child.name} process announced {line[:200]!r} "
                    f"instead of its {key}; its log ends with:\n{child.log_tail()}"
                ) from None
        if not child.alive:
            raise LocalGridError(
                f"the embedded grid's {child.name} process exited with code "
                f"{child.process.returncode} before it was ready; its log ends with:\n"
                f"{child.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise LocalGridError(
                f"the embedded grid's {child.name} process was not ready within "
                f"{timeout:.0f} s; its log ends with:\n{child.log_tail()}"
            )
        time.sleep(_POLL_SEC)


def kill_group(child: ChildProcess) -> None:
    """SIGKILL the child's whole process group (what an exited child left behind, too)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def terminate(children: Sequence[ChildProcess], timeout: float = STOP_TIMEOUT_SEC) -> None:
    """Close each child's stdin and SIGTERM it; after ``timeout`` s, SIGKILL each group."""
    for child in children:
        if child.process.stdin is not None:
            with contextlib.suppress(OSError):
                child.process.stdin.close()
        if child.alive:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s; killing it", child.name, timeout)
    for child in children:
        kill_group(child)
        child.process.wait()


def kill_all(children: Sequence[ChildProcess]) -> None:
    """SIGKILL every child's group at once and reap the children (no grace period)."""
    for child in children:
        kill_group(child)
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=STOP_TIMEOUT_SEC)
        if child.process.stdin is not None:
            with contextlib.suppress(OSError):
                child.process.stdin.close()


def write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner only, atomically (readers never see half)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # A file left by an earlier run keeps its mode through O_CREAT: set it again.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)
