"""Transformer fusions into the opset-23 standard ops: Attention, RMSNormalization and
RotaryEmbedding.

Exports of BERT, ViT, GPT-2 and a Llama-style decoder (grouped-query attention, RMSNorm,
rotary embedding), made by both exporters (``fixtures/make_transformer_fixtures.py``: two
layers, hidden size 32, random weights), must fuse into the standard ops with outputs equal to
the export's on onnxruntime, with padding in the attention mask. Graphs built from ONNX text
cover the forms the exports do not (interleaved rotation, a one-row mask, constant tables) and
what must not fuse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxslim import optimize
from onnxslim.inputs import input_specs, synthesize_inputs
from onnxslim.testing import apply, assert_same_outputs, op_counts, parse_model

if onnx.defs.onnx_opset_version() < 23:
    pytest.skip("this onnx predates opset 23", allow_module_level=True)

from onnxslim.passes.fusions import FuseAttention, FuseRMSNorm, FuseRotary  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "transformers"
EXPORTS = sorted(FIXTURES.glob("*.onnx"))
# Decoders with a key/value cache concatenate the past to the 4-D heads, so their attention
# fuses on the heads (no 3-D projections to take).
WITHOUT_CACHE = [p for p in EXPORTS if "_kv_" not in p.stem]
FUSED = {
    "bert": {"Attention": 2, "LayerNormalization": 5, "Gelu": 2},
    "vit": {"Attention": 2, "LayerNormalization": 5, "Gelu": 2},
    "gpt2": {"Attention": 2, "LayerNormalization": 5, "Gelu": 2},
    "llama": {"Attention": 2, "RMSNormalization": 5, "RotaryEmbedding": 4},
}


def _padded_feeds(path: Path) -> dict[str, np.ndarray]:
    """Synthesized inputs; the first sequence's last three tokens are padding."""
    feeds = synthesize_inputs(input_specs(onnx.load(path)))
    if "attention_mask" in feeds:
        mask = np.ones_like(feeds["attention_mask"])
        mask[0, -3:] = 0
        feeds["attention_mask"] = mask
    return feeds


