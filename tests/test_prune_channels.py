"""prune-channels: removing exactly the channels that are zero and inert leaves outputs equal.

Each graph below zeroes half the channels of every prunable group in all their producers
(weights, biases, BatchNormalization scale and shift), so those channels carry exact zeros
that no later layer can tell from absent ones. Pruning at ratio 0.5 must pick exactly them
and rewrite every consumer, concat offset, reshape target and split size consistently: any
mistake shows as different outputs or a model that does not load.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, run_model, tensor_info
from onnx import TensorProto, helper
from onnxslim.passes.prune.channels import keep_counts

from onnxslim.api import optimize
from onnxslim.errors import OnnxSlimError, PipelineSpecError
from onnxslim.summary import describe

FLOAT = TensorProto.FLOAT
RTOL, ATOL = 1e-4, 1e-5
DEAD = [1, 2, 5, 6]  # the zeroed channels of every 8-channel group


def _normal(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class _Weights(dict):
    """Initializers by name, with channels zeroed along an axis."""

    def add(self, name: str, shape, dead=None, axis: int = 0, seed: int | None = None):
        values = _normal(shape, seed if seed is not None else len(self))
        if dead is not None:
            np.moveaxis(values, axis, 0)[dead] = 0
        self[name] = values
        return name


def _conv(ws: _Weights, name: str, source: str, shape, dead=None, **attrs) -> onnx.NodeProto:
    weight = ws.add(f"{name}.w", shape, dead)
    bias = ws.add(f"{name}.b", shape[:1], dead)
    return helper.make_node("Conv", [source, weight, bias], [name], name=name, **attrs)


def _head(ws: _Weights, source: str, channels: int, classes: int = 4) -> list[onnx.NodeProto]:
    """GlobalAveragePool -> Flatten -> Gemm to the graph output ``y``."""
    ws.add("fc.w", (classes, channels))
    ws.add("fc.b", (classes,))
    return [
        helper.make_node("GlobalAveragePool", [source], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]


def _image_model(nodes, ws: _Weights, classes: int = 4) -> onnx.ModelProto:
    return make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", 3, 8, 8])],
        [tensor_info("y", FLOAT, ["N", classes])],
        dict(ws),
    )


def residual_block() -> onnx.ModelProto:
    """Conv -> Relu, Conv -> BatchNormalization, residual Add, per-channel Mul, 1x1 Conv,
    MaxPool, Resize, head. Groups: {a, b} (the residual couples them) and {c}."""
    ws = _Weights()
    scale = ws.add("bn.scale", (8,), DEAD)
    shift = ws.add("bn.shift", (8,), DEAD)
    ws["bn.mean"] = _normal(8, 50)
    ws["bn.var"] = np.random.default_rng(51).uniform(0.5, 2, 8).astype(np.float32)
    ws.add("k", (1, 8, 1, 1))
    ws["scales"] = np.array([1, 1, 2, 2], np.float32)
    nodes = [
        _conv(ws, "a", "x", (8, 3, 3, 3), DEAD, pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["ra"]),
        _conv(ws, "b", "ra", (8, 8, 3, 3), DEAD, pads=[1] * 4),
        helper.make_node("BatchNormalization", ["b", scale, shift, "bn.mean", "bn.var"], ["bn"]),
        helper.make_node("Add", ["ra", "bn"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["rs"]),
        helper.make_node("Mul", ["rs", "k"], ["scaled"]),
        _conv(ws, "c", "scaled", (8, 8, 1, 1), DEAD),
        helper.make_node("Relu", ["c"], ["rc"]),
        helper.make_node("MaxPool", ["rc"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["pool", "", "scales"], ["up"], mode="nearest"),
        *_head(ws, "up", 8),
    ]
    return _image_model(nodes, ws)


def inception_block() -> onnx.ModelProto:
    """Two branches concatenated, a Conv over the concat, a Split and a Slice of it, and a
    second Concat of three pieces. Groups: {p, r} (Add joins them), {q}, {v}."""
    ws = _Weights()
    ws["split"] = np.array([8, 8], np.int64)
    ws["starts"], ws["ends"], ws["axes"] = (np.array([v], np.int64) for v in (8, 16, 1))
    nodes = [
        _conv(ws, "p", "x", (8, 3, 1, 1), DEAD),
        helper.make_node("Relu", ["p"], ["rp"]),
        _conv(ws, "q", "x", (8, 3, 3, 3), DEAD, pads=[1] * 4),
        helper.make_node("Relu", ["q"], ["rq"]),
        helper.make_node("Concat", ["rp", "rq"], ["cat"], axis=1),
        _conv(ws, "r", "cat", (8, 16, 1, 1), DEAD),
        helper.make_node("Relu", ["r"], ["rr"]),
        helper.make_node("Split", ["cat", "split"], ["s0", "s1"], axis=1),
        helper.make_node("Add", ["rr", "s0"], ["t"]),
        helper.make_node("Slice", ["cat", "starts", "ends", "axes"], ["sl"]),
        helper.make_node("Concat", ["t", "sl", "s1"], ["wide"], axis=1),
        _conv(ws, "v", "wide", (8, 24, 3, 3), DEAD, pads=[1] * 4),
        *_head(ws, "v", 8),
    ]
    return _image_model(nodes, ws)


def depthwise_separable_block() -> onnx.ModelProto:
    """Pointwise Conv -> Clip -> depthwise Conv with multiplier 2 -> pointwise -> depthwise.
    Groups: {a} (with the first depthwise, whose filters come in pairs) and {e}."""
    ws = _Weights()
    pairs = [2 * c + j for c in DEAD for j in (0, 1)]
    ws["lo"], ws["hi"] = np.array(0, np.float32), np.array(6, np.float32)
    nodes = [
        _conv(ws, "a", "x", (8, 3, 1, 1), DEAD),
        helper.make_node("Clip", ["a", "lo", "hi"], ["ra"]),
        _conv(ws, "d", "ra", (16, 1, 3, 3), pairs, group=8, pads=[1] * 4),
        helper.make_node("Relu", ["d"], ["rd"]),
        _conv(ws, "e", "rd", (8, 16, 1, 1), DEAD),
        _conv(ws, "h", "e", (8, 1, 3, 3), DEAD, group=8, pads=[1] * 4),
        *_head(ws, "h", 8),
    ]
    return _image_model(nodes, ws)


def flatten_head(op: str) -> onnx.ModelProto:
    """Conv -> MaxPool -> Flatten (or Reshape to [-1, 128]) -> Gemm -> Relu -> Gemm: each
    channel is a block of 16 features. Groups: {a} and the 16 hidden units {h}."""
    ws = _Weights()
    features = [c * 16 + i for c in DEAD for i in range(16)]
    ws.add("h.w", (128, 16), list(range(0, 16, 2)), axis=1)
    ws["h.w"][features] = 0
    ws.add("h.b", (16,), list(range(0, 16, 2)))
    ws.add("out.w", (4, 16))
    ws.add("out.b", (4,))
    ws["target"] = np.array([-1, 128], np.int64)
    flatten = (
        helper.make_node("Flatten", ["pool"], ["flat"])
        if op == "Flatten"
        else helper.make_node("Reshape", ["pool", "target"], ["flat"])
    )
    nodes = [
        _conv(ws, "a", "x", (8, 3, 3, 3), DEAD, pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("MaxPool", ["ra"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        flatten,
        helper.make_node("Gemm", ["flat", "h.w", "h.b"], ["h"], name="h"),
        helper.make_node("Relu", ["h"], ["rh"]),
        helper.make_node("Gemm", ["rh", "out.w", "out.b"], ["y"], name="out", transB=1),
    ]
    return _image_model(nodes, ws)


def transformer_ffn() -> onnx.ModelProto:
    """LayerNorm -> MatMul -> Add -> Gelu (as Div, Erf, Add, Mul, Mul) -> MatMul -> Add ->
    residual Add. The 32 intermediate units form the only prunable group."""
    ws = _Weights()
    dead = list(range(0, 32, 2))
    ws.add("w1", (16, 32), dead, axis=1)
    ws.add("b1", (32,), dead)
    ws.add("w2", (32, 16))
    ws.add("b2", (16,))
    ws["gamma"], ws["beta"] = _normal(16, 60), _normal(16, 61)
    ws["root2"], ws["one"], ws["half"] = (np.array(v, np.float32) for v in (2**0.5, 1, 0.5))
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("MatMul", ["ln", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Div", ["hb", "root2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["hb", "e1"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["o"], name="fc2"),
        helper.make_node("Add", ["o", "b2"], ["ob"]),
        helper.make_node("Add", ["ob", "x"], ["y"]),
    ]
    return make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", 5, 16])],
        [tensor_info("y", FLOAT, ["N", 5, 16])],
        dict(ws),
    )


def self_attention(computed_targets: bool, fused: bool = False) -> onnx.ModelProto:
    """Four heads of width 4: Q, K, V projections (or one fused projection Split in three,
    as GPT-2 has), Reshape to heads (target computed from Shape as exporters write it, or
    constant), Transpose, scores, Softmax, context, merge Reshape, output projection,
    residual. Heads 1 and 2 are zero in Q, K and V, so their scores are uniform and their
    context exactly zero. The only group: the heads."""
    ws = _Weights()
    dead = list(range(4, 12))
    nodes = []
    if fused:
        ws.add("qkv.w", (16, 48), [c + 16 * part for part in range(3) for c in dead], axis=1)
        ws.add("qkv.b", (48,), [c + 16 * part for part in range(3) for c in dead])
        ws["thirds"] = np.array([16, 16, 16], np.int64)
        nodes += [
            helper.make_node("MatMul", ["x", "qkv.w"], ["qkv.mm"], name="qkv"),
            helper.make_node("Add", ["qkv.mm", "qkv.b"], ["qkv.biased"]),
            helper.make_node(
                "Split", ["qkv.biased", "thirds"], ["q.biased", "k.biased", "v.biased"], axis=2
            ),
        ]
    for name in () if fused else ("q", "k", "v"):
        ws.add(f"{name}.w", (16, 16), dead, axis=1)
        ws.add(f"{name}.b", (16,), dead)
        nodes += [
            helper.make_node("MatMul", ["x", f"{name}.w"], [f"{name}.mm"], name=name),
            helper.make_node("Add", [f"{name}.mm", f"{name}.b"], [f"{name}.biased"]),
        ]
    ws.add("o.w", (16, 16))
    ws.add("o.b", (16,))
    ws["scale"] = np.array(0.5, np.float32)
    ws["zero"], ws["one"] = np.array(0, np.int64), np.array(1, np.int64)
    ws["axes0"], ws["heads_tail"], ws["merged_tail"] = (
        np.array(v, np.int64) for v in ([0], [-1, 4], [-1])
    )
    ws["split_target"], ws["merge_target"] = (
        np.array(v, np.int64) for v in ([0, 0, 4, 4], [0, 0, 16])
    )
    split, merge = "split_target", "merge_target"
    if computed_targets:
        nodes += [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["batch"]),
            helper.make_node("Gather", ["shape", "one"], ["sequence"]),
            helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
            helper.make_node("Unsqueeze", ["sequence", "axes0"], ["sequence1"]),
            helper.make_node("Concat", ["batch1", "sequence1", "heads_tail"], ["split"], axis=0),
            helper.make_node("Concat", ["batch1", "sequence1", "merged_tail"], ["merge"], axis=0),
        ]
        split, merge = "split", "merge"
    for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [
            helper.make_node("Reshape", [f"{name}.biased", split], [f"{name}.heads"]),
            helper.make_node("Transpose", [f"{name}.heads"], [f"{name}.t"], perm=perm),
        ]
    nodes += [
        helper.make_node("MatMul", ["q.t", "k.t"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v.t"], ["context"]),
        helper.make_node("Transpose", ["context"], ["context.t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context.t", merge], ["merged"]),
        helper.make_node("MatMul", ["merged", "o.w"], ["o.mm"], name="o"),
        helper.make_node("Add", ["o.mm", "o.b"], ["o.biased"]),
        helper.make_node("Add", ["o.biased", "x"], ["y"]),
    ]
    return make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", "S", 16])],
        [tensor_info("y", FLOAT, ["N", "S", 16])],
        dict(ws),
    )


def shape_ops() -> onnx.ModelProto:
    """Pad, AveragePool, Resize to constant sizes, Mul by ConstantOfShape and Expand fillers,
    then GlobalAveragePool, Expand, Transpose, ReduceMean, Unsqueeze, Squeeze into a Gemm.
    Every shape that states 8 channels must follow the pruning. Groups: {a} and {b}."""
    ws = _Weights()
    ws["pads"] = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    ws["sizes"] = np.array([2, 8, 16, 16], np.int64)
    ws["fill_shape"] = ws["channel_shape"] = np.array([1, 8, 1, 1], np.int64)
    ws["three"] = np.full((1, 1, 1, 1), 3, np.float32)
    ws["wide"] = np.array([2, 8, 4, 4], np.int64)
    ws["axis1"] = np.array([1], np.int64)
    two = onnx.numpy_helper.from_array(np.array([2], np.float32))
    nodes = [
        _conv(ws, "a", "x", (8, 3, 3, 3), DEAD, pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Pad", ["ra", "pads"], ["padded"]),
        helper.make_node("AveragePool", ["padded"], ["pool"], kernel_shape=[3, 3]),
        helper.make_node("Resize", ["pool", "", "", "sizes"], ["up"], mode="nearest"),
        helper.make_node("ConstantOfShape", ["fill_shape"], ["twos"], value=two),
        helper.make_node("Mul", ["up", "twos"], ["doubled"]),
        helper.make_node("Expand", ["three", "channel_shape"], ["threes"]),
        helper.make_node("Mul", ["doubled", "threes"], ["tripled"]),
        _conv(ws, "b", "tripled", (8, 8, 1, 1), DEAD),
        helper.make_node("GlobalAveragePool", ["b"], ["gap"]),
        helper.make_node("Expand", ["gap", "wide"], ["tiles"]),
        helper.make_node("Transpose", ["tiles"], ["last"], perm=[0, 2, 3, 1]),
        helper.make_node("ReduceMean", ["last"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "axis1"], ["lifted"]),
        helper.make_node("Squeeze", ["lifted", "axis1"], ["flat"]),
    ]
    ws.add("fc.w", (4, 8))
    ws.add("fc.b", (4,))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1))
    return make_model(
        nodes, [tensor_info("x", FLOAT, [2, 3, 8, 8])], [tensor_info("y", FLOAT, [2, 4])], dict(ws)
    )


def ffn_reading_its_width() -> onnx.ModelProto:
    """GPT-2's MLP as exported: Reshape to rows with a target whose width is read from the
    tensor itself (Shape -> Slice[-1:] -> Concat), Gemm, Reshape back from x's Shape. The
    width follows the pruning without an edit."""
    ws = _Weights()
    dead = list(range(0, 32, 2))
    ws.add("w1", (16, 32), dead, axis=1)
    ws.add("b1", (32,), dead)
    ws.add("w2", (32, 16))
    ws.add("b2", (16,))
    ws["last"], ws["end"], ws["rows"] = (np.array([v], np.int64) for v in (-1, 2**62, -1))
    ws["zero"], ws["one"], ws["width"] = (np.array(v, np.int64) for v in (0, 1, [16]))
    ws["axes0"] = np.array([0], np.int64)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc"),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["act"]),
        helper.make_node("Shape", ["act"], ["act.shape"]),
        helper.make_node("Slice", ["act.shape", "last", "end"], ["act.width"]),
        helper.make_node("Concat", ["rows", "act.width"], ["flat.target"], axis=0),
        helper.make_node("Reshape", ["act", "flat.target"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["o"], name="proj"),
        helper.make_node("Shape", ["x"], ["x.shape"]),
        helper.make_node("Gather", ["x.shape", "zero"], ["batch"]),
        helper.make_node("Gather", ["x.shape", "one"], ["sequence"]),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        helper.make_node("Unsqueeze", ["sequence", "axes0"], ["sequence1"]),
        helper.make_node("Concat", ["batch1", "sequence1", "width"], ["back"], axis=0),
        helper.make_node("Reshape", ["o", "back"], ["y"]),
    ]
    return make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", "S", 16])],
        [tensor_info("y", FLOAT, ["N", "S", 16])],
        dict(ws),
    )


def _feeds(proto: onnx.ModelProto, seed: int = 7) -> dict[str, np.ndarray]:
    value = proto.graph.input[0]
    shape = [d.dim_value or 2 + i for i, d in enumerate(value.type.tensor_type.shape.dim)]
    return {value.name: _normal(shape, seed)}


def _prune(proto: onnx.ModelProto, spec: str = "prune-channels(ratio=0.5)"):
    """The pruned model (checked strictly) and the pass's tables by title."""
    model, report = optimize(proto, passes=spec, prepare=False)  # the pass alone
    pruned = model.to_proto()
    onnx.checker.check_model(pruned, full_check=True)
    onnx.shape_inference.infer_shapes(pruned, strict_mode=True)
    tables = {t.title: t for record in report.passes for t in record.tables}
    return pruned, tables


