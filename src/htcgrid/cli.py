"""The ``htcgrid`` command: an embedded grid, and HTC-Grid's documented clients.

htcgrid local                  run an embedded grid until interrupted
htcgrid simple-client          the documented simple client (embedded grid if no config)
htcgrid client -n 2 ...        the documented batch client
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from . import __version__
from .config import CONFIG_ENV
from .connector import AWSConnector
from .errors import HTCGridError

logger = logging.getLogger("htcgrid.cli")

SIMPLE_CLIENT_TASKS = (
    {"worker_arguments": ["1000", "1", "1"]},
    {"worker_arguments": ["2000", "1", "1"]},
)


def _add_grid_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help=f"the grid's agent_config.json (default: ${CONFIG_ENV}; without either, an "
        "embedded grid is started for the run)",
    )
    parser.add_argument(
        "--private",
        action="store_true",
        default=None,
        help="private mode: api key, no sign-in (also INTRA_VPC=1)",
    )
    parser.add_argument(
        "--agents",
        type=int,
        default=None,
        help="agents of the embedded grid (default: one per CPU core)",
    )
    parser.add_argument(
        "--log",
        default="warning",
        choices=["debug", "info", "warning", "error", "critical"],
        help="log level of htcgrid's messages (default: warning); other libraries log "
        "warnings only",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="htcgrid", description="Drive HTC-Grid from the command line or a notebook."
    )
    parser.add_argument("--version", action="version", version=f"htcgrid {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    local = commands.add_parser("local", help="run an embedded grid until interrupted")
    local.add_argument(
        "--agents", type=int, default=None, help="agent processes (default: one per CPU core)"
    )
    local.add_argument(
        "--handler",
        default=None,
        help="worker handler as module:function (default: the mock engine)",
    )
    local.add_argument(
        "--workdir",
        default=None,
        help="where to write agent_config.json and logs (default: a temp dir)",
    )
    local.add_argument(
        "--log",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="log level of htcgrid's messages (default: info: what the grid provisions and "
        "each session it accepts); other libraries log warnings only",
    )

    simple = commands.add_parser(
        "simple-client", help="run HTC-Grid's documented simple client (two mock tasks)"
    )
    _add_grid_options(simple)
    simple.add_argument(
        "--timeout", type=float, default=100, help="seconds to wait for the results (default: 100)"
    )

    batch = commands.add_parser("client", help="run HTC-Grid's documented batch client")
    _add_grid_options(batch)
    batch.add_argument(
        "-n", "--njobs", type=int, default=1, help="sessions to submit per thread (default: 1)"
    )
    batch.add_argument("--job_size", type=int, default=1, help="tasks per session (default: 1)")
    batch.add_argument(
        "--job_batch_size",
        type=int,
        default=1,
        help="sessions sent before waiting for their results (default: 1)",
    )
    batch.add_argument(
        "--nthreads",
        type=int,
        default=1,
        help="client threads, each submitting njobs sessions (default: 1)",
    )
    batch.add_argument(
        "--worker_arguments",
        default="1000 1 1",
        help='arguments of each task, space-separated (default: "1000 1 1")',
    )
    batch.add_argument(
        "--timeout",
        type=float,
        default=0,
        help="seconds to wait for each batch's results (default: no limit)",
    )
    return parser


@contextlib.contextmanager
def _grid(args: argparse.Namespace) -> Iterator[tuple[Any, str, str]]:
    """Yield (config, username, password): the given grid's, or an embedded grid's."""
    config = args.config or os.environ.get(CONFIG_ENV)
    if config:
        yield config, os.environ.get("USERNAME", ""), os.environ.get("PASSWORD", "")
        return
    from .local import LocalGrid

    print("No grid configured: starting an embedded grid on this machine...", flush=True)
    with LocalGrid(agents=args.agents) as grid:
        yield grid.config_path, grid.username, grid.password


def _connect(config: Any, username: str, password: str, private: bool | None) -> AWSConnector:
    connector = AWSConnector()
    connector.init(config, username=username, password=password, private=private)
    connector.authenticate()
    return connector


def _simple_client(args: argparse.Namespace) -> int:
    with _grid(args) as (config, username, password):
        connector = _connect(config, username, password, args.private)
        with connector:
            submission = connector.send(list(SIMPLE_CLIENT_TASKS))
            print(
                f"session {submission['session_id']}: {len(submission['task_ids'])} tasks "
                "submitted",
                flush=True,
            )
            try:
                results = connector.get_results(submission, timeout_sec=args.timeout)
            except KeyboardInterrupt:
                _still_running(args, submission["session_id"])
                raise
    return _print_results(submission, results)


def _still_running(args: argparse.Namespace, *session_ids: str) -> None:
    """Tell the user that an interrupted wait left sessions running on a grid."""
    if not session_ids or not (args.config or os.environ.get(CONFIG_ENV)):
        return  # an embedded grid stops with the command, its sessions with it
    if len(session_ids) == 1:
        (session_id,) = session_ids
        print(
            f"session {session_id} is still running on the grid: collect its results later "
            f"with AWSConnector.get_results('{session_id}'), or cancel it with "
            f"cancel_sessions(['{session_id}'])",
            file=sys.stderr,
        )
        return
    print(
        f"{len(session_ids)} sessions are still running on the grid: collect their results "
        "later with AWSConnector.get_results(session_id), or cancel them with "
        "cancel_sessions([...]):",
        file=sys.stderr,
    )
    for session_id in session_ids:
        print(f"  {session_id}", file=sys.stderr)


class _MainThreadOnly(logging.Filter):
    """Let through only the main thread's records.

    After Ctrl-C, the batch client's threads are left to die with the process; what they log
    meanwhile (retries against an embedded grid that is stopping) is noise.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == threading.main_thread().ident