@pytest.mark.parametrize("path", EXPORTS, ids=[p.stem for p in EXPORTS])
def test_exports_fuse_into_standard_ops_with_equal_outputs(path):
    model, _ = optimize(path, target_opset=23)
    proto = model.to_proto()

    ops = op_counts(proto)
    expected = FUSED[path.stem.split("_")[0]]
    assert {op: ops[op] for op in expected} == expected
    assert ops["Softmax"] == 0
    onnx.checker.check_model(proto, full_check=True)
    assert_same_outputs(path, proto, _padded_feeds(path), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("path", WITHOUT_CACHE, ids=[p.stem for p in WITHOUT_CACHE])
def test_attention_takes_the_projections_without_head_reshapes(path):
    model, _ = optimize(path, target_opset=23)
    proto = model.to_proto()

    attention = [n for n in proto.graph.node if n.op_type == "Attention"]
    heads = {a.name: onnx.helper.get_attribute_value(a) for a in attention[0].attribute}
    expected_kv = 2 if path.stem.startswith("llama") else 4
    assert (heads["q_num_heads"], heads["kv_num_heads"]) == (4, expected_kv)
    transposes = [n for n in proto.graph.node if n.op_type == "Transpose"]
    assert len(transposes) <= 1  # ViT's patch embedding keeps its own


@pytest.mark.parametrize("path", EXPORTS[:2], ids=[p.stem for p in EXPORTS[:2]])
def test_without_target_opset_nothing_fuses_and_a_note_says_how(path):
    model, report = optimize(path)

    ops = op_counts(model.to_proto())
    assert ops["Attention"] == 0
    notes = [note for record in report.passes for note in record.notes]
    assert any("Attention needs opset 23" in n and "--target-opset 23" in n for n in notes)


# ---------------------------------------------------------------------------- attention

SDPA = """
<ir_version: 10, opset_import: ["" : 23]>
sdpa (float[2,4,5,8] q, float[2,4,5,8] k, float[2,4,5,8] v) => (float[2,4,5,8] y) {{
    kt = Transpose <perm = [0, 1, 3, 2]> (k)
    scores = MatMul (q, kt)
    scale = Constant <value = float {{0.35355339}}> ()
    scaled = Mul (scores, scale)
    p = Softmax <axis = {axis}> (scaled)
    y = MatMul (p, v)
}}
"""


def test_four_dimensional_attention_fuses():
    model = parse_model(SDPA.format(axis=-1))

    result = apply(FuseAttention, model)

    assert result.ops == {"Attention": 1}
    assert_same_outputs(model, result.model)


def test_softmax_over_another_axis_does_not_fuse():
    result = apply(FuseAttention, SDPA.format(axis=2))

    assert result.ops["Attention"] == 0


def test_probabilities_read_elsewhere_do_not_fuse():
    text = SDPA.format(axis=-1).replace(
        "=> (float[2,4,5,8] y)", "=> (float[2,4,5,8] y, float[2,4,5,5] p)"
    )

    result = apply(FuseAttention, text)

    assert result.ops["Attention"] == 0


ONE_ROW_MASK = """
<ir_version: 10, opset_import: ["" : 23]>
masked (float[2,4,5,8] q, float[2,4,5,8] k, float[2,4,5,8] v, float[2,1,1,5] mask)
    => (float[2,4,5,8] y) {
    kt = Transpose <perm = [0, 1, 3, 2]> (k)
    scores = MatMul (q, kt)
    root = Constant <value = float {2.8284271}> ()
    scaled = Div (scores, root)
    biased = Add (scaled, mask)
    p = Softmax <axis = -1> (biased)
    y = MatMul (p, v)
}
"""


def test_a_mask_with_one_row_is_expanded_to_one_row_per_query():
    model = parse_model(ONE_ROW_MASK)
    feeds = synthesize_inputs(input_specs(model))
    feeds["mask"] = np.where(np.arange(5) < 3, 0.0, -1e4).astype(np.float32)[None, None, None]
    feeds["mask"] = np.repeat(feeds["mask"], 2, axis=0)

    result = apply(FuseAttention, model)

    assert result.ops["Attention"] == 1 and result.ops["Expand"] == 1
    assert_same_outputs(model, result.model, feeds)


def test_where_with_a_mild_constant_does_not_mask():
    text = ONE_ROW_MASK.replace("float[2,1,1,5] mask", "bool[2,1,5,5] mask").replace(
        "biased = Add (scaled, mask)",
        "low = Constant <value = float {-1.0}> ()\n    biased = Where (mask, scaled, low)",
    )

    result = apply(FuseAttention, text)

    assert result.ops["Attention"] == 0


GQA = """
<ir_version: 10, opset_import: ["" : 23]>
gqa (float[2,4,5,8] q, float[2,2,5,8] k, float[2,2,5,8] v) => (float[2,4,5,8] y) {
    axis = Constant <value = int64[1] {2}> ()
    spread = Constant <value = int64[5] {2, 2, 2, 5, 8}> ()
    merged = Constant <value = int64[4] {2, 4, 5, 8}> ()
    k1 = Unsqueeze (k, axis)
    k2 = Expand (k1, spread)
    k4 = Reshape (k2, merged)
    v1 = Unsqueeze (v, axis)
    v2 = Expand (v1, spread)
    v4 = Reshape (v2, merged)
    kt = Transpose <perm = [0, 1, 3, 2]> (k4)
    scores = MatMul (q, kt)
    p = Softmax <axis = -1> (scores)
    y = MatMul (p, v4)
}
"""


def test_grouped_query_attention_reads_the_shared_heads():
    model = parse_model(GQA)

    result = apply(FuseAttention, model)

    assert result.ops == {"Attention": 1}
    attention = result.model.graph.node[0]
    assert list(attention.input) == ["q", "k", "v"]
    assert_same_outputs(model, result.model)


# ------------------------------------------------------------------------------- RMSNorm

RMS = """
<ir_version: 10, opset_import: ["" : 23]>
rms (float[2,5,16] x) => (float[2,5,16] y)
    <float[16] weight = {{1.5, 0.5, 2.0, 1.0, 0.25, 3.0, 1.25, 0.75,
                          1.5, 0.5, 2.0, 1.0, 0.25, 3.0, 1.25, 0.75}}> {{
    two = Constant <value = float {{2.0}}> ()
    squared = Pow (x, two)
    axes = Constant <value = int64[1] {{{axis}}}> ()
    mean = ReduceMean <keepdims = 1> (squared, axes)
    epsilon = Constant <value = float {{1e-6}}> ()
    shifted = Add (mean, epsilon)
    root = Sqrt (shifted)
    {divide}
    y = Mul (normalized, weight)
}}
"""
BY_RECIPROCAL = "inverse = Reciprocal (root)\n    normalized = Mul (x, inverse)"
BY_DIVISION = "normalized = Div (x, root)"


@pytest.mark.parametrize("divide", [BY_RECIPROCAL, BY_DIVISION], ids=["reciprocal", "div"])
def test_rms_normalization_fuses(divide):
    model = parse_model(RMS.format(axis=-1, divide=divide))

    result = apply(FuseRMSNorm, model)

    assert result.ops == {"RMSNormalization": 1}
    assert_same_outputs(model, result.model)


def test_rms_over_a_leading_axis_does_not_fuse():
    result = apply(FuseRMSNorm, RMS.format(axis=1, divide=BY_DIVISION))

    assert result.ops["RMSNormalization"] == 0


# -------------------------------------------------------------------------------- rotary


def _rotary(interleaved: bool, tables: tuple[np.ndarray, np.ndarray]) -> onnx.ModelProto:
    """x * cos + rotate(x) * sin on [2, 4, 5, 8] heads, with constant [1, 5, 8] tables."""
    from onnx import TensorProto, helper, numpy_helper

    def constant(name, values):
        return numpy_helper.from_array(np.asarray(values), name)

    nodes = [
        helper.make_node("Unsqueeze", ["cos_table", "one"], ["cos"]),
        helper.make_node("Unsqueeze", ["sin_table", "one"], ["sin"]),
        helper.make_node("Mul", ["x", "cos"], ["straight"]),
    ]
    if interleaved:
        nodes += [
            helper.make_node("Slice", ["x", "zero", "big", "last", "two"], ["even"]),
            helper.make_node("Slice", ["x", "one", "big", "last", "two"], ["odd"]),
            helper.make_node("Neg", ["odd"], ["negated"]),
            helper.make_node("Unsqueeze", ["negated", "last"], ["negated5"]),
            helper.make_node("Unsqueeze", ["even", "last"], ["even5"]),
            helper.make_node("Concat", ["negated5", "even5"], ["pairs"], axis=-1),
            helper.make_node("Reshape", ["pairs", "heads_shape"], ["turned"]),
        ]
    else:
        nodes += [
            helper.make_node("Slice", ["x", "zero", "half", "last"], ["front"]),
            helper.make_node("Slice", ["x", "half", "big", "last"], ["back"]),
            helper.make_node("Neg", ["back"], ["negated"]),
            helper.make_node("Concat", ["negated", "front"], ["turned"], axis=-1),
        ]
    nodes += [
        helper.make_node("Mul", ["turned", "sin"], ["rotated"]),
        helper.make_node("Add", ["straight", "rotated"], ["y"]),
    ]
    cos, sin = tables
    initializers = [
        constant("cos_table", cos),
        constant("sin_table", sin),
        constant("zero", np.array([0], np.int64)),
        constant("one", np.array([1], np.int64)),
        constant("two", np.array([2], np.int64)),
        constant("half", np.array([4], np.int64)),
        constant("big", np.array([2**62], np.int64)),
        constant("last", np.array([-1], np.int64)),
        constant("heads_shape", np.array([2, 4, 5, 8], np.int64)),
    ]
    graph = helper.make_graph(
        nodes,
        "rotary",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 5, 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)


def _tables(interleaved: bool) -> tuple[np.ndarray, np.ndarray]:
    angles = np.random.default_rng(0).standard_normal((1, 5, 4)).astype(np.float32)
    repeat = (
        (lambda a: np.repeat(a, 2, axis=-1))
        if interleaved
        else (lambda a: np.concatenate([a, a], axis=-1))
    )
    return repeat(np.cos(angles)), repeat(np.sin(angles))


@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
def test_rotary_embedding_fuses(interleaved):
    model = _rotary(interleaved, _tables(interleaved))

    result = apply(FuseRotary, model)

    assert result.ops["RotaryEmbedding"] == 1
    rotary = next(n for n in result.model.graph.node if n.op_type == "RotaryEmbedding")
    assert onnx.helper.get_attribute_value(rotary.attribute[0]) == int(interleaved)
    assert_same_outputs(model, result.model)


def test_tables_whose_halves_differ_do_not_fuse():
    cos, sin = _tables(False)
    cos = cos.copy()
    cos[..., -1] += 0.5

    result = apply(FuseRotary, _rotary(False, (cos, sin)))

    assert result.ops["RotaryEmbedding"] == 0
