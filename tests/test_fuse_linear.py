"""fuse-batchnorm and fuse-affine: linear ops absorb what follows or precedes them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, run_model, tensor_info
from onnx import TensorProto, helper
from onnxslim.passes.fusions import FuseAffine, FuseBatchNorm
from onnxslim.passes.infer_shapes import InferShapes

from onnxslim.model import load, save, to_proto
from onnxslim.pipeline import Pass, PassManager

FLOAT = TensorProto.FLOAT
RTOL, ATOL = 1e-4, 1e-5


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _normal(shape, seed: int = 0) -> np.ndarray:
    return _rng(seed).standard_normal(shape).astype(np.float32)


def _batchnorm_params(prefix: str, channels: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Non-trivial statistics: scale and shift around 1 and 0, mean off zero, variance 0.5-2."""
    rng = _rng(seed)
    return {
        f"{prefix}.scale": rng.uniform(0.5, 1.5, channels).astype(np.float32),
        f"{prefix}.shift": rng.standard_normal(channels).astype(np.float32),
        f"{prefix}.mean": rng.standard_normal(channels).astype(np.float32),
        f"{prefix}.var": rng.uniform(0.5, 2.0, channels).astype(np.float32),
    }


def _batchnorm(prefix: str, source: str, output: str, **attrs) -> onnx.NodeProto:
    names = [f"{prefix}.{p}" for p in ("scale", "shift", "mean", "var")]
    return helper.make_node("BatchNormalization", [source, *names], [output], **attrs)


def _optimized(proto: onnx.ModelProto, *passes: Pass) -> onnx.ModelProto:
    model = load(proto)
    PassManager([InferShapes(), *passes]).run(model)
    result = to_proto(model)
    onnx.checker.check_model(result, full_check=True)
    return result


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def _assert_close(before: onnx.ModelProto, after: onnx.ModelProto, feeds) -> None:
    for a, b in zip(run_model(before, feeds), run_model(after, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)


def _image(channels: int = 3, size: int = 6) -> dict[str, np.ndarray]:
    return {"x": _normal((2, channels, size, size), seed=7)}


def _conv_model(
    follower: list[onnx.NodeProto],
    weights: dict[str, np.ndarray],
    *,
    conv_inputs=("x", "w", "b"),
    outputs=("y",),
    opset: int = 17,
    op: str = "Conv",
    out_channels: int = 4,
    **conv_attrs,
) -> onnx.ModelProto:
    """x [2,3,6,6] -> Conv (3x3, pads 1) named ``conv`` writing ``c`` -> ``follower`` -> y."""
    conv = helper.make_node(op, list(conv_inputs), ["c"], name="conv", **conv_attrs)
    return make_model(
        [conv, *follower],
        [tensor_info("x", FLOAT, [2, 3, 6, 6])],
        [tensor_info(name, FLOAT, [None] * 4) for name in outputs],
        weights,
        opset=opset,
    )


def _conv_weights(out_channels: int = 4, in_channels: int = 3) -> dict[str, np.ndarray]:
    return {
        "w": _normal((out_channels, in_channels, 3, 3), seed=2),
        "b": _normal(out_channels, seed=3),
    }


# -------------------------------------------------------------------------- fuse-batchnorm


def test_batchnorm_after_conv_is_folded_into_weights_and_bias():
    proto = _conv_model(
        [_batchnorm("bn", "c", "y", epsilon=1e-3)],
        {**_conv_weights(), **_batchnorm_params("bn", 4)},
        pads=[1, 1, 1, 1],
    )
    result = _optimized(proto, FuseBatchNorm())
    assert _ops(result) == ["Conv"]
    assert [o.name for o in result.graph.output] == ["y"]
    assert len(result.graph.initializer) == 2
    _assert_close(proto, result, _image())


def test_batchnorm_gives_a_conv_without_bias_one():
    weights = {"w": _conv_weights()["w"], **_batchnorm_params("bn", 4)}
    proto = _conv_model([_batchnorm("bn", "c", "y")], weights, conv_inputs=("x", "w"))
    result = _optimized(proto, FuseBatchNorm())
    assert _ops(result) == ["Conv"]
    assert len(result.graph.node[0].input) == 3
    _assert_close(proto, result, _image())


def test_batchnorm_after_grouped_conv_transpose_scales_its_output_channels():
    # ConvTranspose weights are [C_in, C_out / group, k, k]: 4 inputs, 2 groups, 6 outputs.
    weights = {
        "w": _normal((4, 3, 3, 3), seed=2),
        "b": _normal(6, seed=3),
        **_batchnorm_params("bn", 6),
    }
    proto = make_model(
        [
            helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], group=2, strides=[2, 2]),
            _batchnorm("bn", "c", "y"),
        ],
        [tensor_info("x", FLOAT, [2, 4, 5, 5])],
        [tensor_info("y", FLOAT, [None] * 4)],
        weights,
    )
    result = _optimized(proto, FuseBatchNorm())
    assert _ops(result) == ["ConvTranspose"]
    _assert_close(proto, result, {"x": _normal((2, 4, 5, 5), seed=5)})


