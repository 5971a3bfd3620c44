"""Every gradient rule against central finite differences (float64, onnx's reference
evaluator) and against onnxruntime's own semantics (float32); see ``gradcheck``.

Shapes are drawn at random from the seed, so each rule runs on two shape draws.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import run_model
from gradcheck import Case, check_gradients
from onnx import TensorProto, helper, numpy_helper

from onnxslim.distill.autodiff import build_backward

SEEDS = [0, 1]


def node(op: str, inputs: list[str], outputs: list[str] | str = "y", name: str = "", **attrs):
    outputs = [outputs] if isinstance(outputs, str) else outputs
    return helper.make_node(op, inputs, outputs, name=name or None, **attrs)


def normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


def away_from_zero(rng: np.random.Generator, *shape: int, low: float = 0.3) -> np.ndarray:
    values = rng.uniform(low, 2.0, shape)
    return values * rng.choice([-1.0, 1.0], shape)


def unary(op: str, make=normal, opset: int = 17, **attrs):
    def build(dtype, rng):
        n, c = rng.integers(1, 4), rng.integers(2, 6)
        return Case(
            [node(op, ["x"], **attrs)], {"x": make(rng, n, c, 3)}, ["x"], ["y"], opset=opset
        )

    return build


def positive(rng, *shape):
    return rng.uniform(0.5, 2.0, shape)


def binary(op: str, a_shape, b_shape, make_b=normal, declared=None):
    def build(dtype, rng):
        return Case(
            [node(op, ["a", "b"])],
            {"a": normal(rng, *a_shape), "b": make_b(rng, *b_shape)},
            ["a", "b"],
            ["y"],
            declared=declared or {},
        )

    return build


# ------------------------------------------------------------------ elementwise arithmetic

ARITHMETIC = {
    "add": binary("Add", (2, 3, 4), (3, 1)),
    "add_same": binary("Add", (2, 3), (2, 3)),
    "sub_scalar": binary("Sub", (2, 3, 4), (1,)),
    "mul_broadcast_both": binary("Mul", (2, 1, 4), (3, 1)),
    "div": binary("Div", (2, 3, 4), (4,), make_b=away_from_zero),
    "add_symbolic": binary(
        "Add", (2, 3, 4), (3, 1), declared={"a": ["N", 3, None], "b": [None, 1]}
    ),
    "mul_symbolic_broadcast": binary(
        "Mul", (2, 3, 4), (1, 3, 1), declared={"b": [None, "C", None]}
    ),
    "pow_square": lambda d, rng: Case(
        [node("Pow", ["x", "p"])],
        {"x": normal(rng, 2, 3)},
        ["x"],
        ["y"],
        constants={"p": np.array(2.0)},
    ),
    "pow_tensor": lambda d, rng: Case(
        [node("Pow", ["x", "p"])],
        {"x": positive(rng, 2, 3), "p": rng.uniform(0.5, 2.5, (3,))},
        ["x", "p"],
        ["y"],
    ),
    "sqrt": unary("Sqrt", positive),
    "exp": unary("Exp"),
    "log": unary("Log", positive),
    "neg": unary("Neg"),
    "reciprocal": unary("Reciprocal", away_from_zero),
    "abs": unary("Abs", away_from_zero),
    "identity": unary("Identity"),
    "dropout": unary("Dropout"),
    "sum": lambda d, rng: Case(
        [node("Sum", ["a", "b", "c"])],
        {"a": normal(rng, 2, 3), "b": normal(rng, 3), "c": normal(rng, 2, 1)},
        ["a", "b", "c"],
        ["y"],
    ),
    "cast_same_type": lambda d, rng: Case(
        [node("Cast", ["x"], to=helper.np_dtype_to_tensor_dtype(d))],
        {"x": normal(rng, 3, 2)},
        ["x"],
        ["y"],
    ),
    "where": lambda d, rng: Case(
        [node("Where", ["c", "a", "b"])],
        {"c": rng.random((2, 3)) > 0.5, "a": normal(rng, 2, 3), "b": normal(rng, 3)},
        ["a", "b"],
        ["y"],
    ),
}

ACTIVATIONS = {
    "relu": unary("Relu", away_from_zero),
    "leaky_relu": unary("LeakyRelu", away_from_zero, alpha=0.1),
    "sigmoid": unary("Sigmoid"),
    "tanh": unary("Tanh"),
    "erf": unary("Erf"),
    "gelu": unary("Gelu", opset=20),
    "gelu_tanh": unary("Gelu", opset=20, approximate="tanh"),
    "softplus": unary("Softplus"),
    "hard_sigmoid": unary(
        "HardSigmoid", lambda rng, *s: rng.uniform(-4, 4, s), alpha=0.3, beta=0.4
    ),
    "hard_swish": unary("HardSwish", lambda rng, *s: rng.uniform(-4, 4, s)),
    "prelu": lambda d, rng: Case(
        [node("PRelu", ["x", "slope"])],
        {"x": away_from_zero(rng, 2, 3, 4), "slope": normal(rng, 3, 1)},
        ["x", "slope"],
        ["y"],
    ),
    "clip": lambda d, rng: Case(
        [node("Clip", ["x", "low", "high"])],
        {"x": rng.uniform(-2, 2, (3, 5))},
        ["x"],
        ["y"],
        constants={"low": np.array(-0.7), "high": np.array(0.9)},
    ),
    "clip_upper_only": lambda d, rng: Case(
        [node("Clip", ["x", "", "high"])],
        {"x": rng.uniform(-2, 2, (3, 5))},
        ["x"],
        ["y"],
        constants={"high": np.array(0.9)},
    ),
}


def softmax_case(op: str, axis: int):
    def build(dtype, rng):
        shape = (rng.integers(1, 4), rng.integers(2, 5), rng.integers(2, 6))
        return Case([node(op, ["x"], axis=axis)], {"x": normal(rng, *shape)}, ["x"], ["y"])

    return build


def cross_entropy(reduction: str, ignore: int | None = None, rank: int = 2):
    def build(dtype, rng):
        n, classes = rng.integers(2, 5), rng.integers(2, 6)
        extra = (3,) * (rank - 2)
        labels = rng.integers(0, classes, (n, *extra)).astype(np.int64)
        attrs = {"reduction": reduction}
        if ignore is not None:
            labels.flat[0] = ignore
            attrs["ignore_index"] = ignore
        return Case(
            [node("SoftmaxCrossEntropyLoss", ["x", "labels"], ["y", "log_prob"], **attrs)],
            {"x": normal(rng, n, classes, *extra), "labels": labels},
            ["x"],
            ["y"],
        )

    return build


SOFTMAX = {
    "softmax_last": softmax_case("Softmax", -1),
    "softmax_middle": softmax_case("Softmax", 1),
    "log_softmax": softmax_case("LogSoftmax", -1),
    "log_softmax_first": softmax_case("LogSoftmax", 0),
    "cross_entropy_mean": cross_entropy("mean"),
    "cross_entropy_sum_3d": cross_entropy("sum", rank=3),
    "cross_entropy_none": cross_entropy("none"),
    "cross_entropy_ignore": cross_entropy("mean", ignore=-100),
    "log_prob_output": lambda d, rng: Case(
        [node("SoftmaxCrossEntropyLoss", ["x", "labels"], ["y", "log_prob"])],
        {"x": normal(rng, 3, 4), "labels": np.array([0, 3, 1], np.int64)},
        ["x"],
        ["y", "log_prob"],
    ),
}


def matmul(a_shape, b_shape):
    def build(dtype, rng):
        return Case(
            [node("MatMul", ["a", "b"])],
            {"a": normal(rng, *a_shape), "b": normal(rng, *b_shape)},
            ["a", "b"],
            ["y"],
        )

    return build


def gemm(trans_a: int, trans_b: int, c_shape, alpha=1.0, beta=1.0):
    def build(dtype, rng):
        m, k, n = rng.integers(1, 4), rng.integers(2, 5), rng.integers(2, 5)
        a = normal(rng, *((k, m) if trans_a else (m, k)))
        b = normal(rng, *((n, k) if trans_b else (k, n)))
        c = normal(rng, *[n if d == "n" else m if d == "m" else 1 for d in c_shape])
        attrs = dict(transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
        return Case(
            [node("Gemm", ["a", "b", "c"], **attrs)],
            {"a": a, "b": b, "c": c},
            ["a", "b", "c"],
            ["y"],
        )

    return build


LINEAR = {
    "matmul_2d": matmul((3, 4), (4, 2)),
    "matmul_batched_weight": matmul((2, 3, 4), (4, 5)),
    "matmul_batch_broadcast": matmul((2, 1, 3, 4), (3, 4, 2)),
    "matmul_vector_left": matmul((4,), (2, 4, 3)),
    "matmul_vector_right": matmul((2, 3, 4), (4,)),
    "matmul_dot": matmul((4,), (4,)),
    "gemm": gemm(0, 0, ["n"]),
    "gemm_trans_a": gemm(1, 0, ["m", "n"], alpha=0.5),
    "gemm_trans_b": gemm(0, 1, [1, "n"], beta=2.0),
    "gemm_trans_both": gemm(1, 1, ["m", 1], alpha=1.5, beta=0.5),
}


def conv(rank: int = 2, group: int = 1, multiplier: int = 1, bias: bool = True, **attrs):
    def build(dtype, rng):
        n = int(rng.integers(1, 3))
        c_in = group * int(rng.integers(1, 3))
        c_out = (
            group * multiplier * int(rng.integers(1, 3)) if group > 1 else int(rng.integers(1, 4))
        )
        if group > 1 and multiplier > 1:
            c_in = group
        kernel = [int(k) for k in rng.integers(1, 4, rank)]
        sizes = [int(s) for s in rng.integers(5, 9, rank)]
        inputs = {
            "x": normal(rng, n, c_in, *sizes),
            "w": normal(rng, c_out, c_in // group, *kernel),
        }
        names = ["x", "w"]
        if bias:
            inputs["b"] = normal(rng, c_out)
            names.append("b")
        return Case([node("Conv", names, group=group, **attrs)], inputs, names, ["y"])

    return build


def conv_transpose(group: int = 1, **attrs):
    def build(dtype, rng):
        n, c_in = int(rng.integers(1, 3)), group * int(rng.integers(1, 3))
        c_out = int(rng.integers(1, 3))
        inputs = {
            "x": normal(rng, n, c_in, 4, 5),
            "w": normal(rng, c_in, c_out, 3, 2),
            "b": normal(rng, c_out * group),
        }
        return Case(
            [node("ConvTranspose", ["x", "w", "b"], group=group, **attrs)],
            inputs,
            ["x", "w", "b"],
            ["y"],
        )

    return build


CONVOLUTION = {
    "conv2d": conv(),
    "conv2d_strided_padded": conv(strides=[2, 2], pads=[1, 0, 1, 2]),
    "conv2d_dilated": conv(dilations=[2, 1], pads=[2, 1, 2, 1]),
    "conv2d_stride3_uneven": conv(strides=[3, 2], bias=False),
    "conv2d_grouped": conv(group=2, strides=[2, 1], pads=[1, 1, 1, 1]),
    "conv2d_depthwise": conv(group=3, multiplier=2, pads=[1, 1, 1, 1]),
    "conv2d_same_upper": conv(strides=[2, 2], auto_pad="SAME_UPPER"),
    "conv1d": conv(rank=1, strides=[2], pads=[1, 1]),
    "conv3d": lambda d, rng: Case(
        [node("Conv", ["x", "w"], strides=[1, 2, 1])],
        {"x": normal(rng, 1, 2, 3, 4, 3), "w": normal(rng, 2, 2, 2, 2, 2)},
        ["x", "w"],
        ["y"],
    ),
    "conv_transpose": conv_transpose(strides=[2, 2]),
    "conv_transpose_padded": conv_transpose(
        strides=[2, 3], pads=[1, 0, 0, 1], output_padding=[1, 2]
    ),
    "conv_transpose_grouped_dilated": conv_transpose(group=2, dilations=[2, 1]),
    "conv_transpose_output_shape": conv_transpose(strides=[2, 2], output_shape=[9, 10]),
}


def pool(op: str, make=normal, **attrs):
    def build(dtype, rng):
        shape = (
            int(rng.integers(1, 3)),
            int(rng.integers(1, 4)),
            int(rng.integers(5, 8)),
            int(rng.integers(5, 8)),
        )
        return Case([node(op, ["x"], **attrs)], {"x": make(rng, *shape)}, ["x"], ["y"])

    return build


def distinct(rng, *shape):
    """Values with no ties (max pooling's gradient is undefined at ties)."""
    return rng.permutation(np.prod(shape)).reshape(shape) / 7.0 + rng.uniform(0, 0.01, shape)


POOLING = {
    "max_pool": pool("MaxPool", distinct, kernel_shape=[2, 2], strides=[2, 2]),
    "max_pool_overlapping": pool("MaxPool", distinct, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "max_pool_dilated_ceil": pool(
        "MaxPool", distinct, kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 1], ceil_mode=1
    ),
    "average_pool": pool("AveragePool", kernel_shape=[2, 2], strides=[2, 2]),
    "average_pool_padded": pool(
        "AveragePool", kernel_shape=[3, 2], strides=[2, 1], pads=[1, 1, 1, 0]
    ),
    "average_pool_padded_counted": pool(
        "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1
    ),
    "average_pool_ceil": pool("AveragePool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "global_average_pool": pool("GlobalAveragePool"),
    "global_max_pool": pool("GlobalMaxPool", distinct),
}


def layer_norm(axis: int, bias: bool = True):
    def build(dtype, rng):
        shape = (int(rng.integers(1, 3)), int(rng.integers(2, 4)), int(rng.integers(3, 6)))
        normalized = shape[axis:]
        inputs = {"x": normal(rng, *shape), "scale": normal(rng, *normalized)}
        names = ["x", "scale"]
        if bias:
            inputs["bias"] = normal(rng, *normalized)
            names.append("bias")
        stash = helper.np_dtype_to_tensor_dtype(dtype)
        return Case(
            [node("LayerNormalization", names, axis=axis, stash_type=stash)], inputs, names, ["y"]
        )

    return build


def batch_norm(dtype, rng):
    c = int(rng.integers(1, 4))
    inputs = {"x": normal(rng, 2, c, 3, 3), "scale": normal(rng, c), "bias": normal(rng, c)}
    constants = {"mean": normal(rng, c), "var": rng.uniform(0.5, 2, c)}
    nodes = [node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], epsilon=1e-3)]
    return Case(nodes, inputs, ["x", "scale", "bias"], ["y"], constants=constants)


