"""simplify-shapes: Gather and Slice of a Shape, and Shape with start/end, become constants
exactly where every selected dim is static, and outputs stay the same under onnxruntime for
every size of the symbolic dims."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, run_model, tensor_info
from onnx import TensorProto, helper
from onnxslim.passes.eliminations import SimplifyShapes
from onnxslim.passes.infer_shapes import InferShapes

from onnxslim.model import load, to_proto
from onnxslim.pipeline import PassManager

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
node = helper.make_node


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def shape_model(
    middle: list[onnx.NodeProto],
    x_shape: list,
    initializers: dict | None = None,
    *,
    extra_inputs: tuple[onnx.ValueInfoProto, ...] = (),
    opset: int = 17,
) -> onnx.ModelProto:
    """``x`` -> ``middle`` (from ``x`` to ``s``) -> Identity -> ``dims``, an int64 output
    of the type that onnx infers."""
    nodes = [*middle, node("Identity", ["s"], ["dims"])]
    inputs = [tensor_info("x", FLOAT, x_shape), *extra_inputs]
    tensors = [onnx.numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()]
    draft = helper.make_model(
        helper.make_graph(nodes, "draft", inputs, [], tensors),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    inferred = onnx.shape_inference.infer_shapes(draft).graph.value_info
    output = next(v for v in inferred if v.name == "s")
    output.name = "dims"
    return make_model(nodes, inputs, [output], tensors, opset=opset)


def simplified(proto: onnx.ModelProto) -> onnx.ModelProto:
    model = load(proto)
    PassManager([InferShapes(), SimplifyShapes()]).run(model)
    result = to_proto(model)
    onnx.checker.check_model(result, full_check=True)
    return result


def assert_same_for_any_size(
    before: onnx.ModelProto, after: onnx.ModelProto, x_dims: list[int], **extra: np.ndarray
) -> None:
    """Equal outputs with every non-static dim of ``x`` fed as 2, then as 3."""
    declared = before.graph.input[0].type.tensor_type.shape.dim
    for size in (2, 3):
        shape = [d.dim_value if d.HasField("dim_value") else size for d in declared]
        assert len(shape) == len(x_dims)
        feeds = {"x": np.zeros(shape, np.float32), **extra}
        for expected, actual in zip(
            run_model(before, feeds, ort_optimizations=False),
            run_model(after, feeds, ort_optimizations=False),
            strict=True,
        ):
            assert actual.dtype == expected.dtype
            np.testing.assert_array_equal(actual, expected)


def op_types(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def dims_output(proto: onnx.ModelProto, batch: int = 2) -> np.ndarray:
    declared = proto.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else batch for d in declared]
    return run_model(proto, {"x": np.zeros(shape, np.float32)}, ort_optimizations=False)[0]


@pytest.mark.parametrize(
    ("index", "expected"),
    [(ints(1)[0], 5), (ints(1, 2), [5, 4]), (ints(-1)[0], 4), (ints(-2, 1), [5, 5])],
    ids=["scalar", "1-d", "negative", "negative-1-d"],
)
def test_gather_of_static_dims_becomes_a_constant(index, expected):
    proto = shape_model(
        [node("Shape", ["x"], ["shape"]), node("Gather", ["shape", "i"], ["s"])],
        ["batch", 5, 4],
        {"i": np.asarray(index)},
    )
    result = simplified(proto)
    assert op_types(result) == ["Identity"]
    value = dims_output(result)
    assert value.dtype == np.int64 and value.shape == np.asarray(expected).shape
    np.testing.assert_array_equal(value, expected)
    assert_same_for_any_size(proto, result, [0, 5, 4])


def test_slice_of_the_last_static_dim_becomes_a_constant():
    proto = shape_model(
        [
            node("Shape", ["x"], ["shape"]),
            node("Slice", ["shape", "start", "end"], ["s"]),
        ],
        ["batch", "sequence", 4],
        {"start": ints(-1), "end": ints(np.iinfo(np.int64).max)},
    )
    result = simplified(proto)
    assert op_types(result) == ["Identity"]
    np.testing.assert_array_equal(dims_output(result), [4])
    assert_same_for_any_size(proto, result, [0, 0, 4])


def test_slice_with_axes_and_a_negative_step_becomes_a_constant():
    proto = shape_model(
        [
            node("Shape", ["x"], ["shape"]),
            node("Slice", ["shape", "start", "end", "axes", "steps"], ["s"]),
        ],
        ["batch", 5, 4, 3],
        {"start": ints(-1), "end": ints(0), "axes": ints(0), "steps": ints(-1)},
    )
    result = simplified(proto)
    assert op_types(result) == ["Identity"]
    np.testing.assert_array_equal(dims_output(result), [3, 4, 5])
    assert_same_for_any_size(proto, result, [0, 5, 4, 3])


def test_slice_in_opset_9_reads_its_attributes():
    proto = shape_model(
        [
            node("Shape", ["x"], ["shape"]),
            node("Slice", ["shape"], ["s"], starts=[1], ends=[3]),
        ],
        ["batch", 5, 4],
        opset=9,
    )
    result = simplified(proto)
    assert op_types(result) == ["Identity"]
    np.testing.assert_array_equal(dims_output(result), [5, 4])


def test_shape_with_start_and_end_of_static_dims_becomes_a_constant():
    proto = shape_model([node("Shape", ["x"], ["s"], start=1, end=-1)], ["batch", 5, 4, "n"])
    result = simplified(proto)
    assert op_types(result) == ["Identity"]
    np.testing.assert_array_equal(dims_output(result), [5, 4])
    assert_same_for_any_size(proto, result, [0, 5, 4, 0])


@pytest.mark.parametrize(
    ("x_shape", "index"),
    [
        (["batch", 5, 4], ints(0)[0]),
        ([None, 5, 4], ints(-3)[0]),
        (["batch", 5, 4], ints(1, 0)),
        (["batch", 5, 4], ints(3)[0]),  # out of range: onnxruntime's error must stay
    ],
    ids=["symbolic", "unknown", "one-of-two-symbolic", "out-of-range"],
)
def test_gather_that_selects_a_non_static_dim_stays(x_shape, index):
    proto = shape_model(
        [node("Shape", ["x"], ["shape"]), node("Gather", ["shape", "i"], ["s"])],
        x_shape,
        {"i": np.asarray(index)},
    )
    result = simplified(proto)
    assert op_types(result) == ["Shape", "Gather", "Identity"]
    if index.max() < len(x_shape):
        assert_same_for_any_size(proto, result, [0, 5, 4])


def test_gather_with_an_index_computed_at_run_time_stays():
    proto = shape_model(
        [node("Shape", ["x"], ["shape"]), node("Gather", ["shape", "i"], ["s"])],
        ["batch", 5, 4],
        extra_inputs=(tensor_info("i", INT64, []),),
    )
    result = simplified(proto)
    assert op_types(result) == ["Shape", "Gather", "Identity"]
    for index in (0, 1, -1):
        assert_same_for_any_size(proto, result, [0, 5, 4], i=np.array(index, np.int64))


def test_slice_that_selects_a_symbolic_dim_stays():
    proto = shape_model(
        [node("Shape", ["x"], ["shape"]), node("Slice", ["shape", "start", "end"], ["s"])],
        ["batch", 5, 4],
        {"start": ints(0), "end": ints(2)},
    )
    result = simplified(proto)
    assert op_types(result) == ["Shape", "Slice", "Identity"]
    assert_same_for_any_size(proto, result, [0, 5, 4])


def test_shape_with_a_symbolic_dim_in_range_stays():
    proto = shape_model([node("Shape", ["x"], ["s"], start=0, end=2)], ["batch", 5, 4])
    result = simplified(proto)
    assert op_types(result) == ["Shape", "Identity"]
    assert_same_for_any_size(proto, result, [0, 5, 4])


def test_gather_that_is_a_graph_output_keeps_its_node():
    proto = make_model(
        [node("Shape", ["x"], ["shape"]), node("Gather", ["shape", "i"], ["dims"])],
        [tensor_info("x", FLOAT, ["batch", 5, 4])],
        [tensor_info("dims", INT64, [])],
        {"i": np.array(1, np.int64)},
    )
    result = simplified(proto)
    assert op_types(result) == ["Shape", "Gather"]
    assert [o.name for o in result.graph.output] == ["dims"]


def test_shape_that_another_node_reads_stays():
    proto = make_model(
        [
            node("Shape", ["x"], ["shape"]),
            node("Gather", ["shape", "i"], ["d"]),
            node("Identity", ["d"], ["dims"]),
            node("Identity", ["shape"], ["full"]),
        ],
        [tensor_info("x", FLOAT, ["batch", 5, 4])],
        [tensor_info("dims", INT64, []), tensor_info("full", INT64, [3])],
        {"i": np.array(1, np.int64)},
    )
    result = simplified(proto)
    assert sorted(op_types(result)) == ["Identity", "Identity", "Shape"]
    assert_same_for_any_size(proto, result, [0, 5, 4])


def test_gather_inside_an_if_branch_becomes_a_constant():
    def branch(name: str, index: int) -> onnx.GraphProto:
        return helper.make_graph(
            [
                node("Shape", ["x"], [f"{name}_shape"]),
                node("Gather", [f"{name}_shape", f"{name}_i"], [f"{name}_d"]),
                node("Identity", [f"{name}_d"], [f"{name}_out"]),
            ],
            name,
            [],
            [tensor_info(f"{name}_out", INT64, [])],
            [onnx.numpy_helper.from_array(np.array(index, np.int64), f"{name}_i")],
        )

    proto = make_model(
        [
            node(
                "If",
                ["flag"],
                ["dims"],
                then_branch=branch("then", 1),
                else_branch=branch("else", 0),
            )
        ],
        [tensor_info("x", FLOAT, ["batch", 5, 4]), tensor_info("flag", TensorProto.BOOL, [])],
        [tensor_info("dims", INT64, [])],
    )
    result = simplified(proto)
    then_ops = [n.op_type for n in result.graph.node[0].attribute[0].g.node]
    else_ops = [n.op_type for n in result.graph.node[0].attribute[1].g.node]
    assert sorted([then_ops, else_ops]) == [["Identity"], ["Shape", "Gather", "Identity"]]
    for flag in (True, False):
        assert_same_for_any_size(proto, result, [0, 5, 4], flag=np.array(flag))


def test_gather_whose_index_a_constant_node_gives_becomes_a_constant():
    index = onnx.numpy_helper.from_array(np.array(-1, np.int64))
    proto = shape_model(
        [
            node("Constant", [], ["i"], value=index),
            node("Shape", ["x"], ["shape"]),
            node("Gather", ["shape", "i"], ["s"]),
        ],
        ["batch", 5, 4],
    )
    result = simplified(proto)
    assert op_types(result) == ["Identity"]
    np.testing.assert_array_equal(dims_output(result), 4)
    assert_same_for_any_size(proto, result, [0, 5, 4])