@pytest.mark.parametrize("trans_b", [0, 1])
def test_batchnorm_after_gemm_scales_weight_columns_and_bias(trans_b):
    weight = _normal((5, 4) if trans_b else (4, 5), seed=2)
    proto = make_model(
        [
            helper.make_node(
                "Gemm", ["x", "w", "b"], ["c"], alpha=0.5, beta=2.0, transB=trans_b, name="fc"
            ),
            _batchnorm("bn", "c", "y"),
        ],
        [tensor_info("x", FLOAT, ["N", 4])],
        [tensor_info("y", FLOAT, ["N", 5])],
        {"w": weight, "b": _normal(5, seed=3), **_batchnorm_params("bn", 5)},
    )
    result = _optimized(proto, FuseBatchNorm())
    assert _ops(result) == ["Gemm"]
    _assert_close(proto, result, {"x": _normal((3, 4), seed=4)})


def test_batchnorm_is_not_folded_when_the_conv_output_has_another_reader():
    proto = _conv_model(
        [_batchnorm("bn", "c", "n"), helper.make_node("Add", ["n", "c"], ["y"])],
        {**_conv_weights(), **_batchnorm_params("bn", 4)},
    )
    assert _ops(_optimized(proto, FuseBatchNorm())) == ["Conv", "BatchNormalization", "Add"]


def test_batchnorm_is_not_folded_when_the_conv_output_is_a_graph_output():
    proto = _conv_model(
        [_batchnorm("bn", "c", "y")],
        {**_conv_weights(), **_batchnorm_params("bn", 4)},
        outputs=("c", "y"),
    )
    assert _ops(_optimized(proto, FuseBatchNorm())) == ["Conv", "BatchNormalization"]


def test_batchnorm_in_training_mode_is_left_alone():
    proto = _conv_model(
        [
            helper.make_node(
                "BatchNormalization",
                ["c", "bn.scale", "bn.shift", "bn.mean", "bn.var"],
                ["y", "running_mean", "running_var"],
                training_mode=1,
            )
        ],
        {**_conv_weights(), **_batchnorm_params("bn", 4)},
    )
    assert _ops(_optimized(proto, FuseBatchNorm())) == ["Conv", "BatchNormalization"]


def test_batchnorm_is_not_folded_when_that_would_copy_a_shared_weight(tmp_path):
    """Two Convs read one weight; folding one BatchNorm would store a second weight, larger
    than the statistics it frees: the file must not grow."""
    weights = {"w": _normal((4, 3, 5, 5), seed=2), **_batchnorm_params("bn", 4)}
    proto = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            _batchnorm("bn", "c", "y"),
            helper.make_node("Conv", ["x", "w"], ["z"]),
        ],
        [tensor_info("x", FLOAT, [1, 3, 6, 6])],
        [tensor_info("y", FLOAT, [None] * 4), tensor_info("z", FLOAT, [None] * 4)],
        weights,
    )
    model = load(proto)
    PassManager([FuseBatchNorm()]).run(model)
    assert [n.op for n in model.graph.nodes] == ["Conv", "BatchNormalization", "Conv"]


