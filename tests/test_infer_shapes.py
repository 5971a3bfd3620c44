"""infer-shapes: onnx shape inference results land on the graph, symbolic dims intact."""

from __future__ import annotations

import numpy as np
import onnx
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