def _signature(proto: onnx.ModelProto):
    return [(v.name, str(v.type)) for v in (*proto.graph.input, *proto.graph.output)]


def _channel_changes(tables) -> list[str]:
    return sorted(row[2] for row in tables["channel groups"].rows if row[4] == "pruned")


GRAPHS = {
    "residual": (residual_block, ["8 -> 4", "8 -> 4"]),
    "inception": (inception_block, ["8 -> 4", "8 -> 4", "8 -> 4"]),
    "depthwise": (depthwise_separable_block, ["8 -> 4", "8 -> 4"]),
    "flatten-gemm": (lambda: flatten_head("Flatten"), ["16 -> 8", "8 -> 4"]),
    "reshape-gemm": (lambda: flatten_head("Reshape"), ["16 -> 8", "8 -> 4"]),
    "transformer-ffn": (transformer_ffn, ["32 -> 16"]),
    "shape-ops": (shape_ops, ["8 -> 4", "8 -> 4"]),
    "attention-heads": (lambda: self_attention(computed_targets=False), ["4 -> 2 (x4)"]),
    "attention-computed-shapes": (lambda: self_attention(computed_targets=True), ["4 -> 2 (x4)"]),
    "attention-fused-qkv": (lambda: self_attention(True, fused=True), ["4 -> 2 (x4)"]),
    "ffn-reading-its-width": (ffn_reading_its_width, ["32 -> 16"]),
}