NORMALIZATION = {
    "layer_norm_last": layer_norm(-1),
    "layer_norm_two_axes": layer_norm(1),
    "layer_norm_no_bias": layer_norm(-1, bias=False),
    "batch_norm": batch_norm,
}


def reduce(op: str, axes, keepdims: int, opset: int = 18, make=normal):
    def build(dtype, rng):
        x = make(rng, int(rng.integers(1, 3)), int(rng.integers(2, 4)), int(rng.integers(2, 5)))
        if axes is None:
            return Case([node(op, ["x"], keepdims=keepdims)], {"x": x}, ["x"], ["y"], opset=opset)
        return Case(
            [node(op, ["x", "axes"], keepdims=keepdims)],
            {"x": x},
            ["x"],
            ["y"],
            constants={"axes": np.array(axes, np.int64)},
            opset=opset,
        )

    return build


REDUCTIONS = {
    "reduce_sum": reduce("ReduceSum", [1], 1),
    "reduce_sum_all": reduce("ReduceSum", None, 0),
    "reduce_mean": reduce("ReduceMean", [-1, 0], 0),
    "reduce_mean_attribute_axes": lambda d, rng: Case(
        [node("ReduceMean", ["x"], axes=[1], keepdims=0)],
        {"x": normal(rng, 2, 3, 4)},
        ["x"],
        ["y"],
        opset=17,
    ),
    "reduce_sum_square": reduce("ReduceSumSquare", [2], 1),
    "reduce_l2": reduce("ReduceL2", [1], 0),
    "reduce_max": reduce("ReduceMax", [2], 0, make=distinct),
    "reduce_min": reduce("ReduceMin", [0, 1], 1, make=distinct),
}