def test_batchnorm_inside_an_if_branch_is_folded():
    branch_nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        _batchnorm("bn", "c", "t"),
    ]
    then_branch = helper.make_graph(branch_nodes, "then", [], [tensor_info("t", FLOAT, [None] * 4)])
    else_branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["e"])], "else", [], [tensor_info("e", FLOAT, [None] * 4)]
    )
    proto = make_model(
        [helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        [tensor_info("x", FLOAT, [1, 3, 6, 6]), tensor_info("flag", TensorProto.BOOL, [])],
        [tensor_info("y", FLOAT, [None] * 4)],
        {**_conv_weights(out_channels=3), **_batchnorm_params("bn", 3)},
    )
    result = _optimized(proto, FuseBatchNorm())
    branch = next(a.g for a in result.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node] == ["Conv"]
    feeds = {"x": _normal((1, 3, 6, 6), seed=4), "flag": np.array(True)}
    _assert_close(proto, result, feeds)


# ----------------------------------------------------------------------------- fuse-affine


@pytest.mark.parametrize("shape", [(4, 1, 1), (1, 4, 1, 1), (), (1,)])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_per_channel_constant_after_conv_is_absorbed(op, shape):
    constant = _rng(5).uniform(0.5, 2.0, shape).astype(np.float32)
    proto = _conv_model(
        [helper.make_node(op, ["c", "k"], ["y"])],
        {**_conv_weights(), "k": constant},
        pads=[1, 1, 1, 1],
    )
    result = _optimized(proto, FuseAffine())
    assert _ops(result) == ["Conv"]
    _assert_close(proto, result, _image())


def test_constant_minus_conv_is_absorbed_as_a_negated_conv():
    proto = _conv_model(
        [helper.make_node("Sub", ["k", "c"], ["y"])],
        {**_conv_weights(), "k": _normal((4, 1, 1), seed=5)},
    )
    result = _optimized(proto, FuseAffine())
    assert _ops(result) == ["Conv"]
    _assert_close(proto, result, _image())


def test_constant_divided_by_conv_is_left_alone():
    proto = _conv_model(
        [helper.make_node("Div", ["k", "c"], ["y"])],
        {**_conv_weights(), "k": _normal((4, 1, 1), seed=5)},
    )
    assert _ops(_optimized(proto, FuseAffine())) == ["Conv", "Div"]


def test_constant_that_broadcasts_along_width_is_not_absorbed():
    # [4] lines up with the last axis (width 4 after a 3x3 conv without pads), not channels.
    proto = _conv_model(
        [helper.make_node("Add", ["c", "k"], ["y"])], {**_conv_weights(), "k": _normal(4)}
    )
    result = _optimized(proto, FuseAffine())
    assert _ops(result) == ["Conv", "Add"]
    _assert_close(proto, result, _image())


def test_constant_that_would_grow_the_output_is_not_absorbed():
    proto = make_model(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"]),
            helper.make_node("Add", ["c", "k"], ["y"]),
        ],
        [tensor_info("x", FLOAT, [2, 3, 6, 6])],
        [tensor_info("y", FLOAT, [None] * 5)],
        {**_conv_weights(), "k": _normal((3, 1, 4, 1, 1))},
    )
    assert _ops(_optimized(proto, FuseAffine())) == ["Conv", "Add"]


def test_add_of_a_computed_tensor_is_not_absorbed():
    proto = make_model(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"]),
            helper.make_node("Add", ["c", "k"], ["y"]),
        ],
        [tensor_info("x", FLOAT, [2, 3, 6, 6]), tensor_info("k", FLOAT, [4, 1, 1])],
        [tensor_info("y", FLOAT, [None] * 4)],
        _conv_weights(),
    )
    assert _ops(_optimized(proto, FuseAffine())) == ["Conv", "Add"]


def test_mul_is_not_absorbed_when_the_conv_output_has_another_reader():
    proto = _conv_model(
        [helper.make_node("Mul", ["c", "k"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])],
        {**_conv_weights(), "k": _normal((4, 1, 1))},
    )
    assert _ops(_optimized(proto, FuseAffine())) == ["Conv", "Mul", "Add"]


