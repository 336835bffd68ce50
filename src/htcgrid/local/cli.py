"""What the embedded grid's processes do when started from the command line.

Each process of the grid (``python -m htcgrid.local.agent`` and the like) is an application
of its own: it, not the library, decides where its log goes.
"""

from __future__ import annotations

import logging
import sys


def configure_logging() -> None:
    """Log to standard error, which the grid sends to the process's log file."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # werkzeug logs every request line, query string included; one line per error is enough.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