def slice_case(starts, ends, axes, steps=None):
    def build(dtype, rng):
        constants = {"starts": np.array(starts, np.int64), "ends": np.array(ends, np.int64)}
        names = ["x", "starts", "ends", "axes"]
        constants["axes"] = np.array(axes, np.int64)
        if steps is not None:
            constants["steps"] = np.array(steps, np.int64)
            names.append("steps")
        x = normal(rng, 3, int(rng.integers(6, 9)), 5)
        return Case([node("Slice", names)], {"x": x}, ["x"], ["y"], constants=constants)

    return build


LAYOUT = {
    "reshape": lambda d, rng: Case(
        [node("Reshape", ["x", "shape"])],
        {"x": normal(rng, 2, 3, 4)},
        ["x"],
        ["y"],
        constants={"shape": np.array([0, -1], np.int64)},
    ),
    "flatten": unary("Flatten", axis=2),
    "squeeze_unsqueeze": lambda d, rng: Case(
        [node("Unsqueeze", ["x", "axes"], "u"), node("Squeeze", ["u", "axes0"])],
        {"x": normal(rng, 2, 1, 3)},
        ["x"],
        ["y"],
        constants={"axes": np.array([0, 3], np.int64), "axes0": np.array([2], np.int64)},
    ),
    "transpose": unary("Transpose", perm=[2, 0, 1]),
    "transpose_default": unary("Transpose"),
    "expand": lambda d, rng: Case(
        [node("Expand", ["x", "shape"])],
        {"x": normal(rng, 3, 1)},
        ["x"],
        ["y"],
        constants={"shape": np.array([2, 3, 4], np.int64)},
    ),
    "concat": lambda d, rng: Case(
        [node("Concat", ["a", "b", "c"], axis=1)],
        {"a": normal(rng, 2, 1, 3), "b": normal(rng, 2, 4, 3), "c": normal(rng, 2, 2, 3)},
        ["a", "c"],
        ["y"],
        declared={"b": ["N", None, 3]},
    ),
    "split_one_output_unused": lambda d, rng: Case(
        [node("Split", ["x", "sizes"], ["y0", "y1", "y2"], axis=1)],
        {"x": normal(rng, 2, 6, 3)},
        ["x"],
        ["y0", "y2"],
        constants={"sizes": np.array([1, 3, 2], np.int64)},
    ),
    "slice": slice_case([1, -3], [3, 100], [0, 1]),
    "slice_strided": slice_case([0, 1], [100, -1], [1, 2], steps=[2, 2]),
    "slice_symbolic": lambda d, rng: Case(
        [node("Slice", ["x", "starts", "ends", "axes"])],
        {"x": normal(rng, 2, 7, 3)},
        ["x"],
        ["y"],
        constants={
            k: np.array(v, np.int64) for k, v in {"starts": [-4], "ends": [-1], "axes": [1]}.items()
        },
        declared={"x": ["N", "S", 3]},
    ),
    "pad": lambda d, rng: Case(
        [node("Pad", ["x", "pads"])],
        {"x": normal(rng, 2, 3, 4)},
        ["x"],
        ["y"],
        constants={"pads": np.array([0, 1, -1, 1, 2, 0], np.int64)},
    ),
}