def _quiet_other_threads() -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_MainThreadOnly())


def _print_results(submission: dict[str, Any], results: dict[str, Any]) -> int:
    text: dict[str, tuple[str, str]] = {}
    for state in ("finished", "failed", "cancelled"):
        for task_id, value in zip(results[state], results[state + "_OUTPUT"]):
            text[task_id] = (state, value)
    for task_id in submission["task_ids"]:
        state, value = text.get(task_id, ("not done", ""))
        first_line = value.strip().splitlines()[-1] if value.strip() else ""
        print(f"{task_id}  {state:<9}  {first_line}")
    finished = len(results["finished"])
    total = len(submission["task_ids"])
    print(f"{finished} of {total} tasks finished")
    return 0 if finished == total else 1


def _batch_client(args: argparse.Namespace) -> int:
    for name in ("njobs", "job_size", "job_batch_size", "nthreads"):
        if getattr(args, name) < 1:
            print(f"htcgrid client: --{name} must be at least 1", file=sys.stderr)
            return 2
    task = {"worker_arguments": args.worker_arguments.split()}
    failures: list[str] = []
    counts = {"sessions": 0, "finished": 0, "tasks": 0}
    uncollected: dict[str, None] = {}  # session ids sent, results not yet in, in order
    lock = threading.Lock()

    def run_thread(connector: AWSConnector) -> None:
        remaining = args.njobs
        while remaining > 0:
            batch = min(args.job_batch_size, remaining)
            remaining -= batch
            submissions = []
            for _ in range(batch):
                submissions.append(connector.send([task] * args.job_size))
                with lock:
                    uncollected[submissions[-1]["session_id"]] = None
            for submission in submissions:
                results = connector.get_results(submission, timeout_sec=args.timeout)
                with lock:
                    uncollected.pop(submission["session_id"], None)
                    counts["sessions"] += 1
                    counts["tasks"] += len(submission["task_ids"])
                    counts["finished"] += len(results["finished"])

    started = time.perf_counter()
    with _grid(args) as (config, username, password):
        connector = _connect(config, username, password, args.private)
        with connector:
            threads = []
            for _ in range(args.nthreads):

                def target(c: AWSConnector = connector) -> None:
                    try:
                        run_thread(c)
                    except HTCGridError as exc:
                        failures.append(str(exc))

                thread = threading.Thread(target=target, daemon=True)
                threads.append(thread)
                thread.start()
            try:
                for thread in threads:
                    thread.join()
            except KeyboardInterrupt:
                _quiet_other_threads()
                with lock:
                    _still_running(args, *uncollected)
                raise
    elapsed = time.perf_counter() - started
    print(
        f"{counts['sessions']} sessions, {counts['finished']} of {counts['tasks']} tasks "
        f"finished in {elapsed:.1f} s"
    )
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 0 if not failures and counts["finished"] == counts["tasks"] else 1


def _local(args: argparse.Namespace) -> int:
    from .local import LocalGrid

    kwargs: dict[str, Any] = {"agents": args.agents, "workdir": args.workdir}
    if args.handler:
        kwargs["handler"] = args.handler
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # A shell that starts a background job makes it ignore SIGINT; "kill -INT" and Ctrl-C
    # must stop the grid all the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with LocalGrid(**kwargs) as grid:
        print(f"Embedded HTC-Grid running: API {grid.api_url}, {grid.agents} agents.")
        print(f"Configuration: {grid.config_path}")
        print("To point a client at it, in another shell:")
        print(f"  export {CONFIG_ENV}={grid.config_path}")
        print(f"  set -a; . {grid.workdir}/credentials.env; set +a")
        print("Press Ctrl-C to stop.", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        print("Stopping the embedded grid...", flush=True)
    return 0


def _configure_logging(level: str) -> None:
    """Log to standard error: htcgrid's records from ``level`` up, other libraries' warnings.

    ``--log`` sets htcgrid's level only. botocore at DEBUG level logs the body of every
    request and response, Cognito's sign-in with its password and tokens included, so the
    command never lowers the level of other libraries below WARNING.
    """
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("htcgrid").setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``htcgrid`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    _configure_logging(args.log)
    commands = {"local": _local, "simple-client": _simple_client, "client": _batch_client}
    try:
        return commands[args.command](args)
    except HTCGridError as exc:
        print(f"htcgrid {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
