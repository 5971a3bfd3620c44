"""What the benchmark scripts share around the measurements: consoles, a timestamped log, and
the work folder. (Kept out of ``_measure.py``, which measured child processes import.)"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

__all__ = ["consoles", "work_folder"]


def consoles(width: int) -> tuple[Console, Console, Callable[[str], None]]:
    """The console for result tables, the stderr console, and ``log(message)`` stamping
    progress on stderr with the seconds since start.

    In a log or a pipe the tables get ``width`` columns instead of being squeezed into 80.
    """
    console = Console()
    if not console.is_terminal:
        console = Console(width=width)
    progress = Console(stderr=True)
    started = time.perf_counter()

    def log(message: str) -> None:
        progress.print(f"[dim]{time.perf_counter() - started:7.1f}s[/] {escape(message)}")

    return console, progress, log


def work_folder(requested: Path | None, prefix: str) -> tuple[Path, bool]:
    """The work folder and whether this run made it (and so removes it unless ``--keep``)."""
    if requested is None:
        return Path(tempfile.mkdtemp(prefix=prefix)), True
    requested.mkdir(parents=True, exist_ok=True)
    return requested, False