def gather(axis: int, indices: np.ndarray):
    def build(dtype, rng):
        return Case(
            [node("Gather", ["table", "ids"], axis=axis)],
            {"table": normal(rng, 5, 4, 3), "ids": indices},
            ["table"],
            ["y"],
        )

    return build


INDEXING = {
    "gather_embedding_repeated": gather(0, np.array([[1, 3, 1], [0, 4, 4]], np.int64)),
    "gather_axis1_scalar": gather(1, np.array(2, np.int64)),
    "gather_negative": gather(2, np.array([-1, 0, -1], np.int64)),
    "gather_elements": lambda d, rng: Case(
        [node("GatherElements", ["x", "ids"], axis=1)],
        {"x": normal(rng, 3, 4), "ids": np.array([[0, 0], [3, 1], [2, 2]], np.int64)},
        ["x"],
        ["y"],
    ),
}


def resize(with_sizes: bool = False, **attrs):
    def build(dtype, rng):
        constants = {}
        x = normal(rng, 1, 2, 3, 4)
        if with_sizes:
            constants["sizes"] = np.array([1, 2, 5, 7], np.int64)
            names = ["x", "", "", "sizes"]
        else:
            constants["scales"] = np.array([1, 1, 2, 1.5], np.float32)
            names = ["x", "", "scales"]
        return Case(
            [node("Resize", names, **attrs)], {"x": x}, ["x"], ["y"], constants=constants, opset=18
        )

    return build


