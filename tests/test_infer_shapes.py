"""infer-shapes: onnx shape inference results land on the graph, symbolic dims intact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, tensor_info
from onnx import TensorProto, helper
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnxslim.passes.infer_shapes import InferShapes

from onnxslim.model import load
from onnxslim.pipeline import PassManager


def _model_with_symbolic_batch() -> onnx.ModelProto:
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("ReduceSum", ["r", "axes"], ["y"], keepdims=0),
        ],
        [tensor_info("x", TensorProto.FLOAT, ["batch", 16])],
        [tensor_info("y", TensorProto.FLOAT, [None])],
        {"w": np.ones((16, 300), np.float32), "axes": np.array([1], np.int64)},
    )


def test_intermediate_tensors_get_types_and_symbolic_shapes():
    model = load(_model_with_symbolic_batch())
    (record,) = PassManager([InferShapes()]).run(model)
    tensors = model.graph.tensors()
    assert record.changed
    assert tensors["h"].shape == ["batch", 300]
    assert tensors["r"].dtype == np.float32
    assert tensors["y"].shape == ["batch"]


def test_second_run_changes_nothing():
    model = load(_model_with_symbolic_batch())
    records = PassManager([InferShapes(), InferShapes()]).run(model)
    assert [r.changed for r in records] == [True, False]


def test_declared_graph_output_shapes_are_kept():
    proto = _model_with_symbolic_batch()
    proto.graph.output[0].CopyFrom(tensor_info("y", TensorProto.FLOAT, ["n"]))
    model = load(proto)
    PassManager([InferShapes()]).run(model)
    assert model.graph.outputs[0].shape == ["n"]


def test_large_weights_are_not_read():
    model = load(_model_with_symbolic_batch())  # w is 19 KB: above the stub threshold
    PassManager([InferShapes()]).run(model)
    weight = model.graph.tensors()["w"]
    assert isinstance(weight._values, LazyValues)


def test_subgraph_tensors_are_annotated():
    then_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Relu", ["n"], ["t"])],
        "then",
        [],
        [tensor_info("t", TensorProto.FLOAT, [None, None])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Abs", ["x"], ["e"])], "else", [], [tensor_info("e", 1, [None, None])]
    )
    proto = make_model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        [tensor_info("c", TensorProto.BOOL, []), tensor_info("x", 1, ["b", 4])],
        [tensor_info("y", 1, [None, None])],
    )
    model = load(proto)
    PassManager([InferShapes()]).run(model)
    then_graph = model.graph.nodes[0].attrs["then_branch"]
    assert then_graph.tensors()["n"].shape == ["b", 4]


# Run in a child so that its peak memory is its own: load the model, reset the high-water mark,
# run infer-shapes once, print how far the mark rose (MiB) and the Add output's annotated shape.
PEAK_OF_INFER_SHAPES = """
import re, sys
from onnxslim.model import load
from onnxslim.passes.infer_shapes import InferShapes
from onnxslim.pipeline import PassManager

def high_water():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) // 1024

model = load(sys.argv[1])
with open("/proc/self/clear_refs", "w") as reset:
    reset.write("5")
before = high_water()
PassManager([InferShapes()]).run(model)
print(high_water() - before, model.graph.tensors()["y"].shape)
"""


def _long_vector_model(length: int, as_constant_node: bool) -> onnx.ModelProto:
    """``y = (c + c) + x`` where ``c`` is an arange of ``length`` floats (an initializer, or
    the value of a Constant node) and ``x`` one float."""
    values = np.arange(length, dtype=np.float32)
    nodes = [
        helper.make_node("Add", ["c", "c"], ["twice"]),
        helper.make_node("Add", ["twice", "x"], ["y"]),
    ]
    initializers = {"c": values}
    if as_constant_node:
        tensor = onnx.numpy_helper.from_array(values, "c")
        nodes.insert(0, helper.make_node("Constant", [], ["c"], value=tensor))
        initializers = {}
    return make_model(
        nodes,
        [tensor_info("x", TensorProto.FLOAT, [1])],
        [tensor_info("y", TensorProto.FLOAT, [None])],
        initializers,
    )


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("as_constant_node", [False, True], ids=["initializer", "constant-node"])
def test_data_propagation_costs_no_memory_per_element_of_a_long_vector(tmp_path, as_constant_node):
    """onnx's data propagation spends ~150 bytes per element of a long 1-D tensor (2M floats:
    about 300 MB for an 8 MB model); it sees only shape-sized ones now, and the plain
    inference still gives ``y`` its static length."""
    length = 2_000_000
    path = tmp_path / "long.onnx"
    onnx.save(_long_vector_model(length, as_constant_node), path)
    script = tmp_path / "peak.py"
    script.write_text(PEAK_OF_INFER_SHAPES)
    result = subprocess.run(
        [sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    rise_mib, shape = result.stdout.split(maxsplit=1)
    assert int(rise_mib) < 2 * length * 4 / 2**20 + 16  # at most twice the vector, plus slack
    assert shape.strip() == f"[{length}]"


def test_data_propagation_still_computes_shapes():
    """Shape -> Gather -> Concat -> Reshape of a model with a long vector elsewhere: the
    Reshape's output is static because data propagation saw the small shape tensors."""
    length = 100_000
    nodes = [
        helper.make_node("Add", ["v", "c"], ["w"]),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["rows"], axis=0),
        helper.make_node("Concat", ["rows", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [
            tensor_info("x", TensorProto.FLOAT, [2, 3, 4]),
            tensor_info("v", TensorProto.FLOAT, [length]),
        ],
        [tensor_info("y", TensorProto.FLOAT, [None, None]), tensor_info("w", 1, [None])],
        {
            "c": np.zeros(length, np.float32),
            "zero": np.array([0], np.int64),
            "minus_one": np.array([-1], np.int64),
        },
    )
    model = load(proto)
    PassManager([InferShapes()]).run(model)
    tensors = model.graph.tensors()
    assert tensors["target"].shape == [2]
    assert tensors["y"].shape == [2, 12]
    assert tensors["w"].shape == [length]
