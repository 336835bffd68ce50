"""An agent of the embedded grid: takes tasks from the queue and runs them, one at a time.

Run as ``python -m htcgrid.local.agent --config PATH --agent-id ID``. The agent lives as long as
its standard input stays open: it stops when that reaches end of file (its parent closed the
pipe, or died), and on SIGTERM or SIGINT, killing its worker process on the way out. Its exit
status is 0 after such a stop, 1 if its loop ended by itself or would not stop, and 2 if it
could not start (bad configuration, unreachable services, a handler that cannot be loaded).
It logs to standard error.

For each message it takes from the queue, the agent claims the task in the state table with a
conditional write, runs the handler in its worker process (:mod:`htcgrid.local.worker`) while a
thread keeps the task's heartbeat fresh, and then writes the output and marks the task
finished, or writes the error and ends the attempt (retry or failed). The state table decides
every race: an agent that loses its task (cancelled, or its heartbeat expired) stops the
handler and writes nothing more.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from .. import protocol
from ..config import GridConfig, load_config
from ..dataplane import open_dataplane
from ..errors import DataPlaneError, HTCGridError
from ..protocol import PENDING, TASK_STATUS, TERMINAL_STATES
from . import services
from .settings import GridSettings
from .statetable import StateTable
from .taskqueue import TaskMessage, TaskQueue
from .worker import Ending, HandlerContext, HandlerSpecError, Outcome, WorkerProcess

logger = logging.getLogger(__name__)

#: Seconds a receive waits for a message (SQS long polling).
RECEIVE_WAIT_SEC = 1
#: A claimed message stays hidden for the task's timeout plus this margin.
VISIBILITY_MARGIN_SEC = 30
#: SQS refuses visibility timeouts over 12 hours.
MAX_VISIBILITY_SEC = 43_200
#: Bounds of the pause after an error in the loop, doubling from the first to the last.
ERROR_BACKOFF_SEC = (0.5, 10.0)
#: How long a stopping agent waits for its loop to end before it exits anyway.
SHUTDOWN_GRACE_SEC = 10.0

#: Errors of the AWS services (or the data plane over them) that a later try may not meet.
TRANSIENT_ERRORS = (BotoCoreError, ClientError, DataPlaneError)


class Agent:
    """Takes task messages from the queue and runs their handler until asked to stop.

    Parameters
    ----------
    config : GridConfig
        The embedded grid's configuration (its state table, queue, data plane and settings).
    agent_id : str
        The name this agent writes as the owner of the tasks it claims.
    stop : threading.Event, optional
        Set it to make :meth:`run` return; the running handler, if any, is stopped.
    """

    def __init__(
        self, config: GridConfig, agent_id: str, *, stop: threading.Event | None = None
    ) -> None:
        if not agent_id or agent_id == protocol.NO_OWNER:
            raise ValueError(f"invalid agent id {agent_id!r}")
        self.agent_id = agent_id
        self.settings = GridSettings.from_config(config)
        self.stop = stop if stop is not None else threading.Event()
        self.worker = WorkerProcess(self.settings.handler)
        self.table = StateTable(config)
        self.queue = TaskQueue(config)
        self.dataplane = open_dataplane(config, max_workers=2)

    def __repr__(self) -> str:
        return f"<Agent {self.agent_id} handler={self.settings.handler}>"

    def run(self) -> None:
        """Process messages until :attr:`stop` is set; errors are logged and retried."""
        backoff = 0.0
        while not self.stop.is_set():
            try:
                worked = self.run_once()
            except Exception as exc:
                backoff = min(max(2 * backoff, ERROR_BACKOFF_SEC[0]), ERROR_BACKOFF_SEC[1])
                if isinstance(exc, TRANSIENT_ERRORS):
                    logger.warning("agent %s: %s; again in %.1f s", self.agent_id, exc, backoff)
                else:
                    logger.exception(
                        "agent %s: unexpected error; again in %.1f s", self.agent_id, backoff
                    )
                self.stop.wait(backoff)
                continue
            backoff = 0.0
            if not worked:
                self.stop.wait(self.settings.empty_queue_backoff_sec)

    def run_once(self) -> bool:
        """Take one message from the queue and deal with it; ``False`` if there was none."""
        messages = self.queue.receive(max_messages=1, wait_sec=RECEIVE_WAIT_SEC)
        for message in messages:
            self.process(message)
        return bool(messages)

    def process(self, message: TaskMessage) -> None:
        """Claim the message's task, run it and record how the attempt ended."""
        task_id, session_id = message.task_id, message.session_id
        heartbeat_s = int(time.time()) + self.settings.heartbeat_expiry_sec
        row = self.table.claim(task_id, session_id, self.agent_id, message.receipt, heartbeat_s)
        if row is None:
            self._drop_if_settled(message)
            return

        timeout = int(row.get(protocol.TASK_TIMEOUT_SEC, protocol.DEFAULT_TASK_TIMEOUT_SEC))
        visibility = min(timeout + VISIBILITY_MARGIN_SEC, MAX_VISIBILITY_SEC)
        self.queue.set_visibility(message.receipt, visibility)
        attempt = int(row.get(protocol.RETRIES, 0)) + 1
        logger.info("agent %s: running task %s (attempt %d)", self.agent_id, task_id, attempt)

        outcome, lost = self._attempt(message, timeout)
        if lost:
            logger.warning(
                "agent %s: task %s was cancelled or taken away; its handler was stopped",
                self.agent_id,
                task_id,
            )
            self._drop_if_settled(message)
        elif outcome.ending is Ending.STOPPED:
            # The agent is shutting down. Its heartbeat stops with it, and the checker hands
            # the task to another agent once the heartbeat has expired.
            logger.warning(
                "agent %s: stopping with task %s unfinished; it will be retried once its "
                "heartbeat expires",
                self.agent_id,
                task_id,
            )
        elif outcome.ok:
            self._finish(message, outcome)
        else:
            self._fail(message, outcome)

    def _attempt(self, message: TaskMessage, timeout_sec: int) -> tuple[Outcome, bool]:
        """Run the handler with a heartbeat; the outcome, and whether the task was lost."""
        done, lost = threading.Event(), threading.Event()
        beat = threading.Thread(
            target=self._keep_heartbeat,
            args=(message, done, lost),
            name=f"heartbeat-{message.task_id}",
            daemon=True,
        )
        beat.start()
        try:
            try:
                event = self.dataplane.read_input(message.task_id)
            except (DataPlaneError, ValueError) as exc:
                outcome = Outcome(Ending.FAILED, error=f"cannot read the task's input: {exc}")
            else:
                context = HandlerContext(message.task_id, message.session_id, self.agent_id)
                outcome = self.worker.run(
                    event,
                    timeout_sec,
                    lambda: lost.is_set() or self.stop.is_set(),
                    context=context,
                )
        finally:
            done.set()
            beat.join()
        return outcome, lost.is_set()

    def _keep_heartbeat(
        self, message: TaskMessage, done: threading.Event, lost: threading.Event
    ) -> None:
        while not done.wait(self.settings.heartbeat_interval_sec):
            heartbeat_s = int(time.time()) + self.settings.heartbeat_expiry_sec
            try:
                held = self.table.heartbeat(
                    message.task_id, message.session_id, self.agent_id, heartbeat_s
                )
            except (BotoCoreError, ClientError) as exc:
                # The next beat may get through before the heartbeat expires; if none does,
                # the checker takes the task and the next beat reads as lost.
                logger.warning(
                    "agent %s: heartbeat of %s failed: %s", self.agent_id, message.task_id, exc
                )
                continue
            if not held:
                lost.set()
                return

    def _finish(self, message: TaskMessage, outcome: Outcome) -> None:
        # Output first: a client that sees "finished" must find the output.
        self.dataplane.write_output(message.task_id, outcome.value)
        if self.table.finish(message.task_id, message.session_id, self.agent_id):
            self.queue.delete(message.receipt)
            logger.info("agent %s: task %s finished", self.agent_id, message.task_id)
        else:
            logger.warning(
                "agent %s: task %s was cancelled or taken away before it could be marked finished",
                self.agent_id,
                message.task_id,
            )
            self._drop_if_settled(message)

    def _fail(self, message: TaskMessage, outcome: Outcome) -> None:
        self.dataplane.write_error(message.task_id, outcome.error)
        state = self.table.end_attempt(message.task_id, message.session_id, owner=self.agent_id)
        summary = outcome.error.split("\n", 1)[0]
        if state == PENDING:
            self.queue.set_visibility(message.receipt, 0)
            logger.warning(
                "agent %s: task %s failed (%s); it will be retried",
                self.agent_id,
                message.task_id,
                summary,
            )
        elif state is not None:
            self.queue.delete(message.receipt)
            logger.warning(
                "agent %s: task %s failed (%s); no retries left",
                self.agent_id,
                message.task_id,
                summary,
            )
        else:
            self._drop_if_settled(message)

    def _drop_if_settled(self, message: TaskMessage) -> None:
        """Delete a message whose task has ended or is gone; leave it if the task may run."""
        row = self.table.get(message.task_id)
        if row is None or protocol.state_of(row[TASK_STATUS]) in TERMINAL_STATES:
            self.queue.delete(message.receipt)

    def close(self) -> None:
        """End the worker process and release the agent's resources."""
        self.worker.close()
        self.dataplane.close()


