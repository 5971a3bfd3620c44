"""Progress bars that appear only when work is long enough to deserve one.

Library code reports progress through :func:`progress_bar`; it draws on stderr (so ``--json``
output on stdout stays clean), vanishes when done, and is silent when disabled or when stderr
is not a terminal (CI logs, pipes), where a redrawn bar would only leave debris.
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

__all__ = ["progress_bar", "set_progress_enabled"]

_enabled = True


def set_progress_enabled(enabled: bool) -> None:
    """Turn every progress bar on or off (the CLI's ``--quiet`` and ``--json`` turn them off)."""
    global _enabled
    _enabled = enabled


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None, *, enabled: bool = True
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(steps=1, **fields)``, drawing a bar on stderr when it is a terminal."""
    console = Console(stderr=True)
    if not (enabled and _enabled and console.is_terminal):
        yield lambda *args, **kwargs: None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task(description, total=total)
    with progress:

        def advance(steps: int = 1, **fields) -> None:
            progress.update(task, advance=steps, **fields)

        yield advance
