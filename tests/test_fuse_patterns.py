"""fuse-layernorm and fuse-gelu: decomposed LayerNormalization and Gelu become single ops.

The decomposed graphs follow what torch 2.13's exporter writes (torch.onnx.export of
nn.LayerNorm at opset 13/14, nn.GELU() and nn.GELU(approximate="tanh") below opset 20): the
same node sequences and operand orders, scalars as Constant nodes, weights as initializers.
Variants cover the orders that Hugging Face and TensorFlow exports use.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from conftest import make_model, run_model, tensor_info
from onnx import TensorProto, helper, numpy_helper
from onnxslim.passes.fusions import FuseGelu, FuseLayerNorm

from onnxslim import opsets
from onnxslim.model import load, to_proto
from onnxslim.pipeline import Pass, PassContext, PassManager

FLOAT = TensorProto.FLOAT
RTOL, ATOL = 1e-4, 1e-5
SHAPE = (2, 4, 8)
X = (3 * np.random.default_rng(0).standard_normal(SHAPE)).astype(np.float32)
EPSILON = 1e-5


def _constant(name: str, value, dtype=np.float32) -> onnx.NodeProto:
    """A scalar as torch writes it: a Constant node."""
    tensor = numpy_helper.from_array(np.array(value, dtype), name)
    return helper.make_node("Constant", [], [name], value=tensor)


def _run(
    proto: onnx.ModelProto, fusion: Pass, target_opset: int | None = None
) -> tuple[onnx.ModelProto, list[str]]:
    """The model after ``fusion``, checked with onnx.checker (full check), and its notes."""
    model = load(proto)
    records = PassManager([fusion]).run(model, PassContext(model, target_opset=target_opset))
    result = to_proto(model)
    onnx.checker.check_model(result, full_check=True)
    return result, [note for record in records for note in record.notes]


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def _opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _assert_samerun_model(before, after, feeds=None, rtol=RTOL, atol=ATOL) -> None:
    feeds = {"x": X} if feeds is None else feeds
    for a, b in zip(run_model(before, feeds), run_model(after, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# ------------------------------------------------------------------------------- LayerNorm


def layernorm_model(
    *,
    opset: int = 17,
    axes: tuple[int, ...] = (-1,),
    variance_axes: tuple[int, ...] | None = None,
    square: str = "Pow",
    normalize: str = "Div",
    scale: bool = True,
    scale_shape: tuple[int, ...] | None = None,
    bias: bool = True,
    epsilon_after_sqrt: bool = False,
    hidden: int = 8,
    extra_outputs: dict[str, list[int]] | None = None,
) -> onnx.ModelProto:
    """torch's decomposed nn.LayerNorm over ``x`` [2, 4, hidden] -> ``y``; the keyword
    arguments pick the variants other exporters write and the broken ones. Scale and bias
    have ``scale_shape``, by default [hidden]."""
    shape = [2, 4, hidden]
    scale_shape = scale_shape or (hidden,)
    rng = np.random.default_rng(1)
    weights: dict[str, np.ndarray] = {}

    def reduce(source: str, output: str, over: tuple[int, ...]) -> list[onnx.NodeProto]:
        name = f"/ln/ReduceMean_{output}"
        if opset < 18:
            return [helper.make_node("ReduceMean", [source], [output], name=name, axes=list(over))]
        axes_name = f"{output}_axes"
        return [
            _constant(axes_name, list(over), np.int64),
            helper.make_node("ReduceMean", [source, axes_name], [output], name=name),
        ]

    nodes = [
        *reduce("x", "mean", axes),
        helper.make_node("Sub", ["x", "mean"], ["centered"], name="/ln/Sub"),
    ]
    if square == "Pow":
        nodes += [
            _constant("two", 2.0),
            helper.make_node("Pow", ["centered", "two"], ["squared"], name="/ln/Pow"),
        ]
    else:
        nodes.append(helper.make_node("Mul", ["centered", "centered"], ["squared"], name="/ln/Sq"))
    nodes += [*reduce("squared", "variance", variance_axes or axes), _constant("eps", EPSILON)]
    if epsilon_after_sqrt:
        nodes += [
            helper.make_node("Sqrt", ["variance"], ["root"], name="/ln/Sqrt"),
            helper.make_node("Add", ["root", "eps"], ["std"], name="/ln/Add"),
        ]
    else:
        nodes += [
            helper.make_node("Add", ["variance", "eps"], ["shifted"], name="/ln/Add"),
            helper.make_node("Sqrt", ["shifted"], ["std"], name="/ln/Sqrt"),
        ]
    last = "y" if not scale and not bias else "normalized"
    if normalize == "Div":
        nodes.append(helper.make_node("Div", ["centered", "std"], [last], name="/ln/Div"))
    else:
        nodes += [
            helper.make_node("Reciprocal", ["std"], ["inverse"], name="/ln/Reciprocal"),
            helper.make_node("Mul", ["inverse", "centered"], [last], name="/ln/Mul_inv"),
        ]
    if scale:
        weights["weight"] = rng.uniform(0.5, 1.5, scale_shape).astype(np.float32)
        scaled = "scaled" if bias else "y"
        nodes.append(helper.make_node("Mul", [last, "weight"], [scaled], name="/ln/Mul"))
        last = scaled
    if bias:
        weights["bias"] = rng.standard_normal(scale_shape).astype(np.float32)
        nodes.append(helper.make_node("Add", [last, "bias"], ["y"], name="/ln/Add_1"))
    outputs = [tensor_info("y", FLOAT, shape)]
    outputs += [tensor_info(name, FLOAT, dims) for name, dims in (extra_outputs or {}).items()]
    return make_model(nodes, [tensor_info("x", FLOAT, shape)], outputs, weights, opset=opset)


def test_torch_layernorm_becomes_one_layernormalization():
    proto = layernorm_model()
    result, _ = _run(proto, FuseLayerNorm())
    assert _ops(result) == ["LayerNormalization"]
    node = result.graph.node[0]
    assert list(node.input) == ["x", "weight", "bias"]
    assert node.name == "/ln/LayerNormalization"
    assert _attrs(node)["axis"] == -1
    assert _attrs(node)["epsilon"] == pytest.approx(EPSILON, rel=1e-6)
    _assert_samerun_model(proto, result)


def test_reduce_mean_axes_given_as_input_at_opset_18_are_matched():
    proto = layernorm_model(opset=18)
    result, _ = _run(proto, FuseLayerNorm())
    assert _ops(result) == ["LayerNormalization"]
    _assert_samerun_model(proto, result)


@pytest.mark.parametrize(
    ("square", "normalize"), [("Mul", "Div"), ("Pow", "Reciprocal"), ("Mul", "Reciprocal")]
)
def test_square_by_mul_and_reciprocal_variants_are_matched(square, normalize):
    proto = layernorm_model(square=square, normalize=normalize)
    result, _ = _run(proto, FuseLayerNorm())
    assert _ops(result) == ["LayerNormalization"]
    _assert_samerun_model(proto, result)


@pytest.mark.parametrize("axes", [(-2, -1), (1, 2)])
def test_two_trailing_axes_normalize_from_axis_minus_two(axes):
    proto = layernorm_model(axes=axes, scale_shape=(4, 8))
    result, _ = _run(proto, FuseLayerNorm())
    assert _ops(result) == ["LayerNormalization"]
    assert _attrs(result.graph.node[0])["axis"] == -2
    _assert_samerun_model(proto, result)


def test_scale_with_leading_ones_is_reshaped_to_the_normalized_shape():
    proto = layernorm_model(scale_shape=(1, 1, 8))
    result, _ = _run(proto, FuseLayerNorm())
    assert _ops(result) == ["LayerNormalization"]
    scale = next(t for t in result.graph.initializer if t.name == "weight")
    assert list(scale.dims) == [8]
    _assert_samerun_model(proto, result)


def test_layernorm_without_scale_or_bias_gets_a_ones_scale():
    proto = layernorm_model(scale=False, bias=False)
    result, _ = _run(proto, FuseLayerNorm())
    assert _ops(result) == ["LayerNormalization"]
    (scale,) = result.graph.initializer
    np.testing.assert_array_equal(numpy_helper.to_array(scale), np.ones(8, np.float32))
    _assert_samerun_model(proto, result)


def test_a_ones_scale_larger_than_the_nodes_it_replaces_is_not_added():
    proto = layernorm_model(scale=False, bias=False, hidden=4096)
    result, notes = _run(proto, FuseLayerNorm())
    assert "LayerNormalization" not in _ops(result)
    assert any("16384-byte ones scale" in note for note in notes)


def test_a_scale_of_another_shape_stays_a_separate_mul():
    proto = layernorm_model(scale_shape=(4, 1), bias=False)  # per row, not per feature
    result, _ = _run(proto, FuseLayerNorm())
    assert _ops(result) == ["LayerNormalization", "Mul"]
    _assert_samerun_model(proto, result)


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"epsilon_after_sqrt": True}, id="epsilon-added-after-sqrt"),
        pytest.param({"axes": (1,)}, id="mean-over-a-middle-axis"),
        pytest.param({"variance_axes": (-2, -1)}, id="variance-over-other-axes"),
        pytest.param({"extra_outputs": {"centered": [2, 4, 8]}}, id="centered-is-an-output"),
        pytest.param({"extra_outputs": {"variance": [2, 4, 1]}}, id="variance-is-an-output"),
    ],
)
def test_broken_or_shared_patterns_are_left_alone(broken):
    proto = layernorm_model(**broken)
    result, _ = _run(proto, FuseLayerNorm())
    assert _ops(result) == _ops(proto)


def test_an_intermediate_read_by_another_node_keeps_the_pattern():
    proto = layernorm_model()
    proto.graph.node.append(helper.make_node("Neg", ["std"], ["side"]))
    proto.graph.output.append(tensor_info("side", FLOAT, [2, 4, 1]))
    result, _ = _run(proto, FuseLayerNorm())
    assert "LayerNormalization" not in _ops(result)


def test_below_opset_17_the_graph_is_untouched_and_a_note_names_the_fix():
    proto = layernorm_model(opset=14)
    result, notes = _run(proto, FuseLayerNorm())
    assert _ops(result) == _ops(proto)
    assert _opset(result) == 14
    assert len(notes) == 1
    assert "opset 17" in notes[0] and "--target-opset 17" in notes[0]


def test_the_opset_note_is_given_once_per_pipeline_run():
    model = load(layernorm_model(opset=14))
    ctx = PassContext(model)
    fusion = FuseLayerNorm()
    for _ in range(3):  # as rounds of a fixed point would
        assert fusion.run(model.graph, ctx) is False
    assert len(ctx.notes) == 1
    next_run = PassContext(model)
    fusion.run(model.graph, next_run)
    assert len(next_run.notes) == 1


@pytest.mark.parametrize("where", ["option", "context"])
def test_target_opset_raises_the_opset_and_then_fuses(where):
    proto = layernorm_model(opset=14)
    if where == "option":
        result, notes = _run(proto, FuseLayerNorm(target_opset=18))
    else:
        result, notes = _run(proto, FuseLayerNorm(), target_opset=18)
    assert _ops(result) == ["LayerNormalization"]
    assert _opset(result) == 18
    assert result.ir_version >= onnx.helper.find_min_ir_version_for(list(result.opset_import))
    assert notes == ["raised the opset from 14 to 18 to fuse LayerNormalization"]
    _assert_samerun_model(proto, result)


def test_a_failed_opset_conversion_leaves_the_model_untouched():
    proto = layernorm_model(opset=14)
    result, notes = _run(proto, FuseLayerNorm(target_opset=1000))
    assert _ops(result) == _ops(proto)
    assert _opset(result) == 14
    assert len(notes) == 1 and "version_converter" in notes[0]


def test_raising_the_opset_keeps_external_weights_on_disk(tmp_path):
    proto = layernorm_model(opset=14, hidden=512)  # 2 KB weights: stored externally
    path = tmp_path / "ln.onnx"
    onnx.save(proto, path, save_as_external_data=True, location="ln.bin", size_threshold=1024)
    model = load(path)
    opsets.convert(model, 17)
    weights = [t for t in model.graph.tensors().values() if t.name in ("weight", "bias")]
    assert [type(t._values).__name__ for t in weights] == ["ExternalValues"] * 2
    assert model.opset == 17
    result = to_proto(model)
    onnx.checker.check_model(result, full_check=True)
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 4, 512)).astype(np.float32)}
    _assert_samerun_model(onnx.load(path), result, feeds)


# ------------------------------------------------------------------------------------ Gelu

SQRT2 = math.sqrt(2.0)


def gelu_model(
    nodes: list[onnx.NodeProto], *, opset: int = 20, extra_outputs=()
) -> onnx.ModelProto:
    outputs = [tensor_info(name, FLOAT, list(SHAPE)) for name in ("y", *extra_outputs)]
    return make_model(nodes, [tensor_info("x", FLOAT, list(SHAPE))], outputs, opset=opset)


def torch_erf_gelu(root_two: float = SQRT2, one: float = 1.0) -> list[onnx.NodeProto]:
    """nn.GELU() as torch exports it below opset 20."""
    return [
        _constant("root_two", root_two),
        helper.make_node("Div", ["x", "root_two"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        _constant("one", one),
        helper.make_node("Add", ["erf", "one"], ["shifted"]),
        helper.make_node("Mul", ["x", "shifted"], ["product"]),
        _constant("half", 0.5),
        helper.make_node("Mul", ["product", "half"], ["y"]),
    ]


def half_x_first_erf_gelu() -> list[onnx.NodeProto]:
    """x * 0.5 first, times (1 + erf(x * 1/sqrt(2))): Hugging Face's and tf2onnx's order."""
    return [
        _constant("half", 0.5),
        helper.make_node("Mul", ["x", "half"], ["half_x"]),
        _constant("inverse_root_two", 1 / SQRT2),
        helper.make_node("Mul", ["inverse_root_two", "x"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        _constant("one", 1.0),
        helper.make_node("Add", ["one", "erf"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "half_x"], ["y"]),
    ]


def half_then_x_erf_gelu() -> list[onnx.NodeProto]:
    """((1 + erf) * 0.5) * x."""
    nodes = torch_erf_gelu()[:5]
    return nodes + [
        _constant("half", 0.5),
        helper.make_node("Mul", ["half", "shifted"], ["halved"]),
        helper.make_node("Mul", ["halved", "x"], ["y"]),
    ]


def torch_tanh_gelu(cube: str = "Mul", dtype=np.float32) -> list[onnx.NodeProto]:
    """nn.GELU(approximate="tanh") as torch exports it below opset 20 (``cube="Pow"``: as
    Hugging Face's NewGELU writes x^3)."""
    if cube == "Mul":
        cubing = [
            helper.make_node("Mul", ["x", "x"], ["square"]),
            helper.make_node("Mul", ["x", "square"], ["cube"]),
        ]
    else:
        cubing = [_constant("three", 3.0, dtype), helper.make_node("Pow", ["x", "three"], ["cube"])]
    return [
        *cubing,
        _constant("cubic", 0.044715, dtype),
        helper.make_node("Mul", ["cubic", "cube"], ["cubic_term"]),
        helper.make_node("Add", ["x", "cubic_term"], ["inner"]),
        _constant("root_two_over_pi", math.sqrt(2 / math.pi), dtype),
        helper.make_node("Mul", ["root_two_over_pi", "inner"], ["scaled"]),
        helper.make_node("Tanh", ["scaled"], ["tanh"]),
        _constant("one", 1.0, dtype),
        helper.make_node("Add", ["one", "tanh"], ["shifted"]),
        helper.make_node("Mul", ["x", "shifted"], ["product"]),
        _constant("half", 0.5, dtype),
        helper.make_node("Mul", ["half", "product"], ["y"]),
    ]


@pytest.mark.parametrize(
    "nodes",
    [
        pytest.param(torch_erf_gelu(), id="torch"),
        pytest.param(half_x_first_erf_gelu(), id="half-x-first"),
        pytest.param(half_then_x_erf_gelu(), id="half-then-x"),
    ],
)
def test_erf_gelu_becomes_exact_gelu(nodes):
    proto = gelu_model(nodes)
    result, _ = _run(proto, FuseGelu())
    assert _ops(result) == ["Gelu"]
    assert list(result.graph.node[0].input) == ["x"]
    assert _attrs(result.graph.node[0])["approximate"] == b"none"
    _assert_samerun_model(proto, result)


@pytest.mark.parametrize("cube", ["Mul", "Pow"])
def test_tanh_gelu_becomes_tanh_approximate_gelu(cube):
    proto = gelu_model(torch_tanh_gelu(cube))
    result, _ = _run(proto, FuseGelu())
    assert _ops(result) == ["Gelu"]
    assert _attrs(result.graph.node[0])["approximate"] == b"tanh"
    _assert_samerun_model(proto, result)


def test_float16_constants_match_within_their_own_precision():
    nodes = torch_tanh_gelu("Pow", np.float16)  # 0.044715 is 0.04471 in float16
    inputs = [tensor_info("x", TensorProto.FLOAT16, list(SHAPE))]
    proto = make_model(
        nodes, inputs, [tensor_info("y", TensorProto.FLOAT16, list(SHAPE))], opset=20
    )
    result, _ = _run(proto, FuseGelu())
    assert _ops(result) == ["Gelu"]
    feeds = {"x": X.astype(np.float16)}
    _assert_samerun_model(proto, result, feeds, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "proto",
    [
        pytest.param(gelu_model(torch_erf_gelu(root_two=1.5)), id="divides-by-1.5"),
        pytest.param(gelu_model(torch_erf_gelu(one=2.0)), id="adds-2"),
        pytest.param(
            gelu_model([*torch_erf_gelu()[:5], helper.make_node("Mul", ["x", "shifted"], ["y"])]),
            id="no-half",
        ),
        pytest.param(gelu_model(torch_erf_gelu(), extra_outputs=["erf"]), id="erf-is-an-output"),
        pytest.param(gelu_model(torch_tanh_gelu(), extra_outputs=["cube"]), id="cube-is-an-output"),
    ],
)
def test_other_formulas_and_shared_intermediates_are_left_alone(proto):
    result, _ = _run(proto, FuseGelu())
    assert "Gelu" not in _ops(result)


def test_below_opset_20_gelu_is_left_with_a_note_and_target_opset_fuses_it():
    proto = gelu_model(torch_erf_gelu(), opset=17)
    result, notes = _run(proto, FuseGelu())
    assert _ops(result) == _ops(proto)
    assert len(notes) == 1 and "--target-opset 20" in notes[0]
    result, _ = _run(proto, FuseGelu(target_opset=20))
    assert _ops(result) == ["Gelu"]
    assert _opset(result) == 20
    _assert_samerun_model(proto, result)


def test_gelu_inside_an_if_branch_is_fused():
    then_branch = helper.make_graph(
        torch_erf_gelu(), "then", [], [tensor_info("y", FLOAT, list(SHAPE))]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"])], "else", [], [tensor_info("r", FLOAT, list(SHAPE))]
    )
    proto = make_model(
        [helper.make_node("If", ["c"], ["out"], then_branch=then_branch, else_branch=else_branch)],
        [tensor_info("c", TensorProto.BOOL, []), tensor_info("x", FLOAT, list(SHAPE))],
        [tensor_info("out", FLOAT, list(SHAPE))],
        opset=20,
    )
    result, _ = _run(proto, FuseGelu())
    branches = {a.name: a.g for a in result.graph.node[0].attribute}
    assert [n.op_type for n in branches["then_branch"].node] == ["Gelu"]
    for condition in (True, False):
        _assert_samerun_model(proto, result, {"c": np.array(condition), "x": X})