@pytest.mark.parametrize("name", GRAPHS)
def test_pruning_the_inert_channels_keeps_outputs_equal(name: str):
    build, expected = GRAPHS[name]
    proto = build()
    pruned, tables = _prune(proto)
    assert _channel_changes(tables) == expected
    assert _signature(pruned) == _signature(proto)
    feeds = _feeds(proto)
    for before, after in zip(run_model(proto, feeds), run_model(pruned, feeds), strict=True):
        np.testing.assert_allclose(after, before, rtol=RTOL, atol=ATOL)
    rows = {row[0]: row for row in tables["pruned model"].rows}
    assert rows["parameters"][2] < rows["parameters"][1]
    assert rows["FLOPs"][2] < rows["FLOPs"][1]


@pytest.mark.parametrize("batch", [1, 3])
def test_pruned_models_run_with_the_original_input_shapes(batch: int):
    proto = residual_block()
    pruned, _ = _prune(proto)
    feeds = {"x": _normal((batch, 3, 8, 8), 3)}
    (out,) = run_model(pruned, feeds)
    assert out.shape == (batch, 4)


def test_intermediate_shapes_in_value_info_follow_the_pruning():
    proto = onnx.shape_inference.infer_shapes(residual_block())
    pruned, _ = _prune(proto)
    shapes = {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in pruned.graph.value_info
    }
    assert shapes["c"] == ["N", 4, 8, 8]
    assert shapes["up"][1:] == [4, 8, 8]


