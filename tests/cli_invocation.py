"""Running ``onnxslim`` the two ways the CLI tests need: in process (typer's CliRunner) and as
a real subprocess (``python -m onnxslim``), both at 80 columns with output piped, as in a CI
log. Bind :func:`both_ways_fixture` in a test module to run each test both ways."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onnxslim.cli import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
WIDTH = 80


@dataclass
class Run:
    """What a run of the command printed, and its exit code."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke(mode: str, *args: object, env: dict[str, str] | None = None) -> Run:
    """Run ``onnxslim ARGS`` in the current folder, ``in-process`` or as a ``subprocess``."""
    arguments = [str(arg) for arg in args]
    environment = {"COLUMNS": str(WIDTH), **(env or {})}
    if mode == "in-process":
        result = CliRunner(env=environment).invoke(app, arguments)
        return Run(result.exit_code, result.stdout, result.stderr)
    completed = subprocess.run(
        [sys.executable, "-m", "onnxslim", *arguments],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Run(completed.returncode, completed.stdout, completed.stderr)


def both_ways_fixture():
    """A fixture giving ``onnxslim(*args)``, run in a folder holding copies of the fixtures
    (``digits_cnn.onnx``, ``tiny_cnn.onnx``, ``digits_calib.npz``, ``digits_test.npz``), once
    in process and once as a subprocess. Bind it in a test module:
    ``onnxslim = both_ways_fixture()``."""

    @pytest.fixture(params=["in-process", "subprocess"])
    def onnxslim(request, tmp_path: Path, monkeypatch):
        for name in ("digits_cnn.onnx", "tiny_cnn.onnx", "digits_calib.npz", "digits_test.npz"):
            shutil.copyfile(FIXTURES / name, tmp_path / name)
        monkeypatch.chdir(tmp_path)
        return functools.partial(invoke, request.param)

    return onnxslim


_MARKUP = re.compile(r"\[/\]|\[/?(bold|dim|red|green|yellow)[^\]]*\]")


def assert_reads_cleanly(run: Run) -> None:
    """No traceback, no markup residue, no reStructuredText literals, nothing cut off, and
    stdout (unless JSON) within 80 columns."""
    assert "Traceback" not in run.output, run.output
    assert not _MARKUP.search(run.output), run.output
    assert "``" not in run.output, run.output
    assert "…" not in run.output, run.output
    if not run.stdout.startswith(("{", "[")):  # JSON is for machines
        too_wide = [line for line in run.stdout.splitlines() if len(line) > WIDTH]
        assert not too_wide, too_wide


def assert_one_error_line(run: Run, code: int, *words: str) -> str:
    """Exactly one ``error:`` line on stderr, naming ``words``; nothing on stdout."""
    assert run.exit_code == code, run.output
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert run.stdout == "" and "Traceback" not in run.output
    return lines[0]