RESIZE = {
    "resize_nearest": resize(mode="nearest", coordinate_transformation_mode="asymmetric"),
    "resize_linear": resize(mode="linear"),
    "resize_linear_align_corners_sizes": resize(
        True, mode="linear", coordinate_transformation_mode="align_corners"
    ),
    "resize_cubic": resize(mode="cubic"),
}

ALL = {
    **ARITHMETIC,
    **ACTIVATIONS,
    **SOFTMAX,
    **LINEAR,
    **CONVOLUTION,
    **POOLING,
    **NORMALIZATION,
    **REDUCTIONS,
    **LAYOUT,
    **INDEXING,
    **RESIZE,
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(ALL))
def test_gradient_matches_finite_differences(name, seed):
    errors = check_gradients(ALL[name], seed)
    assert max(errors.values()) <= 1e-4


# ------------------------------------------------------------ straight-through estimator

_INTEGER_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "int4": (-8, 7)}


def _fake_quantized_gradient(x, scale, zero_point, attrs, opset, scale_as_input):
    """The gradient of Σ DQ(Q(x))·R with respect to x from the backward graph, and R."""
    weights = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    params = ["scale"] + (["zero_point"] if zero_point is not None else [])
    nodes = [
        node("QuantizeLinear", ["x", *params], "q", **attrs),
        node(
            "DequantizeLinear",
            ["q", *params],
            "y",
            **{k: v for k, v in attrs.items() if k != "output_dtype"},
        ),
        node("Mul", ["y", "r"], "weighted"),
        node("ReduceSum", ["weighted"], "loss", keepdims=0),
    ]
    constants = {"r": weights, **({"zero_point": zero_point} if zero_point is not None else {})}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))]
    if scale_as_input:
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, list(scale.shape)))
    else:
        constants["scale"] = scale
    initializers = [numpy_helper.from_array(v, k) for k, v in constants.items()]
    graph = helper.make_graph(
        nodes, "fake_quantize", inputs, [helper.make_tensor_value_info("loss", 1, [])], initializers
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    model = onnx.shape_inference.infer_shapes(model)
    backward = build_backward(model.graph, "loss", ["x"], opset=opset)
    outputs = [helper.make_tensor_value_info(backward.gradients["x"], 1, list(x.shape))]
    body = helper.make_graph(
        [*backward.forward, *backward.nodes],
        "grad",
        inputs,
        outputs,
        [*initializers, *backward.initializers],
    )
    grad_model = helper.make_model(body, opset_imports=opsets)
    grad_model.ir_version = model.ir_version
    feeds = {"x": x, **({"scale": scale} if scale_as_input else {})}
    return run_model(grad_model, feeds)[0], weights


@pytest.mark.parametrize(
    ("qtype", "scale", "zero_point", "attrs", "opset", "scale_as_input"),
    [
        ("uint8", np.array(0.01, np.float32), np.array(128, np.uint8), {}, 17, False),
        ("uint8", np.array(0.01, np.float32), np.array(128, np.uint8), {}, 17, True),
        (
            "int8",
            np.array([0.005, 0.01, 0.04], np.float32),
            np.zeros(3, np.int8),
            {"axis": 0},
            17,
            False,
        ),
        (
            "int4",
            np.array([[0.1, 0.2], [0.3, 0.05], [0.2, 0.1]], np.float32),
            None,
            {"axis": 1, "block_size": 2, "output_dtype": TensorProto.INT4},
            21,
            False,
        ),
    ],
    ids=["per tensor", "scale at run time", "per channel", "int4 blocks"],
)
def test_fake_quantization_passes_gradients_straight_through_its_range(
    qtype, scale, zero_point, attrs, opset, scale_as_input
):
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    gradient, weights = _fake_quantized_gradient(x, scale, zero_point, attrs, opset, scale_as_input)
    low, high = _INTEGER_RANGES[qtype]
    zero = np.zeros(()) if zero_point is None else zero_point.astype(np.float64)
    if "block_size" in attrs:
        per_element = np.repeat(scale, attrs["block_size"], axis=1)
    elif scale.ndim:
        per_element, zero = scale[:, None], zero.reshape(-1, 1)
    else:
        per_element = scale
    inside = (x >= (low - zero) * per_element) & (x <= (high - zero) * per_element)
    assert 0 < inside.sum() < inside.size  # both sides of the range are exercised
    np.testing.assert_allclose(gradient, np.where(inside, weights, 0), rtol=1e-6)


def test_round_passes_gradients_only_in_fake_quantization():
    graph = helper.make_graph(
        [node("Round", ["x"], "y", name="rounding"), node("ReduceSum", ["y"], "loss", keepdims=0)],
        "round",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph))
    assert build_backward(model.graph, "loss", ["x"], opset=17).without_gradient == ["x"]
    through = build_backward(model.graph, "loss", ["x"], opset=17, straight_through={"rounding"})
    assert list(through.gradients) == ["x"]
