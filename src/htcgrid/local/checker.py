"""The heartbeat checker: gives the tasks of agents that stopped answering another chance.

Run as ``python -m htcgrid.local.checker --config PATH``; like an agent, it lives as long as its
standard input stays open, stops on SIGTERM or SIGINT, and has the same exit statuses. It can
also run inside another process as a :class:`HeartbeatChecker`.

Every ``local_checker_period_sec`` it looks, partition by partition, for ``processing`` tasks
whose heartbeat is in the past. Such a task's agent died, hung or lost touch: the attempt
ends (the conditional write of :meth:`StateTable.end_attempt` makes it race-free against an
agent that comes back), the error is written to the data plane, and the task goes back to
pending with its queue message visible again, or, with no retries left, fails.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from .. import protocol
from ..config import GridConfig, load_config
from ..dataplane import open_dataplane
from ..errors import HTCGridError
from ..protocol import PENDING
from . import cli
from .agent import TRANSIENT_ERRORS
from .settings import GridSettings
from .statetable import StateTable
from .taskqueue import TaskQueue

logger = logging.getLogger(__name__)

#: Seconds a retry's message stays hidden, so that the task is pending when it is received.
REQUEUE_DELAY_SEC = 1
#: A round of the checker is followed by a pause of at least this many times its length.
LOAD_FACTOR = 10


@dataclass(frozen=True)
class CheckCounts:
    """What one round of the checker found and did.

    Attributes
    ----------
    expired : int
        Processing tasks whose heartbeat had expired.
    retried : int
        Of those, the tasks put back to pending.
    failed : int
        Of those, the tasks failed for want of retries.
    """

    expired: int = 0
    retried: int = 0
    failed: int = 0


class HeartbeatChecker:
    """Finds processing tasks with an expired heartbeat, and retries or fails them.

    Parameters
    ----------
    config : GridConfig
        The embedded grid's configuration.

    Examples
    --------
    >>> checker = HeartbeatChecker(load_config("agent_config.json"))  # doctest: +SKIP
    >>> checker.run_once()  # doctest: +SKIP
    CheckCounts(expired=1, retried=1, failed=0)
    """

    def __init__(self, config: GridConfig) -> None:
        self.settings = GridSettings.from_config(config)
        self.table = StateTable(config)
        self.queue = TaskQueue(config)
        self.dataplane = open_dataplane(config, max_workers=2)

    def run_once(self, now_s: int | None = None) -> CheckCounts:
        """Look at every partition once; heartbeats before ``now_s`` (default: now) expired."""
        now = int(time.time()) if now_s is None else now_s
        expired = retried = failed = 0
        for partition in range(protocol.PARTITIONS):
            for row in self.table.expired(partition, now):
                expired += 1
                state = self._end_attempt(row, now)
                retried += state == PENDING
                failed += state == protocol.FAILED
        return CheckCounts(expired, retried, failed)

    def _end_attempt(self, row: dict[str, Any], now: int) -> str | None:
        task_id, session_id = row[protocol.TASK_ID], row[protocol.SESSION_ID]
        owner = row.get(protocol.TASK_OWNER, protocol.NO_OWNER)
        heartbeat = int(row.get(protocol.HEARTBEAT_EXPIRATION_TIMESTAMP, 0))
        # Written before the transition, so that a task seen failed already has its error;
        # should the agent beat just in time, the text stays behind on a task that goes on.
        self.dataplane.write_error(
            task_id,
            f"heartbeat lost: agent {owner} stopped answering; its heartbeat expired at "
            f"{heartbeat} and was still expired at {now} (epoch seconds)",
        )
        # The task's next message goes out before the task goes back to pending, so that a
        # pending task always has one; it is delayed a moment so that the transition comes
        # first. Should the send fail, the task stays as it is and the next round tries again.
        # (A message the task turns out not to need is dropped by the agent that takes it.)
        retry = int(row.get(protocol.RETRIES, 0)) < int(row.get(protocol.MAX_RETRIES, 0))
        if retry and self.queue.send([row], stats={}, delay_sec=REQUEUE_DELAY_SEC):
            logger.warning("task %s: could not queue its retry; trying next round", task_id)
            return None
        state = self.table.end_attempt(task_id, session_id, expired_before_s=now)
        if state is None:
            return None
        logger.warning(
            "task %s: heartbeat of agent %s lost; %s",
            task_id,
            owner,
            "back to pending" if state == PENDING else "failed, no retries left",
        )
        return state

    def run(self, stop: threading.Event) -> None:
        """Check every ``checker_period_sec`` until ``stop`` is set; errors are logged."""
        period = self.settings.checker_period_sec
        while not stop.is_set():
            started = time.monotonic()
            try:
                counts = self.run_once()
            except Exception:
                logger.exception("heartbeat check failed; trying again in %.1f s", period)
            else:
                if counts.expired:
                    logger.info("heartbeat check: %s", counts)
            took = time.monotonic() - started
            # moto reads the whole table for each index query: on a large table, a round
            # takes a while, and the checker must not take the state table's server from
            # the agents. It spends at most a tenth of that server's time (a round over a
            # table of 10,000 tasks costs moto about a second).
            stop.wait(max(period, LOAD_FACTOR * took) - took)

    def close(self) -> None:
        self.dataplane.close()


def main(argv: list[str] | None = None) -> int:
    """Run the checker process; the exit status is 0 after a requested stop, 2 on bad setup."""
    parser = argparse.ArgumentParser(
        prog="python -m htcgrid.local.checker",
        description="Run the embedded HTC-Grid's heartbeat checker until standard input closes.",
    )
    parser.add_argument("--config", required=True, help="the grid's agent_config.json")
    args = parser.parse_args(argv)
    cli.configure_logging()

    try:
        checker = HeartbeatChecker(load_config(args.config))
    except (HTCGridError, ValueError, *TRANSIENT_ERRORS) as exc:
        logger.error("checker cannot start: %s", exc)
        return 2
    stop = threading.Event()
    logger.info("checker: ready, every %.1f s", checker.settings.checker_period_sec)
    status = cli.serve_in_background("checker", lambda: checker.run(stop), stop)
    checker.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
