"""The embedded grid: a small, faithful HTC-Grid on this machine (see :class:`LocalGrid`)."""

from __future__ import annotations

from .grid import LocalGrid

__all__ = ["LocalGrid"]
