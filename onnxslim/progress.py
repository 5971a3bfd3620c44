"""Progress on stderr: a spinner for work of unknown length, bars for work that counts.

Library code reports progress through :func:`progress_bar`; the CLI shows what it is doing
with :func:`status`. Both draw on stderr (so ``--json`` output on stdout stays clean), vanish
when done, and are silent when disabled or when stderr is not a terminal (CI logs, pipes),
where a redrawn line would only leave debris.

Only one live display owns the terminal at a time: a bar pauses the spinner while it runs
(the spinner comes back after it), a bar started inside another joins it as a second row, and
text printed through :func:`console` lands above whatever is live instead of through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.status import Status

__all__ = ["progress_bar", "status", "console", "set_progress_enabled"]

_enabled = True
_console: Console | None = None  # the console of the live display, while one runs
_spinners: list[Status] = []
_bars: Progress | None = None


def set_progress_enabled(enabled: bool) -> None:
    """Turn every spinner and bar on or off (the CLI's ``--quiet`` and ``--json`` turn them
    off)."""
    global _enabled
    _enabled = enabled


def console() -> Console:
    """The stderr console to print through: the live display's while one runs."""
    return _console or Console(stderr=True)


def _noop(*args, **kwargs) -> None:
    return None


@contextlib.contextmanager
def _owning(display_console: Console) -> Iterator[None]:
    global _console
    outer, _console = _console, display_console
    try:
        yield
    finally:
        _console = outer


@contextlib.contextmanager
def status(message: str) -> Iterator[Callable[[str], None]]:
    """Show a spinner with ``message``; yield ``update(message)``."""
    display_console = console()
    if not (_enabled and display_console.is_terminal):
        yield _noop
        return
    spinner = display_console.status(message)
    with _owning(display_console), spinner:
        _spinners.append(spinner)
        try:
            yield lambda text: spinner.update(text)
        finally:
            _spinners.pop()


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None, *, enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(steps=1, **fields)``, drawing a bar on stderr when it is a terminal."""
    global _bars
    display_console = console()
    if not (enabled and _enabled and display_console.is_terminal):
        yield _noop
        return
    if _bars is not None:  # inside another bar: a row of the same display
        task = _bars.add_task(description, total=total)
        try:
            yield _advancer(_bars, task)
        finally:
            _bars.remove_task(task)
        return
    paused = _spinners[-1] if _spinners else None
    if paused is not None:
        paused.stop()
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=display_console,
        transient=True,
    )
    task = bars.add_task(description, total=total)
    try:
        with _owning(display_console), bars:
            _bars = bars
            yield _advancer(bars, task)
    finally:
        _bars = None
        if paused is not None:
            paused.start()


def _advancer(bars: Progress, task) -> Callable[..., None]:
    def advance(steps: int = 1, **fields) -> None:
        bars.update(task, advance=steps, **fields)

    return advance
