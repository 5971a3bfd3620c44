"""Every command on a model over 2 GiB (protobuf's limit for one message).

The model is built with external data from one large embedding table (2.25 GB) and small
layers, so that each pass has something to do. It takes minutes and a few GB of memory, so
these tests run only when asked: ``ONNXSLIM_LARGE_TESTS=1 pytest tests/test_large_models.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from onnxslim.cli import app

pytestmark = pytest.mark.skipif(
    not os.environ.get("ONNXSLIM_LARGE_TESTS"),
    reason="builds a 2.25 GB model: set ONNXSLIM_LARGE_TESTS=1 to run",
)

VOCAB, HIDDEN, OUT = 2_200_000, 256, 64
_ROWS = 100_000  # rows written at a time


def _external(name: str, shape: tuple[int, ...], offset: int, data: str) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
    tensor.data_location = TensorProto.EXTERNAL
    length = int(np.prod(shape)) * 4
    for key, value in (("location", data), ("offset", offset), ("length", length)):
        tensor.external_data.add(key=key, value=str(value))
    return tensor


@pytest.fixture(scope="module")
def large_model(tmp_path_factory) -> Path:
    """ids -> Gather(table 2.25 GB) -> MatMul -> Relu -> MatMul -> y, weights written
    straight to one external file (no ModelProto could hold them)."""
    folder = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(0)
    shapes = {"table": (VOCAB, HIDDEN), "w1": (HIDDEN, HIDDEN), "w2": (HIDDEN, OUT)}
    block = rng.standard_normal((_ROWS, HIDDEN), dtype=np.float32)
    initializers, offset = [], 0
    with open(folder / "large.onnx.data", "wb") as data:
        for start in range(0, VOCAB, _ROWS):  # row blocks, each scaled differently
            data.write((block[: min(_ROWS, VOCAB - start)] * (1 + start / VOCAB)).tobytes())
        for name in ("w1", "w2"):
            data.write((rng.standard_normal(shapes[name], dtype=np.float32) / 16).tobytes())
    for name, shape in shapes.items():
        initializers.append(_external(name, shape, offset, "large.onnx.data"))
        offset += int(np.prod(shape)) * 4
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"]),
        helper.make_node("MatMul", ["embedded", "w1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["activated"]),
        helper.make_node("MatMul", ["activated", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", OUT])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "large.onnx"
    onnx.save(model, path)
    return path


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("quantize", ["--weights", "int4"]),
        ("quantize", ["--weights", "int8", "--activations", "dynamic"]),
        ("quantize", ["--weights", "int8", "--blockwise"]),
        ("float16", []),
        ("prune", []),
        ("sparsify", []),
        ("cluster", []),
        ("convert", ["--opset", "21"]),
    ],
)
def test_every_compression_command_works_on_a_model_over_2_gib(
    large_model: Path, tmp_path: Path, command: str, options: list[str]
) -> None:
    output = tmp_path / "out.onnx"
    _invoke(command, str(large_model), "-o", str(output), *options)
    skeleton = onnx.load(str(output), load_external_data=False)
    onnx.checker.check_model(str(output))  # by path: the checker reads external data itself
    assert skeleton.graph.node
    if command in ("float16", "cluster"):
        assert _size(output) < 0.6 * _size(large_model)


def test_validate_compares_two_models_over_2_gib(large_model: Path, tmp_path: Path) -> None:
    converted = tmp_path / "converted.onnx"
    _invoke("convert", str(large_model), "-o", str(converted), "--opset", "21")
    assert "outputs match" in _invoke("validate", str(large_model), str(converted))


def test_distill_runs_a_teacher_over_2_gib(large_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    student = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Gather", ["table", "ids"], ["embedded"]),
                helper.make_node("MatMul", ["embedded", "w"], ["y"]),
            ],
            "student",
            [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", OUT])],
            [
                onnx.numpy_helper.from_array(rng.standard_normal((1000, 32), np.float32), "table"),
                onnx.numpy_helper.from_array(rng.standard_normal((32, OUT), np.float32), "w"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    student.ir_version = 8
    onnx.save(student, tmp_path / "student.onnx")
    np.savez(tmp_path / "data.npz", ids=rng.integers(0, 1000, (64, 8)).astype(np.int64))
    _invoke(
        "distill",
        "--teacher",
        str(large_model),
        "--student",
        str(tmp_path / "student.onnx"),
        "--data",
        str(tmp_path / "data.npz"),
        "-o",
        str(tmp_path / "distilled.onnx"),
        "--loss",
        "mse",
        "--epochs",
        "2",
    )
    assert (tmp_path / "distilled.onnx").exists()