# --- the agent process -------------------------------------------------------------------


def serve_in_background(
    name: str,
    loop: Callable[[], None],
    stop: threading.Event,
    on_hang: Callable[[], None] | None = None,
) -> int:
    """Run ``loop()`` in a thread until standard input closes or SIGTERM/SIGINT arrives.

    Call from the main thread. When the process is asked to end, ``stop`` is set and the loop
    has :data:`SHUTDOWN_GRACE_SEC` to return; if it does not, ``on_hang`` is called and the
    process ends at once with status 1 (a normal exit would wait for the loop forever).

    Parameters
    ----------
    name : str
        What to call the process in the log.
    loop : callable
        The process's work; it must return soon after ``stop`` is set.
    stop : threading.Event
        Set when the process is asked to end.
    on_hang : callable, optional
        Last words before a forced exit, e.g. killing a child process.

    Returns
    -------
    int
        The exit status: 0 after a requested stop, 1 if the loop ended of its own accord.
    """
    ended_early = threading.Event()

    def _loop() -> None:
        try:
            loop()
        finally:
            if not stop.is_set():
                ended_early.set()
                logger.error("%s: its loop ended unexpectedly; exiting", name)
                stop.set()

    lifeline = services.Lifeline(stop)
    thread = threading.Thread(target=_loop, name=name, daemon=True)
    thread.start()
    lifeline.hold()
    thread.join(SHUTDOWN_GRACE_SEC)
    if thread.is_alive():
        logger.error("%s: still busy %.0f s after the stop request", name, SHUTDOWN_GRACE_SEC)
        if on_hang is not None:
            on_hang()
        logging.shutdown()
        os._exit(1)
    logger.info("%s: stopped", name)
    return 1 if ended_early.is_set() else 0


def main(argv: list[str] | None = None) -> int:
    """Run one agent process; the exit status is 0 after a requested stop, 2 on bad setup.

    See :func:`serve_in_background` for the other statuses.
    """
    parser = argparse.ArgumentParser(
        prog="python -m htcgrid.local.agent",
        description="Run an agent of the embedded HTC-Grid until standard input closes.",
    )
    parser.add_argument("--config", required=True, help="the grid's agent_config.json")
    parser.add_argument("--agent-id", required=True, help="this agent's name in the state table")
    args = parser.parse_args(argv)
    services.configure_logging()
    name = f"agent {args.agent_id}"

    try:
        agent = Agent(load_config(args.config), args.agent_id)
    except (HTCGridError, ValueError, *TRANSIENT_ERRORS) as exc:
        logger.error("%s cannot start: %s", name, exc)
        return 2
    try:
        # Load the handler now: a handler that cannot load would fail every task it took.
        agent.worker.start()
    except HandlerSpecError as exc:
        logger.error("%s cannot start: %s", name, exc)
        agent.close()
        return 2

    logger.info("%s: ready, running %s", name, agent.settings.handler)
    status = serve_in_background(name, agent.run, agent.stop, agent.worker.kill)
    agent.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
