"""Saving is atomic for the model *and* its external data: a reader sees the old pair or the new
one, never a model with another write's data, whatever is killed when and however many write
at once. Outputs that are not regular files are refused; killed writes leave nothing behind
for long.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_model, tensor_info
from onnx import TensorProto, helper
from typer.testing import CliRunner

from onnxslim.cli import app
from onnxslim.errors import ModelSaveError
from onnxslim.model import load, model_files, save

runner = CliRunner(env={"COLUMNS": "200"})
FEED = {"x": np.linspace(-1, 1, 2 * 32, dtype=np.float32).reshape(2, 32)}
TEMP_NAME = re.compile(r"\.onnxslim-(\d+)-[0-9a-f]+\.tmp")


def writer_model(writer: int) -> onnx.ModelProto:
    """MatMul + Add with weights drawn from ``writer``: each writer's outputs are its own, and
    its doc string says which writer it is."""
    rng = np.random.default_rng(writer)
    proto = make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["y"]),
        ],
        [tensor_info("x", TensorProto.FLOAT, ["N", 32])],
        [tensor_info("y", TensorProto.FLOAT, ["N", 32])],
        {
            "w": rng.standard_normal((32, 32)).astype(np.float32),
            "b": rng.standard_normal(32).astype(np.float32),
        },
    )
    proto.doc_string = f"writer {writer}"
    return proto


def expected_output(writer: int) -> np.ndarray:
    return ort.InferenceSession(
        writer_model(writer).SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, FEED)[0]


def read_back(path: Path) -> tuple[int, np.ndarray]:
    """Which writer's model is at ``path``, and what onnxruntime computes with it."""
    writer = int(onnx.load(str(path), load_external_data=False).doc_string.split()[-1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return writer, session.run(None, FEED)[0]


def read_as_a_reader_would(path: Path, snapshot: Path) -> tuple[int, np.ndarray]:
    """Read the model file once, then the data file it names (as any loader does), copy both
    into ``snapshot`` and run that: the pair a reader got at that moment."""
    model_bytes = path.read_bytes()
    proto = onnx.load_from_string(model_bytes)
    (location,) = {
        e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"
    }
    data = (path.parent / location).read_bytes()
    (snapshot / path.name).write_bytes(model_bytes)
    (snapshot / location).write_bytes(data)
    try:
        return read_back(snapshot / path.name)
    finally:
        for file in snapshot.iterdir():
            file.unlink()


def data_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".data"))


