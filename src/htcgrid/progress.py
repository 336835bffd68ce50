"""Live progress bars of sessions: a widget in Jupyter, text in a terminal, nothing otherwise.

Bars are drawn by tqdm and updated by the client's poller thread, so the notebook cell that
submitted the work returns at once. ``HTCGRID_PROGRESS=0`` turns them off everywhere.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

from . import protocol

logger = logging.getLogger(__name__)

PROGRESS_ENV = "HTCGRID_PROGRESS"


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - any failure means "not in a notebook"
        return False
    return ip is not None and getattr(ip, "kernel", None) is not None


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def progress_mode(requested: bool | None = None) -> str | None:
    """Return ``"widget"``, ``"text"`` or ``None`` (no bar) for this process.

    ``requested`` True forces a bar and False forbids one; ``None`` decides from the
    environment: ``HTCGRID_PROGRESS``, then a Jupyter kernel (widget, or text without
    ipywidgets), then a terminal on standard error (text).
    """
    setting = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if requested is False or setting in ("0", "false", "no", "off"):
        return None
    if _in_notebook():
        return "widget" if _widgets_available() else "text"
    if requested or setting in ("1", "true", "yes", "on"):
        return "text"
    try:
        return "text" if sys.stderr.isatty() else None
    except (AttributeError, ValueError):
        return None


class ProgressBar:
    """One bar over the tasks of one or more sessions.

    ``update(counts)`` takes the summed counts by state; the bar counts terminal tasks and
    shows the counts as its postfix. ``close()`` leaves it green when every task finished and
    red when any failed or was cancelled.
    """

    def __init__(self, total: int, description: str, mode: str) -> None:
        self.total = total
        self.mode = mode
        self._lock = threading.Lock()
        self._closed = False
        if mode == "widget":
            from tqdm.notebook import tqdm as bar_class
        else:
            from tqdm.std import tqdm as bar_class
        self._bar: Any = bar_class(
            total=total, desc=description, unit="task", leave=True, dynamic_ncols=True
        )

    def update(self, counts: Mapping[str, int]) -> None:
        with self._lock:
            if self._closed:
                return
            done = sum(counts.get(state, 0) for state in protocol.TERMINAL_STATES)
            self._bar.n = done
            self._bar.set_postfix(
                {state: counts.get(state, 0) for state in protocol.STATES if counts.get(state)},
                refresh=False,
            )
            self._bar.refresh()

    def close(self, counts: Mapping[str, int]) -> None:
        self.update(counts)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            bad = counts.get(protocol.FAILED, 0) + counts.get(protocol.CANCELLED, 0)
            self._bar.colour = "red" if bad else "green"
            self._bar.refresh()
            self._bar.close()


def make_bar(total: int, description: str, requested: bool | None) -> ProgressBar | None:
    """Return a bar for ``total`` tasks, or ``None`` where progress is off."""
    mode = progress_mode(requested)
    if mode is None:
        return None
    try:
        return ProgressBar(total, description, mode)
    except Exception as exc:  # noqa: BLE001 - a bar must never break a submission
        logger.debug("no progress bar (%s)", exc)
        return None