@pytest.mark.parametrize(("op", "shape"), [("Add", (5,)), ("Mul", (1, 5)), ("Sub", ())])
def test_per_column_constant_after_gemm_is_absorbed(op, shape):
    proto = make_model(
        [
            helper.make_node("Gemm", ["x", "w", "b"], ["c"], beta=0.5, transB=1),
            helper.make_node(op, ["c", "k"], ["y"]),
        ],
        [tensor_info("x", FLOAT, ["N", 4])],
        [tensor_info("y", FLOAT, ["N", 5])],
        {"w": _normal((5, 4)), "b": _normal((1, 5), seed=1), "k": _normal(shape, seed=2)},
    )
    result = _optimized(proto, FuseAffine())
    assert _ops(result) == ["Gemm"]
    _assert_close(proto, result, {"x": _normal((3, 4), seed=3)})


def test_batchnorm_mul_and_add_after_one_conv_all_fold():
    proto = _conv_model(
        [
            _batchnorm("bn", "c", "n"),
            helper.make_node("Mul", ["n", "scale"], ["m"]),
            helper.make_node("Add", ["shift", "m"], ["y"]),
        ],
        {
            **_conv_weights(),
            **_batchnorm_params("bn", 4),
            "scale": _normal((4, 1, 1), seed=8),
            "shift": np.float32(0.25).reshape(()),
        },
    )
    result = _optimized(proto, FuseBatchNorm(), FuseAffine())
    assert _ops(result) == ["Conv"]
    _assert_close(proto, result, _image())


def _matmul_add(left_shape, bias_shape, weight_shape=(4, 5)) -> onnx.ModelProto:
    return make_model(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("MatMul", ["r", "w"], ["m"], name="proj"),
            helper.make_node("Add", ["m", "b"], ["y"]),
        ],
        [tensor_info("x", FLOAT, left_shape)],
        [tensor_info("y", FLOAT, [None] * len(left_shape))],
        {"w": _normal(weight_shape), "b": _normal(bias_shape, seed=1)},
    )


@pytest.mark.parametrize("bias_shape", [(5,), (1, 5), ()])
def test_matmul_of_a_matrix_plus_bias_becomes_gemm(bias_shape):
    proto = _matmul_add(["N", 4], bias_shape)
    result = _optimized(proto, FuseAffine())
    assert _ops(result) == ["Relu", "Gemm"]
    assert result.graph.node[1].name == "proj"
    _assert_close(proto, result, {"x": _normal((3, 4), seed=2)})


def test_matmul_of_a_batch_of_matrices_stays_matmul():
    proto = _matmul_add(["B", "S", 4], (5,))
    assert _ops(_optimized(proto, FuseAffine())) == ["Relu", "MatMul", "Add"]


def test_matmul_plus_a_bias_per_row_stays_matmul():
    proto = _matmul_add([3, 4], (3, 1))
    assert _ops(_optimized(proto, FuseAffine())) == ["Relu", "MatMul", "Add"]


def test_matmul_to_gemm_can_be_turned_off():
    proto = _matmul_add(["N", 4], (5,))
    result = _optimized(proto, FuseAffine(matmul_to_gemm=False))
    assert _ops(result) == ["Relu", "MatMul", "Add"]


