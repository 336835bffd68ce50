"""What the embedded grid's processes do when started from the command line.

Each process of the grid (``python -m htcgrid.local.agent`` and the like) is an application
of its own: it, not the library, decides where its log goes. Each lives exactly as long as
the pipe its parent holds open (:class:`Lifeline`), and tells its parent where it listens in
one JSON line (:func:`announce`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: How long a stopping process (an agent, the checker) waits for its loop to end before it
#: exits anyway.
SHUTDOWN_GRACE_SEC = 10.0


def configure_logging() -> None:
    """Log to standard error, which the grid sends to the process's log file."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # werkzeug logs every request line, query string included; one line per error is enough.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


class Lifeline:
    """The tie of a child process to its parent: released at stdin's end of file, SIGTERM or
    SIGINT.

    Create it early in the main thread (it installs the signal handlers); a process waiting
    for something else can then still notice that its parent is gone.

    Parameters
    ----------
    released : threading.Event, optional
        The event to set on release (a new one by default).
    """

    def __init__(self, released: threading.Event | None = None) -> None:
        self.released = released if released is not None else threading.Event()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        threading.Thread(target=self._watch_stdin, name="stdin-watch", daemon=True).start()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.released.set()

    def _watch_stdin(self) -> None:
        # os.read, not sys.stdin: a thread blocked inside sys.stdin's buffer holds its lock,
        # and the interpreter aborts when it cannot take that lock at exit.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            # A closed or missing stdin counts as a parent that is gone.
            pass
        self.released.set()

    def hold(self) -> None:
        """Block until released."""
        # A bounded wait keeps the main thread responsive to signals on every platform.
        while not self.released.wait(0.5):
            pass


def announce(**fields: str) -> None:
    """Print the one JSON line a parent process waits for, and flush it."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


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

    lifeline = Lifeline(stop)
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