def test_a_surgery_that_breaks_the_graph_leaves_the_model_untouched(monkeypatch):
    """The pass works on a copy and keeps it only when onnx's checker and strict shape
    inference accept it (here: a Gemm whose weight no longer has its input's type)."""
    from onnxslim.passes.prune import channels as prune_channels

    real = prune_channels.remove_channels

    def botched(graph, analysis, keep):
        real(graph, analysis, keep)
        gemm = next(n for n in graph.nodes if n.name == "fc")
        gemm.inputs[1].values = gemm.inputs[1].values.astype(np.float64)

    monkeypatch.setattr(prune_channels, "remove_channels", botched)
    proto = residual_block()
    model, report = optimize(proto, passes="prune-channels(ratio=0.5)", prepare=False)
    assert not report.passes[-1].changed
    assert any("model left untouched" in note for note in report.passes[-1].notes)
    feeds = _feeds(proto)
    assert np.array_equal(run_model(model.to_proto(), feeds)[0], run_model(proto, feeds)[0])


def test_pruning_live_channels_changes_outputs():
    """The equality above is no accident: removing channels that carry signal shows."""
    proto = residual_block()
    pruned, tables = _prune(proto, "prune-channels(ratio=0.75)")
    assert _channel_changes(tables) == ["8 -> 2", "8 -> 2"]
    feeds = _feeds(proto)
    before, after = run_model(proto, feeds)[0], run_model(pruned, feeds)[0]
    assert np.abs(after - before).max() > 1e-2


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn-scale", "activation"])
def test_every_criterion_scores_the_inert_channels_lowest(criterion: str, tmp_path: Path):
    proto = residual_block()
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=_normal((4, 3, 8, 8), 11))
    spec = f"prune-channels(ratio=0.5, criterion={criterion}, calib={calib})"
    if criterion != "activation":
        spec = f"prune-channels(ratio=0.5, criterion={criterion})"
    pruned, tables = _prune(proto, spec)
    assert _channel_changes(tables) == ["8 -> 4", "8 -> 4"]
    feeds = _feeds(proto)
    np.testing.assert_allclose(
        run_model(pruned, feeds)[0], run_model(proto, feeds)[0], rtol=RTOL, atol=ATOL
    )


