"""Progress on stderr: one live display at a time, silent where it would leave debris."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from onnxslim import progress


@pytest.fixture
def terminal(monkeypatch) -> io.StringIO:
    """Make progress draw on a fake terminal (rich: one live display per console)."""
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=80)
    monkeypatch.setattr(progress, "console", lambda: progress._console or console)
    monkeypatch.setattr(progress, "_enabled", True)
    return stream


def test_a_bar_pauses_the_spinner_and_the_spinner_comes_back(terminal):
    with progress.status("optimizing model.onnx") as update:
        (spinner,) = progress._spinners
        assert spinner._live.is_started
        with progress.progress_bar("calibrating", 3) as advance:
            assert not spinner._live.is_started  # rich would raise LiveError otherwise
            advance(3)
        assert spinner._live.is_started
        update("optimizing model.onnx: quantize done")
    assert "calibrating" in terminal.getvalue()


def test_a_bar_inside_a_bar_is_a_second_row_of_the_same_display(terminal):
    with progress.progress_bar("outer", 2) as outer:
        with progress.progress_bar("inner", 5) as inner:
            inner(5)
        outer(2)
    assert "inner" in terminal.getvalue() and "outer" in terminal.getvalue()


def test_text_printed_during_a_bar_goes_through_the_live_console(terminal):
    with progress.progress_bar("calibrating", 2):
        progress.console().print("warning: something")
    assert "warning: something" in terminal.getvalue()


def test_nothing_is_drawn_when_stderr_is_not_a_terminal(capsys):
    with progress.status("working"), progress.progress_bar("counting", 2) as advance:
        advance(2)
    assert capsys.readouterr().err == ""


def test_nothing_is_drawn_when_disabled(terminal, monkeypatch):
    monkeypatch.setattr(progress, "_enabled", False)
    with progress.status("working"), progress.progress_bar("counting", 2) as advance:
        advance(2)
    assert terminal.getvalue() == ""