def referenced_data(path: Path) -> set[str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {
        entry.value
        for tensor in proto.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }


# ------------------------------------------------------------------------ special outputs


def test_a_fifo_as_output_is_refused_and_left_alone(tmp_path, save_model):
    source = save_model(writer_model(0))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = runner.invoke(app, ["optimize", str(source), "-o", str(fifo)])
    assert result.exit_code == 2, result.output
    assert "not a regular file" in result.stderr
    assert fifo.is_fifo()


def test_a_character_device_as_output_is_refused_and_left_alone(tmp_path):
    device = tmp_path / "nulldev"
    try:
        os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # S_IFCHR: /dev/null's numbers
    except PermissionError:
        pytest.skip("creating a device node needs root")
    with pytest.raises(ModelSaveError, match="not a regular file"):
        save(load(writer_model(0)), device)
    assert device.is_char_device()


# ------------------------------------------------------------------ naming and leftovers


def test_each_external_data_write_gets_its_own_file_and_the_old_one_goes(tmp_path):
    out = tmp_path / "out.onnx"
    save(load(writer_model(1)), out, external_data=True)
    first = referenced_data(out)
    save(load(writer_model(2)), out, external_data=True)
    second = referenced_data(out)

    assert len(first) == len(second) == 1 and first != second
    assert data_files(tmp_path) == sorted(second)
    assert model_files(out) == [out, (tmp_path / second.pop()).resolve()]
    assert read_back(out)[0] == 2
    np.testing.assert_array_equal(read_back(out)[1], expected_output(2))


def test_resaving_inline_removes_the_data_file_of_the_earlier_output(tmp_path, save_model):
    source = save_model(writer_model(1), "source.onnx")
    out = tmp_path / "out.onnx"
    first = runner.invoke(app, ["optimize", str(source), "-o", str(out), "--external-data"])
    assert first.exit_code == 0, first.output
    assert len(data_files(tmp_path)) == 1

    result = runner.invoke(app, ["optimize", str(source), "-o", str(out), "--json"])

    assert result.exit_code == 0, result.output
    assert data_files(tmp_path) == []
    assert json.loads(result.stdout)["after"]["file_bytes"] == out.stat().st_size


def test_the_written_file_bytes_count_the_new_data_file_only(tmp_path, save_model):
    source = save_model(writer_model(1), "source.onnx")
    out = tmp_path / "out.onnx"
    for _ in range(2):
        result = runner.invoke(
            app, ["optimize", str(source), "-o", str(out), "--external-data", "--json"]
        )
        assert result.exit_code == 0, result.output
    (data,) = data_files(tmp_path)
    expected = out.stat().st_size + (tmp_path / data).stat().st_size
    assert json.loads(result.stdout)["after"]["file_bytes"] == expected


# --------------------------------------------------------------------- crash injection

# Runs in a child process: saves writer 2's model over writer 1's and SIGKILLs itself at one
# point of the write: the n-th call of ``os.fsync`` (files written), ``os.replace`` (moved into
# place) or ``os.unlink`` (superseded data removed), the steps between which a write can die.
CRASHING_WRITER = """
import os, signal, sys
from pathlib import Path
import onnx
from onnxslim.model import load, model_files, save

step, when, source, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
real = getattr(os, step)
calls = 0

def dying(*args):
    global calls
    if calls == when:
        os.kill(os.getpid(), signal.SIGKILL)
    calls += 1
    return real(*args)

setattr(os, step, dying)
save(load(source), out, external_data=True)
sys.exit(3)  # the kill point was never reached
"""


def _crash_during_save(tmp_path: Path, step: str, when: int) -> subprocess.CompletedProcess:
    script = tmp_path / "crashing_writer.py"
    script.write_text(CRASHING_WRITER)
    source = tmp_path / "new.onnx"
    onnx.save(writer_model(2), source)
    return subprocess.run(
        [sys.executable, script, step, str(when), source, tmp_path / "out" / "m.onnx"],
        capture_output=True,
        text=True,
        timeout=120,
    )


KILL_POINTS = [
    ("fsync", 0),  # while the files are written
    ("replace", 0),  # written, nothing renamed
    ("replace", 1),  # between the data file's rename and the model's
    ("unlink", 0),  # model renamed, the old data file not yet removed
]


@pytest.mark.parametrize(("step", "when"), KILL_POINTS)
def test_a_write_killed_at_any_step_leaves_the_old_pair_or_the_new_one(tmp_path, step, when):
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    save(load(writer_model(1)), out, external_data=True)

    result = _crash_during_save(tmp_path, step, when)

    assert result.returncode == -signal.SIGKILL, result.stderr
    writer, outputs = read_back(out)
    assert writer in (1, 2)
    np.testing.assert_array_equal(outputs, expected_output(writer))
    # ... and the next write into the folder removes whatever the killed one left
    save(load(writer_model(3)), out, external_data=True)
    leftovers = sorted(p.name for p in out.parent.iterdir())
    assert leftovers == sorted(["m.onnx", *referenced_data(out)])
    np.testing.assert_array_equal(read_back(out)[1], expected_output(3))


def test_a_temp_folder_of_a_live_writer_is_kept(tmp_path):
    """Another process writing into the same folder is not disturbed: only temp files whose
    process is gone are removed."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        held = tmp_path / f".onnxslim-{live.pid}-0123456789abcdef.tmp"
        held.mkdir()
        (held / "m.onnx").write_bytes(b"being written")
        dead_pid = _a_dead_pid()
        stale = tmp_path / f".onnxslim-{dead_pid}-0123456789abcdef.tmp"
        stale.mkdir()
        (stale / "m.onnx.0123456789abcdef.data").write_bytes(b"\0" * 4096)

        save(load(writer_model(1)), tmp_path / "m.onnx", external_data=True)

        assert held.exists() and not stale.exists()
    finally:
        live.kill()
        live.wait()


def _a_dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------------------------------- concurrency

CONCURRENT_WRITER = """
import sys
from pathlib import Path
from onnxslim.model import load, model_files, save

source, out, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
model = load(source)
for _ in range(rounds):
    save(model, out, external_data=True)
"""


def test_concurrent_writers_to_one_path_never_pair_a_model_with_anothers_data(tmp_path):
    writers, rounds = 4, 8
    script = tmp_path / "writer.py"
    script.write_text(CONCURRENT_WRITER)
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    expected = {}
    sources = []
    for writer in range(writers):
        sources.append(tmp_path / f"w{writer}.onnx")
        onnx.save(writer_model(writer), sources[-1])
        expected[writer] = expected_output(writer)
    save(load(sources[0]), out, external_data=True)

    processes = [
        subprocess.Popen([sys.executable, str(script), str(source), str(out), str(rounds)])
        for source in sources
    ]
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    reads, inconsistent = 0, []
    while any(p.poll() is None for p in processes):
        try:
            writer, outputs = read_as_a_reader_would(out, snapshot)
        except FileNotFoundError:  # the data file of a model replaced since: read again
            continue
        except Exception as exc:
            inconsistent.append(f"unreadable: {str(exc)[:200]}")
            continue
        reads += 1
        if not np.array_equal(outputs, expected[writer]):
            inconsistent.append(f"writer {writer}'s model with other data")
    assert all(p.wait(timeout=120) == 0 for p in processes)

    assert inconsistent == []
    assert reads > 0
    writer, outputs = read_back(out)
    np.testing.assert_array_equal(outputs, expected[writer])
    leftovers = sorted(p.name for p in out.parent.iterdir())
    assert leftovers == sorted(["m.onnx", *referenced_data(out)])
