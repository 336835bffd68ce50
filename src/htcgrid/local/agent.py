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
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .. import protocol
from ..config import GridConfig, load_config
from ..dataplane import open_dataplane
from ..errors import DataPlaneError, HTCGridError
from ..protocol import PENDING, TASK_STATUS, TERMINAL_STATES
from . import cli
from .settings import GridSettings
from .statetable import StateTable
from .taskqueue import TaskMessage, TaskQueue
from .worker import Ending, HandlerContext, HandlerSpecError, Outcome, WorkerProcess

logger = logging.getLogger(__name__)

#: Seconds a receive waits for a message (SQS long polling).
RECEIVE_WAIT_SEC = 1
#: Seconds a retry's message stays hidden, so that the task is pending when it is received.
REQUEUE_DELAY_SEC = 1
#: Most messages an agent takes at once (SQS's own bound), for tasks that take no time.
MAX_BATCH = 10
#: An agent takes as many tasks at once as it expects to run in about this many seconds.
BATCH_TARGET_SEC = 0.2
#: Bounds of the pause after an error in the loop, doubling from the first to the last.
ERROR_BACKOFF_SEC = (0.5, 10.0)

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
        self.dataplane = open_dataplane(config, max_workers=MAX_BATCH)
        self._pool = ThreadPoolExecutor(MAX_BATCH, thread_name_prefix=f"{agent_id}-io")
        self._batch = 1
        #: Output writes, finishes and message deletes still under way in the pool.
        self._finishing: list[Future[None]] = []

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
        """Take a batch of messages from the queue and run their tasks; ``False`` if none.

        Short tasks come in batches of up to :data:`MAX_BATCH`: one receive and one delete
        for the batch, inputs read ahead and outputs written behind, concurrently. A task is
        claimed only just before it runs and marked finished as soon as it returns, so the
        state table shows what really runs; and if a task runs longer than the batch was
        meant to last, the messages not yet started go back to the queue for other agents.
        """
        self._reap()
        messages = self.queue.receive(max_messages=self._batch, wait_sec=RECEIVE_WAIT_SEC)
        if not messages:
            return False
        batch = _Batch(messages)
        giveback = threading.Timer(2 * BATCH_TARGET_SEC, self._give_back, args=(batch,))
        giveback.daemon = True
        if len(messages) > 1:
            giveback.start()
        # Inputs are read ahead, while the first task is being claimed.
        inputs = {m.task_id: self._pool.submit(self._read_input, m.task_id) for m in messages}
        started = time.monotonic()
        ran = 0
        try:
            while not self.stop.is_set():
                message = batch.next()
                if message is None:
                    break
                row = self._claim(message)
                if row is None:
                    self._drop_if_settled(message)
                    continue
                batch.claimed.append(message.receipt)
                ran += 1
                done = self._run(message, row, inputs[message.task_id].result())
                if done is not None:
                    self._finishing.append(done)
        finally:
            giveback.cancel()
            # A task that was never claimed keeps its message; a claimed task is the state
            # table's (an agent that dies is found by its expired heartbeat, and the checker
            # queues the task again), so its message can go. Both happen behind the next
            # receive, like the finishing of the tasks that succeeded.
            self._finishing.append(self._pool.submit(self.queue.delete_many, batch.claimed))
            self._give_back(batch)
        if ran:
            self._adapt_batch((time.monotonic() - started) / ran)
        return True

    def _reap(self, wait: bool = False) -> None:
        """Collect the finishes done in the background; raise the first that failed."""
        if wait:
            for done in self._finishing:
                done.exception()
        pending: list[Future[None]] = []
        errors: list[BaseException] = []
        for done in self._finishing:
            if not done.done():
                pending.append(done)
            elif (error := done.exception()) is not None:
                errors.append(error)
        self._finishing = pending
        for error in errors[1:]:
            logger.error("agent %s: background write failed: %s", self.agent_id, error)
        if errors:
            raise errors[0]

    def _give_back(self, batch: _Batch) -> None:
        """Make the messages of a batch that were not started visible to other agents."""
        left = batch.take_rest()
        if left:
            self.queue.release_many([m.receipt for m in left])
            logger.debug("agent %s: gave back %d message(s)", self.agent_id, len(left))

    def _claim(self, message: TaskMessage) -> dict[str, Any] | None:
        heartbeat_s = int(time.time()) + self.settings.heartbeat_expiry_sec
        return self.table.claim(
            message.task_id, message.session_id, self.agent_id, message.receipt, heartbeat_s
        )

    def _run(self, message: TaskMessage, row: dict[str, Any], event: Any) -> Future[None] | None:
        """Run one claimed task; return the pending finish of a task that succeeded."""
        held = {message.task_id: message}
        lost: set[str] = set()
        done = threading.Event()
        beat = threading.Thread(
            target=self._keep_heartbeats, args=(held, lost, done), name="heartbeat", daemon=True
        )
        beat.start()
        try:
            outcome, started_ms = self._attempt(message, row, event, lost)
        finally:
            done.set()
            beat.join()
        if message.task_id in lost:
            logger.warning(
                "agent %s: task %s was cancelled or taken away; its handler was stopped",
                self.agent_id,
                message.task_id,
            )
        elif outcome.ending is Ending.STOPPED:
            # The agent is shutting down. Its heartbeat stops with it, and the checker hands
            # the task to another agent once it has expired.
            logger.warning(
                "agent %s: stopping with task %s unfinished; it will be retried once its "
                "heartbeat expires",
                self.agent_id,
                message.task_id,
            )
        elif outcome.ok:
            return self._pool.submit(self._finish, message, outcome, started_ms)
        else:
            self._fail(message, row, outcome)
        return None

    def _adapt_batch(self, seconds_per_task: float) -> None:
        # Batches of about BATCH_TARGET_SEC: tasks held by one agent wait no longer than that.
        fitting = int(BATCH_TARGET_SEC / max(seconds_per_task, 1e-3))
        self._batch = max(1, min(MAX_BATCH, fitting))

    def _read_input(self, task_id: str) -> Any:
        """A task's decoded input, or the exception met reading it."""
        try:
            return self.dataplane.read_input(task_id)
        except (DataPlaneError, ValueError) as exc:
            return exc

    def _attempt(
        self, message: TaskMessage, row: dict[str, Any], event: Any, lost: set[str]
    ) -> tuple[Outcome, int]:
        """Run the handler on one claimed task; the outcome and when it started (ms)."""
        started_ms = protocol.now_ms()
        if isinstance(event, Exception):
            return Outcome(Ending.FAILED, error=f"cannot read the task's input: {event}"), 0
        timeout = int(row.get(protocol.TASK_TIMEOUT_SEC, protocol.DEFAULT_TASK_TIMEOUT_SEC))
        attempt = int(row.get(protocol.RETRIES, 0)) + 1
        logger.info(
            "agent %s: running task %s (attempt %d)", self.agent_id, message.task_id, attempt
        )
        context = HandlerContext(message.task_id, message.session_id, self.agent_id)
        outcome = self.worker.run(
            event,
            timeout,
            lambda: message.task_id in lost or self.stop.is_set(),
            context=context,
        )
        return outcome, started_ms

    def _keep_heartbeats(
        self, held: dict[str, TaskMessage], lost: set[str], done: threading.Event
    ) -> None:
        while not done.wait(self.settings.heartbeat_interval_sec):
            heartbeat_s = int(time.time()) + self.settings.heartbeat_expiry_sec
            for message in list(held.values()):
                try:
                    kept = self.table.heartbeat(
                        message.task_id, message.session_id, self.agent_id, heartbeat_s
                    )
                except (BotoCoreError, ClientError) as exc:
                    # The next beat may get through before the heartbeat expires; if none
                    # does, the checker takes the task and the next beat reads as lost.
                    logger.warning(
                        "agent %s: heartbeat of %s failed: %s", self.agent_id, message.task_id, exc
                    )
                    continue
                if not kept:
                    lost.add(message.task_id)
                    held.pop(message.task_id, None)

    def _finish(self, message: TaskMessage, outcome: Outcome, started_ms: int) -> None:
        # Output first: a client that sees "finished" must find the output.
        self.dataplane.write_output(message.task_id, outcome.value)
        if self.table.finish(message.task_id, message.session_id, self.agent_id, started_ms):
            logger.debug("agent %s: task %s finished", self.agent_id, message.task_id)
        else:
            logger.warning(
                "agent %s: task %s was cancelled or taken away before it could be marked finished",
                self.agent_id,
                message.task_id,
            )

    def _fail(self, message: TaskMessage, row: dict[str, Any], outcome: Outcome) -> None:
        self.dataplane.write_error(message.task_id, outcome.error)
        summary = outcome.error.split("\n", 1)[0]
        # The retry's message goes out before the task goes back to pending, so that a pending
        # task always has one (delayed a moment, so that the transition comes first). If it
        # cannot be sent, the task is left to the checker, which retries it after its
        # heartbeat expires.
        retry = int(row.get(protocol.RETRIES, 0)) < int(row.get(protocol.MAX_RETRIES, 0))
        if retry and self.queue.send([row], stats={}, delay_sec=REQUEUE_DELAY_SEC):
            logger.error(
                "agent %s: task %s failed (%s) and its retry could not be queued; the "
                "checker will retry it",
                self.agent_id,
                message.task_id,
                summary,
            )
            return
        state = self.table.end_attempt(message.task_id, message.session_id, owner=self.agent_id)
        if state is None:
            return
        logger.warning(
            "agent %s: task %s failed (%s); %s",
            self.agent_id,
            message.task_id,
            summary,
            "it will be retried" if state == PENDING else "no retries left",
        )

    def _drop_if_settled(self, message: TaskMessage) -> None:
        """Delete a message whose task has ended or is gone; leave it if the task may run."""
        row = self.table.get(message.task_id)
        if row is None or protocol.state_of(row[TASK_STATUS]) in TERMINAL_STATES:
            self.queue.delete(message.receipt)

    def close(self) -> None:
        """End the worker process and release the agent's resources."""
        self.worker.close()
        try:
            self._reap(wait=True)
        except Exception:
            logger.exception("agent %s: a task could not be marked finished", self.agent_id)
        self._pool.shutdown(wait=True)
        self.dataplane.close()


class _Batch:
    """The messages of one receive: handed out one at a time, or given back all at once."""

    def __init__(self, messages: list[TaskMessage]) -> None:
        self._left = list(messages)
        self._lock = threading.Lock()
        #: Receipts of the messages whose tasks were claimed.
        self.claimed: list[str] = []

    def next(self) -> TaskMessage | None:
        with self._lock:
            return self._left.pop(0) if self._left else None

    def take_rest(self) -> list[TaskMessage]:
        with self._lock:
            rest, self._left = self._left, []
            return rest


# --- the agent process -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run one agent process; the exit status is 0 after a requested stop, 2 on bad setup.

    See :func:`htcgrid.local.cli.serve_in_background` for the other statuses.
    """
    parser = argparse.ArgumentParser(
        prog="python -m htcgrid.local.agent",
        description="Run an agent of the embedded HTC-Grid until standard input closes.",
    )
    parser.add_argument("--config", required=True, help="the grid's agent_config.json")
    parser.add_argument("--agent-id", required=True, help="this agent's name in the state table")
    args = parser.parse_args(argv)
    cli.configure_logging()
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
    status = cli.serve_in_background(name, agent.run, agent.stop, agent.worker.kill)
    agent.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