def test_ratio_zero_is_an_exact_identity():
    proto = inception_block()
    model, report = optimize(proto, passes="prune-channels(ratio=0)")
    pruned = model.to_proto()
    assert not report.passes[-1].changed
    assert sorted((t.name, list(t.dims)) for t in pruned.graph.initializer) == sorted(
        (t.name, list(t.dims)) for t in proto.graph.initializer
    )
    feeds = _feeds(proto)
    assert np.array_equal(run_model(pruned, feeds)[0], run_model(proto, feeds)[0])


def test_groups_it_cannot_follow_are_reported_and_left_whole():
    """A Reshape that mixes channels with rows blocks its group; the rest is pruned."""
    ws = _Weights()
    ws["rows"] = np.array([0, 16, 32], np.int64)  # each channel's 8 rows cut in two
    ws.add("fc.w", (4, 32))
    ws.add("fc.b", (4,))
    nodes = [
        _conv(ws, "a", "x", (8, 3, 3, 3), DEAD, pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["ra"]),
        _conv(ws, "b", "ra", (8, 8, 1, 1)),
        helper.make_node("Reshape", ["b", "rows"], ["mixed"], name="mix"),
        helper.make_node("ReduceMean", ["mixed"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("Gemm", ["mean", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    proto = _image_model(nodes, ws)
    pruned, tables = _prune(proto)
    status = {row[0]: row for row in tables["channel groups"].rows}
    assert status["a"][2:5:2] == ["8 -> 4", "pruned"]
    assert status["b"][2] == "8 -> 8"
    assert status["b"][4] == "unprunable: Reshape 'mix' splits or mixes the channel axis"
    assert status["fc"][4] == "unprunable: reaches graph output 'y'"
    feeds = _feeds(proto)
    np.testing.assert_allclose(
        run_model(pruned, feeds)[0], run_model(proto, feeds)[0], rtol=RTOL, atol=ATOL
    )


def test_a_channel_count_used_in_arithmetic_blocks_its_group():
    ws = _Weights()
    ws["one"] = np.array(1, np.int64)
    nodes = [
        _conv(ws, "a", "x", (8, 3, 3, 3), DEAD, pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Shape", ["ra"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "one"], ["count"]),
        helper.make_node("Cast", ["count"], ["scale"], to=FLOAT),
        helper.make_node("Mul", ["ra", "scale"], ["scaled"]),
        *_head(ws, "scaled", 8),
    ]
    proto = _image_model(nodes, ws)
    pruned, tables = _prune(proto)
    status = {row[0]: row for row in tables["channel groups"].rows}
    assert status["a"][2] == "8 -> 8"
    assert status["a"][4] == "unprunable: the channel count is read through Shape 'shape'"
    assert _signature(pruned) == _signature(proto)


def test_symbolic_image_sizes_block_only_the_flatten_they_hide():
    """With H and W symbolic, the block of features per channel before a Gemm is unknown
    (the analysis sees a stand-in size): that group stays whole, the rest is pruned."""
    proto = flatten_head("Flatten")
    for dim, name in zip(proto.graph.input[0].type.tensor_type.shape.dim[2:], "HW", strict=True):
        dim.dim_param = name
    pruned, tables = _prune(proto)
    status = {row[0]: row[2:] for row in tables["channel groups"].rows}
    assert status["a"][0] == "8 -> 8" and status["a"][2].startswith("unprunable: Gemm 'h'")
    assert status["h"][0] == "16 -> 8"
    feeds = {"x": _normal((2, 3, 8, 8), 5)}
    np.testing.assert_allclose(
        run_model(pruned, feeds)[0], run_model(proto, feeds)[0], rtol=RTOL, atol=ATOL
    )


def test_round_to_and_min_channels_bound_what_each_group_keeps():
    proto = residual_block()
    _, tables = _prune(proto, "prune-channels(ratio=0.5, round_to=3)")
    assert _channel_changes(tables) == ["8 -> 6", "8 -> 6"]
    _, tables = _prune(proto, "prune-channels(ratio=0.9, min_channels=3)")
    assert _channel_changes(tables) == ["8 -> 3", "8 -> 3"]


def test_excluded_layers_keep_their_groups_whole():
    proto = residual_block()
    pruned, tables = _prune(proto, "prune-channels(ratio=0.5, exclude=b*|nothing)")
    status = {row[0]: row[2:] for row in tables["channel groups"].rows}
    assert status["a"] == ["8 -> 8", status["a"][1], "unprunable: excluded"]
    assert status["c"][0] == "8 -> 4"


def test_global_ranking_takes_channels_where_they_matter_least():
    weak = np.array([0.01] * 4 + [1.0] * 4)
    even = np.ones(8)
    assert keep_counts({0: weak, 1: even}, 0.25, global_ranking=True) == {0: 4, 1: 8}
    assert keep_counts({0: weak, 1: even}, 0.25, global_ranking=False) == {0: 6, 1: 6}


def test_global_ranking_prunes_a_graph_to_valid_equal_outputs():
    proto = inception_block()
    pruned, tables = _prune(proto, "prune-channels(ratio=0.5, global_ranking=true)")
    assert sum(int(c.split(" -> ")[1]) for c in _channel_changes(tables)) == 12
    onnx.checker.check_model(pruned, full_check=True)
    run_model(pruned, _feeds(proto))


def test_the_digits_cnn_keeps_its_interface_when_pruned():
    path = Path(__file__).resolve().parents[1] / "fixtures" / "digits_cnn.onnx"
    proto = onnx.load(path)
    pruned, tables = _prune(proto)
    assert _signature(pruned) == _signature(proto)
    assert len(_channel_changes(tables)) == 4
    flops = {row[0]: row[1:3] for row in tables["pruned model"].rows}["FLOPs"]
    assert flops == [describe(proto).flops, describe(pruned).flops]
    assert 0.2 < flops[1] / flops[0] < 0.3  # input and output channels of each layer halve
    (logits,) = run_model(pruned, {"image": _normal((5, 1, 8, 8), 2)})
    assert logits.shape == (5, 10)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("prune-channels(ratio=1.5)", "ratio must be in [0, 1)"),
        ("prune-channels(round_to=0)", "at least 1"),
        ("prune-channels(criterion=activation)", "calib=PATH.npz"),
        ("prune-channels(criterion=taylor)", "is not one of"),
    ],
)
def test_bad_options_raise_one_clear_error(spec: str, message: str):
    with pytest.raises(OnnxSlimError, match=re.escape(message)):
        optimize(residual_block(), passes=spec)


def test_calibration_data_that_does_not_fit_is_a_clear_error(tmp_path: Path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, wrong=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(OnnxSlimError, match="calib.npz"):
        optimize(residual_block(), passes=f"prune-channels(criterion=activation, calib={calib})")
    assert issubclass(PipelineSpecError, OnnxSlimError)


def test_prune_command_writes_a_pruned_model_and_reports_the_groups(tmp_path: Path):
    from typer.testing import CliRunner

    from onnxslim.cli import app

    source, target = tmp_path / "block.onnx", tmp_path / "out.onnx"
    onnx.save(residual_block(), source)
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(app, ["prune", str(source), "--ratio", "0.5", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "channel groups" in result.output
    pruned = onnx.load(target)
    assert _signature(pruned) == _signature(onnx.load(source))
    feeds = _feeds(pruned)
    np.testing.assert_allclose(
        run_model(pruned, feeds)[0], run_model(residual_block(), feeds)[0], rtol=RTOL, atol=ATOL
    )
    bad = runner.invoke(app, ["prune", str(source), "--criterion", "activation", "-o", str(target)])
    assert bad.exit_code == 2


def test_a_reshape_target_shared_with_a_group_that_keeps_its_channels_is_copied():
    """Two projections split into 2 heads of 4 and merged back through the same computed
    targets (CSE shares them across layers); only the first loses a head, so it gets targets
    of its own and the second keeps the originals."""
    ws = _Weights()
    ws["first"], ws["heads"], ws["width"] = (np.array(v, np.int64) for v in ([0], [2, 4], [8]))
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "first"], ["batch"]),
        helper.make_node("Concat", ["batch", "heads"], ["split_target"], axis=0),
        helper.make_node("Concat", ["batch", "width"], ["merge_target"], axis=0),
    ]
    for name, dead in (("w1", [4, 5, 6, 7]), ("w2", None)):
        ws.add(f"{name}.w", (6, 8), dead, axis=1)
        ws.add(f"{name}.v", (8, 3))
        nodes += [
            helper.make_node("MatMul", ["x", f"{name}.w"], [f"{name}.p"], name=name),
            helper.make_node("Reshape", [f"{name}.p", "split_target"], [f"{name}.h"]),
            helper.make_node("Relu", [f"{name}.h"], [f"{name}.r"]),
            helper.make_node("Reshape", [f"{name}.r", "merge_target"], [f"{name}.f"]),
            helper.make_node("MatMul", [f"{name}.f", f"{name}.v"], [f"{name}.o"]),
        ]
    nodes.append(helper.make_node("Add", ["w1.o", "w2.o"], ["y"]))
    proto = make_model(
        nodes, [tensor_info("x", FLOAT, ["N", 6])], [tensor_info("y", FLOAT, ["N", 3])], dict(ws)
    )

    pruned, tables = _prune(proto, "prune-channels(ratio=0.5, exclude=w2)")

    status = {row[0]: row for row in tables["channel groups"].rows}
    assert status["w1"][2:5:2] == ["2 -> 1 (x4)", "pruned"]
    assert status["w2"][4] == "unprunable: excluded"
    assert sum(node.op_type == "Concat" for node in pruned.graph.node) == 4
    feeds = _feeds(proto)
    np.testing.assert_allclose(
        run_model(pruned, feeds)[0], run_model(proto, feeds)[0], rtol=RTOL, atol=ATOL
    )