def _pad_then(
    taker: onnx.NodeProto,
    pads: list[int],
    value: float | None = None,
    extra: dict[str, np.ndarray] | None = None,
    axes: list[int] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    initializers = {"pads": np.array(pads, np.int64), **(extra or {})}
    pad_inputs = ["x", "pads"]
    if value is not None or axes is not None:
        pad_inputs.append("value" if value is not None else "")
        if value is not None:
            initializers["value"] = np.array(value, np.float32)
    if axes is not None:
        pad_inputs.append("axes")
        initializers["axes"] = np.array(axes, np.int64)
    return make_model(
        [helper.make_node("Pad", pad_inputs, ["p"]), taker],
        [tensor_info("x", FLOAT, [2, 3, 6, 6])],
        [tensor_info("y", FLOAT, [None] * 4)],
        initializers,
        opset=opset,
    )


SPATIAL_PADS = [0, 0, 1, 2, 0, 0, 2, 1]


def test_zero_pad_before_conv_goes_into_its_pads():
    conv = helper.make_node("Conv", ["p", "w", "b"], ["y"], pads=[1, 0, 0, 1])
    proto = _pad_then(conv, SPATIAL_PADS, value=0.0, extra=_conv_weights())
    result = _optimized(proto, FuseAffine())
    assert _ops(result) == ["Conv"]
    assert list(result.graph.node[0].attribute[0].ints) == [2, 2, 2, 2]
    _assert_close(proto, result, _image())


def test_pad_given_by_axes_goes_into_conv_pads():
    conv = helper.make_node("Conv", ["p", "w"], ["y"])
    proto = _pad_then(conv, [1, 2, 0, 1], axes=[-1, 2], extra={"w": _conv_weights()["w"]}, opset=18)
    result = _optimized(proto, FuseAffine())
    assert _ops(result) == ["Conv"]
    _assert_close(proto, result, _image())


@pytest.mark.parametrize(
    ("pads", "value"),
    [
        (SPATIAL_PADS, 1.0),  # not zero
        ([0, 1, 1, 1, 0, 0, 1, 1], 0.0),  # pads channels
        ([0, 0, -1, 0, 0, 0, 1, 1], 0.0),  # crops
    ],
)
def test_pad_that_conv_pads_cannot_express_stays(pads, value):
    conv = helper.make_node("Conv", ["p", "w"], ["y"])
    proto = _pad_then(
        conv, pads, value=value, extra={"w": _normal((4, 3 + pads[1] + pads[5], 3, 3))}
    )
    assert _ops(_optimized(proto, FuseAffine())) == ["Pad", "Conv"]


def test_reflect_pad_before_conv_stays():
    proto = make_model(
        [
            helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
            helper.make_node("Conv", ["p", "w"], ["y"]),
        ],
        [tensor_info("x", FLOAT, [2, 3, 6, 6])],
        [tensor_info("y", FLOAT, [None] * 4)],
        {"pads": np.array(SPATIAL_PADS, np.int64), "w": _conv_weights()["w"]},
    )
    assert _ops(_optimized(proto, FuseAffine())) == ["Pad", "Conv"]


def test_zero_pad_before_average_pool_becomes_counted_padding():
    pool = helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3])
    proto = _pad_then(pool, SPATIAL_PADS)
    result = _optimized(proto, FuseAffine())
    assert _ops(result) == ["AveragePool"]
    attributes = {a.name: helper.get_attribute_value(a) for a in result.graph.node[0].attribute}
    assert attributes["count_include_pad"] == 1
    _assert_close(proto, result, _image())


def test_zero_pad_before_average_pool_that_excludes_its_own_padding_stays():
    pool = helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    proto = _pad_then(pool, SPATIAL_PADS)
    assert _ops(_optimized(proto, FuseAffine())) == ["Pad", "AveragePool"]


def test_pad_at_least_as_wide_as_the_pool_kernel_stays():
    pool = helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[2, 2])
    proto = _pad_then(pool, SPATIAL_PADS)
    assert _ops(_optimized(proto, FuseAffine())) == ["Pad", "AveragePool"]


def test_minus_infinity_pad_before_max_pool_goes_into_its_pads():
    pool = helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3])
    proto = _pad_then(pool, SPATIAL_PADS, value=-np.inf)
    result = _optimized(proto, FuseAffine())
    assert _ops(result) == ["MaxPool"]
    _assert_close(proto, result, _image())


def test_zero_pad_before_max_pool_stays():
    # Negative inputs make the zeros the maximum: MaxPool's own padding would not.
    pool = helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3])
    proto = _pad_then(pool, SPATIAL_PADS, value=0.0)
    assert _ops(_optimized(proto, FuseAffine())) == ["Pad", "MaxPool"]


def test_fusions_never_make_the_file_larger(tmp_path):
    proto = _conv_model(
        [_batchnorm("bn", "c", "n"), helper.make_node("Add", ["n", "k"], ["y"])],
        {**_conv_weights(), **_batchnorm_params("bn", 4), "k": _normal((4, 1, 1))},
        conv_inputs=("x", "w"),
    )
    before = save(load(proto), tmp_path / "before.onnx").stat().st_size
    model = load(proto)
    PassManager([FuseBatchNorm(), FuseAffine()]).run(model)
    after = save(model, tmp_path / "after.onnx").stat().st_size
    assert [n.op for n in model.graph.nodes] == ["Conv"]
    assert after < before
