"""``describe``: what ``onnxslim inspect`` reports. FLOPs count a multiply-add as 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxslim.summary import describe

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_cnn.onnx"


def weights(*shape: int) -> np.ndarray:
    return np.ones(shape, np.float32)


def float_info(name: str, shape: list[int | str]):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.fixture
def describe_model(build_model, save_model):
    """Build a model, save it, and describe the file."""

    def run(nodes, inputs, outputs, initializers=()):
        return describe(save_model(build_model(nodes, inputs, outputs, initializers)))

    return run


# -------------------------------------------------------------------------------------- FLOPs


def test_grouped_conv_flops(describe_model):
    # 8 in, 8 out, 4 groups: each output reads 2 input channels x 3x3 -> 18 MACs, 800 outputs.
    info = describe_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1] * 4)],
        [float_info("x", [1, 8, 10, 10])],
        [float_info("y", [1, 8, 10, 10])],
        {"w": weights(8, 2, 3, 3)},
    )

    assert info.flops_by_op == {"Conv": 2 * 800 * 18}


def test_strided_conv_flops_follow_the_output_size(describe_model):
    # stride 2, no padding: 9x9 -> 4x4 outputs, 16 channels, 3 input channels x 3x3.
    info = describe_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[2, 2])],
        [float_info("x", [2, 3, 9, 9])],
        [float_info("y", [2, 16, 4, 4])],
        {"w": weights(16, 3, 3, 3), "b": weights(16)},
    )

    assert info.flops_by_op == {"Conv": 2 * (2 * 16 * 4 * 4) * (3 * 3 * 3)}


@pytest.mark.parametrize(
    ("trans_a", "trans_b", "a_shape", "b_shape"),
    [
        (0, 0, [4, 6], [6, 5]),
        (1, 0, [6, 4], [6, 5]),
        (0, 1, [4, 6], [5, 6]),
        (1, 1, [6, 4], [5, 6]),
    ],
)
def test_gemm_flops_respect_transposes(describe_model, trans_a, trans_b, a_shape, b_shape):
    # Y is 4x5 and K is 6 in every case: 4 * 5 * 6 MACs.
    info = describe_model(
        [helper.make_node("Gemm", ["a", "b"], ["y"], transA=trans_a, transB=trans_b)],
        [float_info("a", a_shape)],
        [float_info("y", [4, 5])],
        {"b": weights(*b_shape)},
    )

    assert info.flops_by_op == {"Gemm": 2 * 4 * 5 * 6}


@pytest.mark.parametrize(
    "b_shape", [[2, 3, 5, 7], [5, 7]], ids=["batched-weight", "broadcast-weight"]
)
def test_matmul_flops_include_batch_dims(describe_model, b_shape):
    # [2,3,4,5] @ [.., 5,7] -> [2,3,4,7]: 168 outputs, 5 MACs each.
    info = describe_model(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        [float_info("a", [2, 3, 4, 5])],
        [float_info("y", [2, 3, 4, 7])],
        {"b": weights(*b_shape)},
    )

    assert info.flops_by_op == {"MatMul": 2 * 168 * 5}


@pytest.mark.parametrize(("group", "w_shape"), [(1, [4, 3, 3, 3]), (2, [4, 2, 3, 3])])
def test_conv_transpose_flops(describe_model, group, w_shape):
    # Every input element (4 x 5x5) is scattered into out_channels/group x 3x3 outputs.
    out_channels = w_shape[1] * group
    info = describe_model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], group=group)],
        [float_info("x", [1, 4, 5, 5])],
        [float_info("y", [1, out_channels, 11, 11])],
        {"w": weights(*w_shape)},
    )

    assert info.flops_by_op == {"ConvTranspose": 2 * 100 * w_shape[1] * 9}


@pytest.mark.parametrize(
    ("op", "w_shape", "attrs"),
    [("MatMul", [4, 3], {}), ("Gemm", [3, 4], {"transB": 1})],
)
def test_inner_dimension_comes_from_the_weight_when_the_input_shape_is_unknown(
    describe_model, op, w_shape, attrs
):
    # A Reshape to a shape known only at run time: shape inference knows its rank, not its dims.
    info = describe_model(
        [
            helper.make_node("Reshape", ["x", "shape"], ["reshaped"]),
            helper.make_node(op, ["reshaped", "w"], ["y"], **attrs),
        ],
        [float_info("x", [8]), helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [float_info("y", [2, 3])],
        {"w": weights(*w_shape)},
    )

    assert info.flops_by_op == {op: 2 * 2 * 3 * 4}


def test_total_flops_sum_the_ops(describe_model):
    info = describe_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2"], ["y"]),
        ],
        [float_info("x", [3, 4])],
        [float_info("y", [3, 2])],
        {"w1": weights(4, 8), "w2": weights(8, 2)},
    )

    assert info.flops_by_op == {"MatMul": 2 * 3 * 8 * 4, "Gemm": 2 * 3 * 2 * 8}
    assert info.flops == 192 + 96


def test_symbolic_dims_count_as_one_and_are_noted(describe_model):
    info = describe_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [float_info("x", ["batch", 4])],
        [float_info("y", ["batch", 3])],
        {"w": weights(4, 3)},
    )

    assert info.flops_by_op == {"MatMul": 2 * 3 * 4}
    assert info.notes == ["symbolic dimensions counted as 1 in FLOPs"]


def test_static_model_has_no_symbolic_note(describe_model):
    info = describe_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [float_info("x", [2, 4])],
        [float_info("y", [2, 3])],
        {"w": weights(4, 3)},
    )

    assert info.notes == []


def test_demo_model_flops_include_the_classifier_after_a_computed_reshape():
    """The Gemm's input comes from a Reshape to a computed shape, which shape inference leaves
    unknown; its depth is still known from the weight."""
    info = describe(FIXTURE)

    conv1 = 2 * (16 * 32 * 32) * (3 * 3 * 3)
    conv2 = 2 * (32 * 16 * 16) * (16 * 3 * 3)
    assert info.flops_by_op == {"Conv": conv1 + conv2, "Gemm": 2 * 10 * 32}


# -------------------------------------------------------------------- parameters, signature


def test_parameters_and_bytes_count_every_initializer(classifier_model, save_model):
    info = describe(save_model(classifier_model))

    # conv.weight 4x3x3x3, conv.bias 4, fc.weight 10x4, fc.bias 10, all float32.
    assert info.parameters == 108 + 4 + 40 + 10
    assert info.parameter_bytes == 4 * info.parameters


def test_op_histogram_counts_each_op(classifier_model, save_model):
    info = describe(save_model(classifier_model))

    assert info.op_histogram == {
        "Conv": 1,
        "Relu": 1,
        "GlobalAveragePool": 1,
        "Flatten": 1,
        "Gemm": 1,
    }
    assert info.nodes == 5


def test_op_histogram_names_custom_domains(save_model):
    graph = helper.make_graph(
        [
            helper.make_node("Scale", ["x"], ["s"], domain="com.example"),
            helper.make_node("Relu", ["s"], ["y"]),
        ],
        "custom",
        [float_info("x", [2])],
        [float_info("y", [2])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
        ir_version=8,
    )

    info = describe(save_model(model))

    assert info.op_histogram == {"com.example::Scale": 1, "Relu": 1}
    assert info.opsets == {"ai.onnx": 17, "com.example": 1}


def test_inputs_exclude_initializers_listed_as_graph_inputs(classifier_model, save_model):
    # Old exporters (IR < 4) list every weight as a graph input too.
    for tensor in classifier_model.graph.initializer:
        classifier_model.graph.input.append(
            helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
        )

    info = describe(save_model(classifier_model))

    assert [value.name for value in info.inputs] == ["image"]


def test_signature_keeps_symbolic_and_unknown_dims(symbolic_dims_model, save_model):
    info = describe(save_model(symbolic_dims_model))

    shapes = {value.name: (value.dtype, value.shape) for value in info.inputs}
    assert shapes == {
        "x": ("float16", [None, 4]),
        "y": ("double", ["batch", "length"]),
        "z": ("float", ["length", 3]),
        "flags": ("bool", [2]),
        "count": ("int32", [1]),
    }
    assert [value.name for value in info.outputs] == [
        "x_out",
        "y_out",
        "z_out",
        "flags_out",
        "count_out",
    ]


def test_model_facts_of_the_demo_model():
    info = describe(FIXTURE)

    assert info.ir_version == 8
    assert info.opsets == {"ai.onnx": 13}
    assert info.producer == "pytorch 2.13.0"
    assert info.nodes == 19
    assert info.file_bytes == FIXTURE.stat().st_size
    assert info.path == str(FIXTURE)
