"""Progress bars: on in terminals and notebooks, off in pipes, CI and on request."""

import io
import sys

import pytest

from htcgrid import progress


class FakeStderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_off_when_output_is_not_interactive(monkeypatch):
    monkeypatch.delenv("HTCGRID_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", FakeStderr(tty=False))

    assert progress.progress_mode() is None
    assert progress.make_bar(10, "x", None) is None


def test_text_in_a_terminal(monkeypatch):
    monkeypatch.delenv("HTCGRID_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", FakeStderr(tty=True))

    assert progress.progress_mode() == "text"


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_environment_switch_turns_bars_off_even_when_forced(monkeypatch, value):
    monkeypatch.setenv("HTCGRID_PROGRESS", value)
    monkeypatch.setattr(sys, "stderr", FakeStderr(tty=True))

    assert progress.progress_mode() is None
    assert progress.progress_mode(True) is None


def test_forced_bar_counts_terminal_tasks_and_shows_counts(monkeypatch):
    monkeypatch.delenv("HTCGRID_PROGRESS", raising=False)
    out = FakeStderr(tty=False)
    monkeypatch.setattr(sys, "stderr", out)

    bar = progress.make_bar(4, "demo", True)
    bar.update({"pending": 1, "processing": 1, "finished": 2})
    bar.close({"finished": 3, "failed": 1})

    text = out.getvalue()
    assert "demo" in text
    assert "4/4" in text
    assert "failed=1" in text
    assert bar._bar.colour == "red"


def test_widget_mode_falls_back_to_text_without_ipywidgets(monkeypatch):
    monkeypatch.setattr(progress, "_in_notebook", lambda: True)
    monkeypatch.setattr(progress, "_widgets_available", lambda: False)
    monkeypatch.delenv("HTCGRID_PROGRESS", raising=False)

    assert progress.progress_mode() == "text"
