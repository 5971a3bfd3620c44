"""Wall time and peak memory of a piece of work, each measured in a fresh child process.

A process's peak RSS is a high-water mark that never comes down, so two cases measured in one
process would share the larger peak: every measurement runs in its own child.

Reading that child's peak needs care. ``ru_maxrss`` (from ``getrusage`` or ``os.wait4``) starts
from the *parent's* peak at fork time: a benchmark that built a 2 GB model and then measures a
10 MB child is told 2 GB. So the child is a small runner (this file) that reads its own
``VmHWM`` from ``/proc/self/status``, whose count starts afresh at ``exec``. Before the measured
call it also resets that mark (``/proc/self/clear_refs``), so that imports done beforehand do
not hide a smaller peak of the call itself.

Use :func:`measure_call` for a module-level Python function (only the call is timed) and
:func:`measure_command` for any program (the whole process is timed), e.g.
``measure_command(["python", "-c", "import numpy"]).peak_rss_bytes``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Measurement", "MeasurementError", "measure_call", "measure_command"]

_RESULT_KEY = "onnxslim-bench-result"


@dataclass(frozen=True)
class Measurement:
    """What one child did: how long, how much memory at most, and what the call returned.

    ``seconds`` is the wall time of the call (of the whole process for a command).
    ``peak_rss_bytes`` is the highest resident set while it ran, interpreter and imports
    included. ``baseline_rss_bytes`` is the resident set when the call began (0 for a command).
    """

    seconds: float
    peak_rss_bytes: int
    baseline_rss_bytes: int = 0
    value: Any = None

    @property
    def peak_increase_bytes(self) -> int:
        """Memory the work added on top of what was resident before it (imports and all)."""
        return max(0, self.peak_rss_bytes - self.baseline_rss_bytes)


class MeasurementError(RuntimeError):
    """The measured child failed, was killed, or ran past its time limit."""


def measure_call(
    function: Callable[..., Any],
    *args: Any,
    preload: Sequence[str] = (),
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    python: str | None = None,
    **kwargs: Any,
) -> Measurement:
    """Call ``function(*args, **kwargs)`` in a fresh Python child and measure the call.

    ``function`` must be defined at module level (a script's ``__main__`` works: it is loaded
    under another name, so its ``if __name__ == "__main__"`` block does not run). Arguments and
    the return value travel by pickle. ``preload`` modules are imported before the clock starts.
    ``python`` runs the child under another interpreter (another virtual environment's, to
    measure a package that cannot share ours): the child then keeps that interpreter's import
    path and loads ``function`` from its file.
    """
    module, file, qualname = _locate(function)
    if python is not None and file is None:
        file = sys.modules[function.__module__].__file__
    spec = {
        "kind": "call",
        "module": module,
        "file": file,
        "qualname": qualname,
        "args": args,
        "kwargs": kwargs,
        "preload": list(preload),
        "sys_path": None if python else list(sys.path),
    }
    return _run_runner(spec, qualname, timeout, env, python or sys.executable)


def measure_command(
    argv: Sequence[str], *, timeout: float | None = None, env: dict[str, str] | None = None
) -> Measurement:
    """Run a program to completion; time and peak cover the whole process.

    The peak is ``ru_maxrss`` as the runner sees it, so it includes at most the runner's own
    resident set (about 10 MB) at the moment it started the program.
    """
    spec = {"kind": "command", "argv": list(argv)}
    return _run_runner(spec, " ".join(argv), timeout, env, sys.executable)


def _locate(function: Callable[..., Any]) -> tuple[str, str | None, str]:
    """(module name, file to load it from or None, qualified name) of a module-level function."""
    qualname = function.__qualname__
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(f"{qualname}: only module-level functions can run in a child process")
    if function.__module__ == "__main__":
        main_file = sys.modules["__main__"].__file__
        return "_measured_main", str(Path(main_file).resolve()), qualname
    return function.__module__, None, qualname


def _run_runner(
    spec: dict[str, Any],
    label: str,
    timeout: float | None,
    env: dict[str, str] | None,
    python: str,
) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="onnxslim-measure-") as scratch:
        spec_path = Path(scratch) / "spec.pickle"
        result_path = Path(scratch) / "result.pickle"
        spec_path.write_bytes(pickle.dumps(spec))
        argv = [python, str(Path(__file__).resolve()), str(spec_path), str(result_path)]
        # A session of its own, so that stopping the runner also stops a command it started
        # (on a timeout, and on Ctrl-C, which no longer reaches that session by itself).
        runner = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            output, _ = runner.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _stop(runner)
            raise MeasurementError(f"{label}: ran past its {timeout:g} s limit") from exc
        except BaseException:
            _stop(runner)
            raise
        if runner.returncode != 0 or not result_path.exists():
            tail = output.decode(errors="replace")[-4000:]
            raise MeasurementError(f"{label}: failed (exit status {runner.returncode}):\n{tail}")
        result = pickle.loads(result_path.read_bytes())
    if result.get("key") != _RESULT_KEY:
        raise MeasurementError(f"{label}: the child wrote no result")
    return Measurement(
        seconds=result["seconds"],
        peak_rss_bytes=result["peak_rss_bytes"],
        baseline_rss_bytes=result["baseline_rss_bytes"],
        value=result["value"],
    )


def _stop(runner: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(runner.pid, signal.SIGKILL)
    runner.communicate()


# ------------------------------------------------------------------------ the child's side


def _status_bytes(field: str) -> int | None:
    """A ``kB`` line of /proc/self/status in bytes, or None where there is no /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Make the peak RSS start again from the current RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _maxrss_bytes(usage: resource.struct_rusage) -> int:
    return usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024


def _import_target(spec: dict[str, Any]) -> Callable[..., Any]:
    if spec["file"] is None:
        target: Any = importlib.import_module(spec["module"])
    else:
        loader_spec = importlib.util.spec_from_file_location(spec["module"], spec["file"])
        target = importlib.util.module_from_spec(loader_spec)
        sys.modules[spec["module"]] = target
        loader_spec.loader.exec_module(target)
    for part in spec["qualname"].split("."):
        target = getattr(target, part)
    return target


def _call(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["sys_path"] is not None:
        sys.path[:] = spec["sys_path"]
    for name in spec["preload"]:
        importlib.import_module(name)
    function = _import_target(spec)
    if _reset_peak() and _status_bytes("VmRSS") is not None:
        baseline = _status_bytes("VmRSS")
    else:  # no /proc: the best we have is the peak so far, imports included
        baseline = _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF))
    start = time.perf_counter()
    value = function(*spec["args"], **spec["kwargs"])
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM") or _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF))
    return {
        "seconds": seconds,
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline,
        "value": value,
    }


def _command(spec: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    process = subprocess.Popen(spec["argv"])
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(spec['argv'])}: exit status {process.returncode}")
    return {
        "seconds": seconds,
        "peak_rss_bytes": _maxrss_bytes(usage),
        "baseline_rss_bytes": 0,
        "value": None,
    }


def _child_main(spec_path: str, result_path: str) -> None:
    spec = pickle.loads(Path(spec_path).read_bytes())
    try:
        result = _call(spec) if spec["kind"] == "call" else _command(spec)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    Path(result_path).write_bytes(pickle.dumps({"key": _RESULT_KEY, **result}))


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
