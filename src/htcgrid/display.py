"""HTML views of sessions and clients for notebooks, in JupyterLab's theme colours."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from . import protocol

# JupyterLab's CSS variables, with fallbacks for classic Notebook and static renderers.
_COLOURS = {
    protocol.FINISHED: "var(--jp-success-color1, #388e3c)",
    protocol.FAILED: "var(--jp-error-color1, #d32f2f)",
    protocol.CANCELLED: "var(--jp-warn-color1, #f57c00)",
    protocol.PROCESSING: "var(--jp-brand-color1, #1976d2)",
    protocol.PENDING: "var(--jp-layout-color3, #bdbdbd)",
}
_TEXT = "color: var(--jp-ui-font-color1, inherit); font-family: var(--jp-ui-font-family, inherit)"


def counts_bar(counts: Mapping[str, int], width_px: int = 240) -> str:
    """A small stacked bar of task counts by state."""
    total = max(int(counts.get("total", 0)), 1)
    segments = "".join(
        f'<div title="{counts.get(state, 0)} {state}" style="width: '
        f'{100 * counts.get(state, 0) / total:.2f}%; background: {_COLOURS[state]}"></div>'
        for state in (
            protocol.FINISHED,
            protocol.FAILED,
            protocol.CANCELLED,
            protocol.PROCESSING,
            protocol.PENDING,
        )
        if counts.get(state)
    )
    return (
        f'<div style="display: flex; width: {width_px}px; height: 10px; border-radius: 2px; '
        f'overflow: hidden; background: var(--jp-layout-color2, #eee)">{segments}</div>'
    )


def counts_table(counts: Mapping[str, int]) -> str:
    cells = "".join(
        f'<td style="padding: 0 8px 0 0"><span style="color: {_COLOURS[state]}">&#9632;</span> '
        f"{counts.get(state, 0)} {state}</td>"
        for state in protocol.STATES
    )
    return f"<table><tr>{cells}</tr></table>"


def session_html(session_id: str, counts: Mapping[str, int], done: bool, elapsed: float) -> str:
    state = "done" if done else "running"
    return (
        f'<div style="{_TEXT}"><b>Session</b> <code>{html.escape(session_id)}</code> '
        f"&mdash; {state}, {counts.get('total', 0)} tasks, {elapsed:.1f} s"
        f"{counts_bar(counts)}{counts_table(counts)}</div>"
    )


def client_html(title: str, rows: Mapping[str, str]) -> str:
    body = "".join(
        f'<tr><th style="text-align: left; padding-right: 12px">{html.escape(k)}</th>'
        f'<td style="text-align: left">{html.escape(v)}</td></tr>'
        for k, v in rows.items()
    )
    return f'<div style="{_TEXT}"><b>{html.escape(title)}</b><table>{body}</table></div>'


def client_summary(
    config: Any, owns_grid: bool, sessions: Sequence[Any], agents: int | None, closed: bool
) -> dict[str, str]:
    """What a client shows of itself: which grid, its API, its sessions."""
    live = sum(not s.done() for s in sessions)
    if owns_grid:
        grid = "embedded (this machine)"
    else:
        grid = "embedded" if config.is_local else "HTC-Grid on AWS"
    rows = {
        "grid": grid,
        "API": config.api_url,
        "sessions": f"{live} live, {len(sessions) - live} done",
    }
    if agents is not None:
        rows["agents"] = str(agents)
    if closed:
        rows["state"] = "closed"
    return rows
