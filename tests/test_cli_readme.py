"""A scripted newcomer run: every ``onnxslim`` command the README shows, run in order at 80
columns with output piped (as in a CI log), in process and as a subprocess, must succeed and
read cleanly: no traceback, no markup residue, nothing cut off, tables within 80 columns.

The README's placeholder files are real here: ``model.onnx`` and ``resnet50.onnx`` are the
digits CNN, ``calib.npz``, ``data.npz``, ``inputs.npz`` and ``train.npz`` its data files.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from cli_invocation import FIXTURES, assert_reads_cleanly, invoke

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

PLACEHOLDERS = {
    "model.onnx": "digits_cnn.onnx",
    "resnet50.onnx": "digits_cnn.onnx",
    "calib.npz": "digits_calib.npz",
    "inputs.npz": "digits_calib.npz",
    "data.npz": "digits_test.npz",
    "train.npz": "digits_train.npz",
}
RECIPE = '[[steps]]\npass = "cleanup"\n\n[[steps]]\nrepeat = ["fold-constants", "cleanup"]\n'
# Commands that need what a CPU-only test machine may lack, and the one line they must then
# print instead (exit code 2).
NEEDS = {
    "ort-training": "onnxruntime.training is not installed",
    "cuda": "'cuda' is not available",
}
# The README also shows commands on models no fixture stands in for.
NOT_HERE = ("bert.onnx", ".venv-train/")


def readme_commands() -> list[str]:
    """Every command line of the README's bash blocks that runs onnxslim, in order."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(("onnxslim ", "python -m onnxslim")) and not any(
                word in line for word in NOT_HERE
            ):
                commands.append(line)
    return commands


def test_the_readme_shows_the_peer_style_forms():
    commands = readme_commands()
    assert "onnxslim model.onnx model.slim.onnx" in commands
    assert any(re.match(r"onnxslim optimize \S+ \S+\.onnx", c) for c in commands)
    assert any("--input-shape" in c for c in commands)
    assert len(commands) >= 25


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    for placeholder, fixture in PLACEHOLDERS.items():
        shutil.copyfile(FIXTURES / fixture, tmp_path / placeholder)
    (tmp_path / "recipe.toml").write_text(RECIPE)
    shutil.copytree(FIXTURES, tmp_path / "fixtures")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("mode", ["in-process", "subprocess"])
def test_every_readme_command_runs_and_reads_cleanly_at_80_columns(workspace, mode):
    for command in readme_commands():
        words = shlex.split(command)
        arguments = words[1:] if words[0] == "onnxslim" else words[3:]  # python -m onnxslim
        run = invoke(mode, *arguments)
        needed = [need for word, need in NEEDS.items() if word in command]
        if run.exit_code == 2 and any(need in run.stderr for need in needed):
            assert len(run.stderr.splitlines()) == 1, (command, run.stderr)
        else:
            assert run.exit_code == 0, (command, run.output)
        assert_reads_cleanly(run)
