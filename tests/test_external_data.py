"""External data stays inside the model's folder: every reader refuses a location that leaves
it (``../``, absolute, or through a symlinked file or folder), for every command, with one line
that does not say whether the outside path exists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, tensor_info
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from onnxslim import model as model_io
from onnxslim.cli import app
from onnxslim.errors import ModelLoadError
from onnxslim.model import load, save, stub_proto, to_proto

runner = CliRunner(env={"COLUMNS": "200"})

SECRET = b"TOP-SECRET-BYTES" * 64  # 1 KiB: exactly the weight's size, so nothing else fails
OUTSIDE = "points outside the model's folder"
ESCAPES = ["relative", "absolute", "symlinked-file", "symlinked-folder"]


def _conv_model() -> onnx.ModelProto:
    """Conv (external weight ``w`` of 1 KiB) -> Flatten -> MatMul: every command has work."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "m"], ["y"]),
    ]
    return make_model(
        nodes,
        [tensor_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [tensor_info("y", TensorProto.FLOAT, [1, 3])],
        {
            "w": rng.standard_normal((16, 4, 2, 2)).astype(np.float32),
            "m": rng.standard_normal((16, 3)).astype(np.float32),
        },
    )


def _point_weight_at(proto: onnx.ModelProto, location: str) -> onnx.ModelProto:
    weight = next(t for t in proto.graph.initializer if t.name == "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(SECRET)))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return proto


def escaping_model(root: Path, escape: str) -> tuple[Path, str]:
    """``root/m/model.onnx`` whose weight ``w`` reads ``root/outside/secret.bin`` by way of
    ``escape``; the model path and the location it names."""
    (root / "m").mkdir()
    (root / "outside").mkdir()
    secret = root / "outside" / "secret.bin"
    secret.write_bytes(SECRET)
    location = {
        "relative": "../outside/secret.bin",
        "absolute": str(secret),
        "symlinked-file": "w.bin",
        "symlinked-folder": "weights/secret.bin",
    }[escape]
    if escape == "symlinked-file":
        os.symlink(secret, root / "m" / "w.bin")
    elif escape == "symlinked-folder":
        os.symlink(root / "outside", root / "m" / "weights", target_is_directory=True)
    path = root / "m" / "model.onnx"
    path.write_bytes(_point_weight_at(_conv_model(), location).SerializeToString())
    return path, location


def _no_secret_written(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != "secret.bin":
            assert SECRET[:32] not in path.read_bytes(), f"{path} holds the secret's bytes"


def _good_data(root: Path) -> Path:
    data = root / "data.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((4, 1, 4, 2, 2), np.float32))
    return data


COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "optimize": lambda m, root: ["optimize", m, "-o", root / "out.onnx", "--external-data"],
    "optimize-validate": lambda m, root: ["optimize", m, "-o", root / "out.onnx", "--validate"],
    "validate-reference": lambda m, root: ["validate", m, root / "good.onnx"],
    "validate-candidate": lambda m, root: ["validate", root / "good.onnx", m],
    "inspect": lambda m, root: ["inspect", m],
    "quantize": lambda m, root: ["quantize", m, "--activations", "none", "-o", root / "q.onnx"],
    "prune": lambda m, root: ["prune", m, "--ratio", "0.5", "-o", root / "p.onnx"],
    "float16": lambda m, root: ["float16", m, "-o", root / "h.onnx"],
    "convert": lambda m, root: ["convert", m, "--opset", "18", "-o", root / "c.onnx"],
    "sparsify": lambda m, root: ["sparsify", m, "-o", root / "s.onnx"],
    "cluster": lambda m, root: ["cluster", m, "-o", root / "k.onnx"],
    "distill-student": lambda m, root: [
        *("distill", "--teacher", root / "good.onnx", "--student", m),
        *("--data", _good_data(root), "-o", root / "d.onnx"),
    ],
    "distill-teacher": lambda m, root: [
        *("distill", "--teacher", m, "--student", root / "good.onnx"),
        *("--data", _good_data(root), "-o", root / "d.onnx"),
    ],
}


@pytest.mark.parametrize("escape", ESCAPES)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_external_data_outside_the_folder(tmp_path, command, escape):
    model, location = escaping_model(tmp_path, escape)
    onnx.save(_conv_model(), tmp_path / "good.onnx")
    args = [str(a) for a in COMMANDS[command](model, tmp_path)]

    result = runner.invoke(app, args)

    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    # validate names the model (reference or candidate) before the message
    assert re.fullmatch(
        rf"error: ((reference|candidate) model: )?external data '{re.escape(location)}' {OUTSIDE}",
        line,
    ), line
    _no_secret_written(tmp_path)


@pytest.mark.parametrize("escape", ["relative", "absolute", "symlinked-file", "symlinked-folder"])
def test_the_refusal_does_not_tell_whether_the_outside_path_exists(tmp_path, escape):
    model, location = escaping_model(tmp_path, escape)
    with pytest.raises(ModelLoadError) as present:
        load(model)
    (tmp_path / "outside" / "secret.bin").unlink()
    with pytest.raises(ModelLoadError) as absent:
        load(model)
    assert str(present.value) == str(absent.value) == f"external data '{location}' {OUTSIDE}"


def test_a_missing_file_inside_the_folder_is_named_as_missing(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(_point_weight_at(_conv_model(), "w.bin").SerializeToString())
    with pytest.raises(ModelLoadError, match="external data file 'w.bin' of tensor 'w' is missing"):
        load(path)


def test_a_location_inside_the_folder_through_a_symlink_is_fine(tmp_path):
    (tmp_path / "real").mkdir()
    initializers = _conv_model().graph.initializer
    weight = numpy_helper.to_array(next(t for t in initializers if t.name == "w"))
    (tmp_path / "real" / "w.bin").write_bytes(weight.tobytes())
    os.symlink(tmp_path / "real" / "w.bin", tmp_path / "link.bin")
    path = tmp_path / "model.onnx"
    proto = _point_weight_at(_conv_model(), "link.bin")
    path.write_bytes(proto.SerializeToString())

    loaded = load(path)

    constant = next(t for t in model_io.all_constants(loaded.graph) if t.name == "w")
    np.testing.assert_array_equal(model_io.read_constant(constant), weight)


READERS: dict[str, Callable[[model_io.Model, Path], object]] = {
    "read_constant": lambda m, _: model_io.read_constant(_weight(m)),
    "read_constant_bytes": lambda m, _: model_io.read_constant_bytes(_weight(m), 16),
    "values": lambda m, _: _weight(m).values,
    "to_proto": lambda m, _: to_proto(m),
    "stub_proto": lambda m, _: stub_proto(m, keep_below=2**20),
    "save-external": lambda m, folder: save(m, folder / "out.onnx", external_data=True),
    "save-inline": lambda m, folder: save(m, folder / "out.onnx", external_data=False),
}


def _weight(model: model_io.Model):
    return next(t for t in model_io.all_constants(model.graph) if t.name == "w")


@pytest.mark.parametrize("reader", list(READERS))
def test_lazy_readers_refuse_a_file_swapped_for_an_outside_symlink(tmp_path, reader):
    """Loading checks every location, and so does every later read: a data file replaced by
    a symlink after loading is refused, not followed."""
    (tmp_path / "m").mkdir()
    (tmp_path / "secret.bin").write_bytes(SECRET)
    path = tmp_path / "m" / "model.onnx"
    onnx.save(_conv_model(), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    loaded = load(path)
    (tmp_path / "m" / "w.bin").unlink()
    os.symlink(tmp_path / "secret.bin", tmp_path / "m" / "w.bin")

    with pytest.raises(ModelLoadError, match=f"external data 'w.bin' {OUTSIDE}"):
        READERS[reader](loaded, tmp_path / "m")
    _no_secret_written(tmp_path)


def test_constant_node_attributes_with_external_data_are_confined(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "secret.bin").write_bytes(SECRET)
    value = numpy_helper.from_array(np.zeros(256, np.float32), "v")
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    for key, text in (("location", "../secret.bin"), ("length", str(len(SECRET)))):
        entry = value.external_data.add()
        entry.key, entry.value = key, text
    proto = helper.make_model(
        helper.make_graph(
            [helper.make_node("Constant", [], ["y"], value=value)],
            "g",
            [],
            [tensor_info("y", TensorProto.FLOAT, [256])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )
    path = tmp_path / "m" / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match=f"external data '../secret.bin' {OUTSIDE}"):
        load(path)
