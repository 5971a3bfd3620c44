"""quantize on graphs shaped like real exports: every weight found, outliers, masks, the
quality floor, refusals. Each test plants the difficulty it is about in a small graph."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, run_model, tensor_info
from onnx import TensorProto, helper, numpy_helper
from onnxslim.passes.infer_shapes import InferShapes
from onnxslim.passes.quantize import AlreadyQuantizedError, Quantize
from onnxslim.passes.quantize.evaluate import (
    HeldOut,
    OutputQuality,
    Quality,
    QualityFloor,
    mean_lower_bound,
    probability_outputs,
    wilson_lower_bound,
)
from onnxslim.passes.quantize.guard import keep_float_until
from onnxslim.passes.quantize.layers import find_layers
from onnxslim.passes.quantize.smooth import smooth, smoothing_groups
from test_quantize import _cosine, _fused_ops, _initializers, _normal, _ops, _quantized
from typer.testing import CliRunner

from onnxslim import optimize
from onnxslim.calibration import calibrate
from onnxslim.cli import app
from onnxslim.errors import QualityFloorError
from onnxslim.model import load, to_proto
from onnxslim.pipeline import PassContext

FLOAT = TensorProto.FLOAT


def _float_weights(proto: onnx.ModelProto, min_size: int = 64) -> list[str]:
    """Float initializers big enough to be weights (biases and scales are smaller)."""
    return [
        t.name
        for t in proto.graph.initializer
        if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
        and np.prod(t.dims) >= min_size
        and not t.name.endswith("_scale")
    ]


def _save_calib(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------ weights


def _export_style_model() -> onnx.ModelProto:
    """What TorchScript writes without constant folding, and a tied embedding: ``Gather`` from
    a table that the output projection reads again through a Transpose; a Linear as
    ``MatMul(x, Transpose(W))``; a half-precision weight behind a Cast; a Reshape'd weight;
    a Gemm with ``transB=1``; one weight shared by two MatMuls."""
    weights = {
        "table": _normal((50, 16), 0),
        "w_t": _normal((32, 16), 1),  # [out, in], as torch stores it
        "w_half": _normal((32, 32), 2).astype(np.float16),
        "w_flat": _normal((32 * 16,), 3),
        "shape": np.array([32, 16], np.int64),
        "w_gemm": _normal((16, 16), 4),
        "b_gemm": _normal((16,), 5),
        "w_shared": _normal((16, 16), 6),
    }
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"]),
        helper.make_node("Reshape", ["embedded", "rows"], ["x"]),
        helper.make_node("Transpose", ["w_t"], ["w_t_view"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w_t_view"], ["h1"]),
        helper.make_node("Cast", ["w_half"], ["w_half_view"], to=FLOAT),
        helper.make_node("MatMul", ["h1", "w_half_view"], ["h2"]),
        helper.make_node("Reshape", ["w_flat", "shape"], ["w_flat_view"]),
        helper.make_node("MatMul", ["h2", "w_flat_view"], ["h3"]),
        helper.make_node("Gemm", ["h3", "w_gemm", "b_gemm"], ["h4"], transB=1),
        helper.make_node("MatMul", ["h4", "w_shared"], ["h5"]),
        helper.make_node("MatMul", ["h5", "w_shared"], ["h6"]),
        helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["h6", "table_t"], ["logits"]),
    ]
    weights["rows"] = np.array([-1, 16], np.int64)
    return make_model(
        nodes,
        [tensor_info("ids", TensorProto.INT64, ["N"])],
        [tensor_info("logits", FLOAT, ["N", 50])],
        weights,
    )


def _ids_calib(tmp_path: Path) -> Path:
    ids = np.random.default_rng(0).integers(0, 50, (40, 1))
    return _save_calib(tmp_path, ids=ids.astype(np.int64))


@pytest.mark.parametrize("activations", ["dynamic", "uint8", "none"])
def test_every_weight_is_quantized_whatever_reaches_its_layer(
    tmp_path: Path, activations: str
) -> None:
    """Without the lossless pipeline first: the pass itself looks through the views. (No
    floor: seven random layers in a chain are not what it is for.) The tied embedding stays
    float, stored once: quantized it would be stored twice, in two layouts."""
    model = _export_style_model()
    proto, record = _quantized(
        model, activations=activations, calib=_ids_calib(tmp_path), min_cosine=0, min_top1=0
    )
    assert _float_weights(proto) == ["table"]
    assert record.initializer_bytes_after < 0.6 * record.initializer_bytes_before
    feeds = {"ids": np.arange(50, dtype=np.int64)}
    assert _cosine(run_model(model, feeds)[0], run_model(proto, feeds)[0]) > 0.9


def test_a_shared_weight_is_stored_once(tmp_path: Path) -> None:
    proto, _ = _quantized(
        _export_style_model(), activations="dynamic", calib=_ids_calib(tmp_path), min_cosine=0
    )
    shared = [t for t in proto.graph.initializer if t.name.startswith("w_shared")]
    assert len([t for t in shared if t.data_type == TensorProto.INT8]) == 1


def test_dynamic_layers_fuse_into_onnxruntime_integer_kernels(tmp_path: Path) -> None:
    proto, _ = _quantized(
        _export_style_model(), activations="dynamic", calib=_ids_calib(tmp_path), min_cosine=0
    )
    assert _ops(proto)["MatMulInteger"] == 6  # all but the tied lm_head
    fused = _fused_ops(proto, tmp_path)
    integer = fused["DynamicQuantizeMatMul"] + fused["MatMulIntegerToFloat"]
    assert integer == 6 and "MatMulInteger" not in fused and fused["MatMul"] == 1


def test_a_dynamic_embedding_dequantizes_the_rows_it_gathers(tmp_path: Path) -> None:
    """An untied table stored as integers is gathered as integers and only the rows read are
    dequantized: a DequantizeLinear of the whole table before the Gather ran on every call
    (5x slower than onnxruntime's own output at batch 1 on MiniLM)."""
    model = make_model(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"]),
            helper.make_node("MatMul", ["embedded", "w"], ["y"]),
        ],
        [tensor_info("ids", TensorProto.INT64, ["N", 4])],
        [tensor_info("y", FLOAT, ["N", 4, 16])],
        {"table": _normal((500, 16), 0), "w": _normal((16, 16), 1)},
    )
    ids = np.random.default_rng(0).integers(0, 500, (40, 1, 4)).astype(np.int64)
    calib = _save_calib(tmp_path, ids=ids)
    proto, _ = _quantized(
        model, activations="dynamic", calib=calib, min_cosine=0, min_top1=0, embeddings=True
    )

    integers = {t.name for t in proto.graph.initializer if t.data_type == TensorProto.INT8}
    (gather,) = [n for n in proto.graph.node if n.op_type == "Gather"]
    assert gather.input[0] in integers
    readers = [n.op_type for n in proto.graph.node if gather.output[0] in n.input]
    assert readers == ["DequantizeLinear"]
    assert "embedded" in {o for n in proto.graph.node for o in n.output}  # the name stays
    feeds = {"ids": ids[:8, 0]}
    assert _cosine(run_model(model, feeds)[0], run_model(proto, feeds)[0]) > 0.99


def test_a_dynamic_embedding_takes_a_scale_per_column(tmp_path: Path) -> None:
    """Trained embedding tables have outlier channels (MiniLM's position table: values up
    to 1.87 in a few columns, 0.2 elsewhere): one scale per column keeps the rest, and the
    rows read are still dequantized after the Gather (along their last axis)."""
    table = _normal((500, 16), 0, 0.1)
    table[:, 3] *= 40.0
    model = make_model(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"]),
            helper.make_node("MatMul", ["embedded", "w"], ["y"]),
        ],
        [tensor_info("ids", TensorProto.INT64, ["N", 4])],
        [tensor_info("y", FLOAT, ["N", 4, 16]), tensor_info("embedded", FLOAT, ["N", 4, 16])],
        {"table": table, "w": _normal((16, 16), 1)},
    )
    ids = np.random.default_rng(0).integers(0, 500, (40, 1, 4)).astype(np.int64)
    proto, _ = _quantized(
        model, activations="dynamic", calib=_save_calib(tmp_path, ids=ids), min_cosine=0
    )

    (gather,) = [n for n in proto.graph.node if n.op_type == "Gather"]
    (dequantize,) = [n for n in proto.graph.node if gather.output[0] in n.input]
    assert dequantize.op_type == "DequantizeLinear"
    assert helper.get_attribute_value(dequantize.attribute[0]) == -1
    assert list(_initializers(proto)[dequantize.input[1]].dims) == [16]
    feeds = {"ids": ids[:8, 0]}
    want, got = run_model(model, feeds)[1], run_model(proto, feeds)[1]
    others = np.delete(np.arange(16), 3)
    error = np.abs(got - want)[..., others].max()
    assert error <= 0.5 * np.abs(table[:, others]).max() / 127 + 1e-7  # their own step


def test_dynamic_gemm_keeps_alpha_beta_and_bias(tmp_path: Path) -> None:
    model = make_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)],
        [tensor_info("x", FLOAT, ["N", 32])],
        [tensor_info("y", FLOAT, ["N", 8])],
        {"w": _normal((8, 32), 1), "b": _normal((8,), 2)},
    )
    calib = _save_calib(tmp_path, x=_normal((16, 1, 32), 3))
    # 7-bit weights: full-range int8 x uint8 products saturate on CPUs without VNNI.
    proto, _ = _quantized(model, activations="dynamic", calib=calib, reduce_range=True)
    assert "Gemm" not in _ops(proto)
    feeds = {"x": _normal((4, 32), 4)}
    np.testing.assert_allclose(
        run_model(proto, feeds)[0], run_model(model, feeds)[0], rtol=0.05, atol=0.05
    )


def test_optimize_prepares_the_graph_first_and_no_prepare_opts_out(tmp_path: Path) -> None:
    model = _export_style_model()
    spec = f"quantize(activations=dynamic, calib='{_ids_calib(tmp_path)}', min_cosine=0)"
    prepared = optimize(model, spec).report
    assert prepared.passes[0].name == "infer-shapes"
    assert any(r.name == "fold-constants" and r.changed for r in prepared.passes)
    alone = optimize(model, spec, prepare=False).report
    assert [r.name.split("(")[0] for r in alone.passes] == ["quantize"]


# ------------------------------------------------------------------------------ masks


def _causal_attention() -> onnx.ModelProto:
    """A decoder's attention core: scores = q k^T, plus the causal mask
    ``Where(causal, 0, -inf)``, Softmax, @ v."""
    seq = 6
    causal = np.tril(np.ones((seq, seq), bool))
    weights = {
        "wq": _normal((8, 8), 1, 0.5),
        "wk": _normal((8, 8), 2, 0.5),
        "wv": _normal((8, 8), 3, 0.5),
        "causal": causal,
        "zero": np.array(0.0, np.float32),
        "minus_inf": np.array(-np.inf, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Where", ["causal", "zero", "minus_inf"], ["mask"]),
        helper.make_node("Add", ["scores", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["y"]),
    ]
    return make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", seq, 8])],
        [tensor_info("y", FLOAT, ["N", seq, 8]), tensor_info("probs", FLOAT, ["N", seq, seq])],
        weights,
    )


@pytest.mark.parametrize("activations", ["uint8", "dynamic"])
def test_a_minus_inf_causal_mask_survives(tmp_path: Path, activations: str) -> None:
    model = _causal_attention()
    calib = _save_calib(tmp_path, x=_normal((24, 1, 6, 8), 5))
    proto, _ = _quantized(model, activations=activations, calib=calib)
    feeds = {"x": _normal((3, 6, 8), 6)}
    expected, probs = run_model(model, feeds)
    got, got_probs = run_model(proto, feeds)
    future = ~np.tril(np.ones((6, 6), bool))
    assert np.all(got_probs[:, future] == 0)  # no position attends to a later one
    assert _cosine(expected, got) > 0.98 and _cosine(probs, got_probs) > 0.98
    # The mask never enters a Q/DQ pair: the Add that reads it is no integer kernel (its other
    # input, the scores, go to a float Softmax) and the sentinel rule keeps it float otherwise.
    quantized = {node.input[0] for node in proto.graph.node if node.op_type == "QuantizeLinear"}
    assert not quantized & {"mask", "masked"}


def test_calibration_counts_infinities_apart_from_the_range() -> None:
    model = make_model(
        [helper.make_node("Where", ["keep", "x", "minus_inf"], ["y"])],
        [tensor_info("x", FLOAT, [2, 3]), tensor_info("keep", TensorProto.BOOL, [2, 3])],
        [tensor_info("y", FLOAT, [2, 3])],
        {"minus_inf": np.array(-np.inf, np.float32)},
    )
    keep = np.array([[True, True, False], [True, True, True]])
    feeds = {"x": np.full((2, 3), 2.0, np.float32), "keep": keep}
    stats = calibrate(model, ["y"], [feeds])["y"]
    assert stats.nonfinite == 1 and (stats.minimum, stats.maximum) == (2.0, 2.0)


# ------------------------------------------------------------------------------ outliers


def _spiky_model() -> onnx.ModelProto:
    """Two linear layers; their input spikes on some inputs (channel 0 reaches 300 on one
    sample in eight) and stays within a few units otherwise."""
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        [tensor_info("x", FLOAT, ["N", 32])],
        [tensor_info("y", FLOAT, ["N", 16])],
        {"w1": _normal((32, 64), 1, 0.2), "w2": _normal((64, 16), 2, 0.2)},
    )


def _spiky_calib(tmp_path: Path) -> Path:
    x = _normal((64, 1, 32), 3)
    x[::8, 0, 0] = 300.0
    return _save_calib(tmp_path, x=x)


def _outlier_channel_model() -> onnx.ModelProto:
    """A LayerNorm whose scale makes channel 0 sixty times larger than the others on every
    input (the outlier channels of trained transformers), then two linear layers that weigh
    that channel as little as the others."""
    gamma = np.ones(32, np.float32)
    gamma[0] = 60.0
    w1 = _normal((32, 64), 1, 0.2)
    w1[0] /= 60.0
    return make_model(
        [
            helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1),
            helper.make_node("MatMul", ["n", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        [tensor_info("x", FLOAT, ["N", 32])],
        [tensor_info("y", FLOAT, ["N", 16])],
        {"gamma": gamma, "beta": np.zeros(32, np.float32), "w1": w1, "w2": _normal((64, 16), 2)},
    )


# 7-bit weights in these tests: full-range int8 x uint8 products saturate on CPUs without VNNI,
# which would blur what the tests are about.
@pytest.mark.parametrize(
    ("model", "calib", "passing"),
    [(_spiky_model, _spiky_calib, "dynamic"), (_outlier_channel_model, None, "smooth")],
)
def test_outliers_fail_the_floor_with_plain_static_activations(
    tmp_path: Path, model, calib, passing: str
) -> None:
    data = calib(tmp_path) if calib else _save_calib(tmp_path, x=_normal((64, 1, 32), 3))
    with pytest.raises(QualityFloorError, match=r"below the floor; least accurate layers: h"):
        _quantized(model(), activations="uint8", guard=False, reduce_range=True, calib=data)


def test_spiky_inputs_pass_the_floor_with_dynamic_activations(tmp_path: Path) -> None:
    proto, record = _quantized(
        _spiky_model(),
        activations="dynamic",
        guard=False,
        reduce_range=True,
        calib=_spiky_calib(tmp_path),
    )
    assert record.metrics["held-out cosine"] >= 0.99 and _float_weights(proto) == []


def test_an_outlier_channel_passes_the_floor_once_smoothed(tmp_path: Path) -> None:
    calib = _save_calib(tmp_path, x=_normal((64, 1, 32), 3))
    proto, record = _quantized(
        _outlier_channel_model(),
        activations="uint8",
        smooth=0.5,
        guard=False,
        reduce_range=True,
        calib=calib,
    )
    assert record.metrics["held-out cosine"] >= 0.99 and _float_weights(proto) == []
    assert any("1 folded into their LayerNormalization" in note for note in record.notes)


def test_smoothing_is_exact_in_float() -> None:
    """The smoothed float model computes what the original does, LayerNorm-folded or not."""
    gamma = np.ones(32, np.float32)
    gamma[5] = 40.0  # an outlier channel, as trained LayerNorms have
    model = make_model(
        [
            helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1),
            helper.make_node("MatMul", ["n", "wq"], ["q"]),
            helper.make_node("MatMul", ["n", "wk"], ["k"]),
            helper.make_node("Add", ["q", "k"], ["s"]),
            helper.make_node("Gemm", ["s", "wo"], ["y"], transB=1),
            helper.make_node("Add", ["y", "x"], ["out"]),
        ],
        [tensor_info("x", FLOAT, [4, 32])],
        [tensor_info("out", FLOAT, [4, 32])],
        {
            "gamma": gamma,
            "beta": _normal(32, 1),
            "wq": _normal((32, 32), 2),
            "wk": _normal((32, 32), 3),
            "wo": _normal((32, 32), 4),
        },
    )
    loaded = load(model)
    InferShapes().run(loaded.graph, PassContext(model=loaded))
    layers, _ = find_layers(loaded.graph, ["MatMul", "Gemm"], [], static=False)
    groups = smoothing_groups(layers)
    assert [len(group.layers) for group in groups] == [2, 1]
    names = [group.tensor.name for group in groups]
    feeds = {"x": _normal((4, 32), 5)}
    stats = calibrate(model, names, [feeds], channels=names)
    stats["s"].channel_max[3] *= 50  # give the Gemm's input an outlier too
    smoothed, inserted = smooth(loaded.graph, groups, stats, alpha=0.5)
    assert len(smoothed) == 2 and len(inserted) == 1  # the LayerNorm took its division
    result = to_proto(loaded)
    onnx.checker.check_model(result, full_check=True)
    np.testing.assert_allclose(
        run_model(result, feeds)[0], run_model(model, feeds)[0], rtol=1e-5, atol=1e-4
    )


# ------------------------------------------------------------------------------ the floor


def test_the_floor_is_measured_on_held_out_samples(tmp_path: Path) -> None:
    calib = _save_calib(tmp_path, x=_normal((40, 1, 32), 7))
    _, record = _quantized(_spiky_model(), activations="uint8", calib=calib, samples=32)
    assert record.metrics["held-out samples"] == 8  # samples beyond the 32 for ranges
    assert any(note.startswith("held-out quality: ") for note in record.notes)


def _one_lucky_sample_model() -> onnx.ModelProto:
    """Two linear layers on 4 positions of 32 features; the first weighs feature 0 a tenth
    as much as the others, so a spike there is harmless in float but clipped by its input's
    calibrated range."""
    w1 = _normal((32, 64), 1, 0.2)
    w1[0] /= 10.0
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        [tensor_info("x", FLOAT, ["N", 4, 32])],
        [tensor_info("y", FLOAT, ["N", 4, 16])],
        {"w1": w1, "w2": _normal((64, 16), 2, 0.2)},
    )


def test_the_floor_is_met_by_a_lower_bound_not_the_mean() -> None:
    """15 samples near 1 and one at 0.88: the mean (0.9920) clears 0.99, the mean less two
    standard errors (0.9771) does not; 16 of 16 predictions bound agreement at 0.80 only."""
    cosines = [0.9995] * 15 + [0.88]
    bound = mean_lower_bound(cosines)
    assert np.mean(cosines) >= 0.99 > bound == pytest.approx(0.9771, abs=1e-4)
    assert mean_lower_bound([0.995]) == 0.995  # one sample: no spread to bound by
    noisy = OutputQuality("y", float(np.mean(cosines)), 0.88, cosine_bound=bound)
    assert "lower bound 0.9771" in noisy.misses(QualityFloor(0.99))
    assert OutputQuality("y", float(np.mean(cosines)), 0.88).misses(QualityFloor(0.99)) is None
    assert wilson_lower_bound(16, 16) == pytest.approx(0.80)
    assert wilson_lower_bound(190, 200) == pytest.approx(0.910, abs=1e-3)
    # Below ~196 predictions no count bounds agreement at 0.98: all must then agree.
    classifier = OutputQuality("p", None, None, top1=15 / 16, top1_count=16)
    assert "top-1 agreement 93.75% (lower bound 71.08% of 16) < 80.00%" in classifier.misses(
        QualityFloor(0.99, 0.98)
    )
    assert OutputQuality("p", None, None, 1.0, top1_count=16).misses(QualityFloor()) is None


def test_the_guard_does_not_accept_a_mean_lifted_by_lucky_samples(tmp_path: Path) -> None:
    """One held-out sample in 16 spikes: every layer quantized, its cosine falls to 0.88 while
    the others stay near 1. The mean (0.992) meets 0.99, and before the bound the guard kept
    nothing float; its lower bound (0.978) does not, so the first layer stays float and the
    result meets the floor by its bound."""
    x = _normal((64, 1, 4, 32), 3)
    x[56, 0, :, 0] = 40.0  # one of the 16 samples beyond the 48 calibrated on
    calib = _save_calib(tmp_path, x=x)
    options = {"activations": "uint8", "reduce_range": True, "calib": calib, "samples": 48}
    with pytest.raises(QualityFloorError, match=r"cosine 0\.99\d+ \(lower bound 0\.97\d+\)"):
        _quantized(_one_lucky_sample_model(), guard=False, **options)
    proto, record = _quantized(_one_lucky_sample_model(), **options)
    assert [row[0] for row in record.tables[0].rows if row[-1] == "accuracy guard"] == ["h"]
    assert _initializers(proto)["w1"].data_type == FLOAT
    assert record.metrics["held-out cosine bound"] >= 0.99
    assert record.metrics["held-out cosine"] >= record.metrics["held-out cosine bound"]


def test_the_guard_finds_a_planted_sensitive_layer_in_few_evaluations(tmp_path: Path) -> None:
    """Six layers; the fourth's weight has one huge row that meets an always-zero feature:
    harmless in float, ruinous for its per-tensor int8 scale."""
    weights, nodes, previous = {}, [], "x"
    for index in range(6):
        w = _normal((16, 16), index, 0.3)
        if index == 3:
            w[0, :] = 1000.0
        if index == 2:
            w[:, 0] = 0.0  # the feature that row meets
        weights[f"w{index}"] = w
        nodes.append(helper.make_node("MatMul", [previous, f"w{index}"], [f"h{index}"]))
        previous = f"h{index}"
    model = make_model(
        nodes, [tensor_info("x", FLOAT, ["N", 16])], [tensor_info("h5", FLOAT, ["N", 16])], weights
    )
    calib = _save_calib(tmp_path, x=_normal((40, 1, 16), 9))
    proto, record = _quantized(model, activations="uint8", per_channel=False, calib=calib)
    kept = [row[0] for row in record.tables[0].rows if row[-1] == "accuracy guard"]
    assert kept == ["h3"]
    assert _initializers(proto)["w3"].data_type == FLOAT
    guard_note = next(note for note in record.notes if note.startswith("accuracy guard"))
    assert "(1 variants evaluated)" in guard_note
    assert record.metrics["held-out cosine"] >= 0.99


def _curve_quality(error: float) -> Quality:
    return Quality([OutputQuality("y", 1.0 - error, 1.0 - error)], samples=8)


@pytest.mark.parametrize("seed", range(20))
def test_the_guard_search_finds_the_fewest_layers_in_few_evaluations(seed: int) -> None:
    """On any error curve that falls as layers are kept float (here: each layer's share of the
    output error differs from its own noise by up to 4x, as real layers' gains do), the search
    returns the smallest count that meets the floor, in fewer evaluations than bisection."""
    rng = np.random.default_rng(seed)
    noise = np.sort(rng.lognormal(0.0, 1.5, 40))[::-1]
    share = noise * rng.uniform(0.25, 4.0, noise.size)
    errors = 0.02 * np.cumsum(share[::-1])[::-1] / share.sum()  # errors[c]: c layers kept
    floor = QualityFloor(min_cosine=1.0 - float(rng.uniform(0.15, 0.6)) * 0.02)
    evaluated = []

    def evaluate(kept: list[str]) -> Quality:
        evaluated.append(len(kept))
        return _curve_quality(errors[len(kept)])

    ranked = [f"layer{i}" for i in range(noise.size)]
    found = keep_float_until(ranked, evaluate, floor, _curve_quality(errors[0]), list(noise))
    fewest = next(c for c in range(1, noise.size) if _curve_quality(errors[c]).meets(floor))
    assert found is not None and len(found.kept) == fewest
    assert found.evaluations == len(evaluated) <= 7


def test_the_guard_search_without_noise_doubles_then_bisects() -> None:
    errors = np.linspace(0.02, 0.0, 41)
    counts = []

    def evaluate(kept: list[str]) -> Quality:
        counts.append(len(kept))
        return _curve_quality(errors[len(kept)])

    ranked = [f"layer{i}" for i in range(40)]
    found = keep_float_until(ranked, evaluate, QualityFloor(0.995), _curve_quality(0.02))
    assert found is not None and len(found.kept) == 30
    assert counts == [1, 2, 4, 8, 16, 32, 24, 28, 30, 29]


def test_a_floor_that_cannot_be_met_writes_nothing_and_exits_1(tmp_path: Path) -> None:
    model = _spiky_model()
    source, output = tmp_path / "model.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    result = CliRunner().invoke(
        app,
        [
            "quantize",
            str(source),
            "--calib",
            str(_spiky_calib(tmp_path)),
            "--activations",
            "uint8",
            "--min-cosine",
            "0.99999",
            "-o",
            str(output),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "0.99999" in result.output and "least accurate layers" in result.output
    assert not output.exists()


# ------------------------------------------------------------------------------ refusals


def test_quantizing_a_quantized_model_is_refused_unless_asked(tmp_path: Path) -> None:
    calib = _save_calib(tmp_path, x=_normal((40, 1, 32), 7))
    once, _ = _quantized(_spiky_model(), activations="uint8", calib=calib)
    with pytest.raises(AlreadyQuantizedError, match="already quantized"):
        _quantized(once, calib=calib)
    again, record = _quantized(once, calib=calib, requantize=True)
    assert _ops(again)["QuantizeLinear"] == _ops(once)["QuantizeLinear"]
    assert not record.changed


def test_the_cli_refuses_a_quantized_model_with_exit_code_2(tmp_path: Path) -> None:
    calib = _save_calib(tmp_path, x=_normal((40, 1, 32), 7))
    once, _ = _quantized(_spiky_model(), activations="uint8", calib=calib)
    source = tmp_path / "quantized.onnx"
    onnx.save(once, source)
    result = CliRunner().invoke(app, ["quantize", str(source), "--calib", str(calib)])
    assert result.exit_code == 2 and "already quantized" in result.output


def test_a_command_that_changes_nothing_exits_4_and_writes_nothing(tmp_path: Path) -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [tensor_info("x", FLOAT, ["N", 4])],
        [tensor_info("y", FLOAT, ["N", 4])],
    )
    source, output = tmp_path / "relu.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    result = CliRunner().invoke(app, ["quantize", str(source), "-o", str(output)])
    assert result.exit_code == 4, result.output
    assert "changed nothing" in result.output and "no layer to quantize" in result.output
    assert not output.exists()


# ------------------------------------------------------------------------------ the scheme


def test_auto_picks_dynamic_for_a_transformer_and_static_for_a_cnn(tmp_path: Path) -> None:
    from test_quantize import _calib_file, _conv_net

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, attention = _quantized(_causal_attention(), min_cosine=0.98)
    assert attention.metrics["scheme"].startswith("dynamic")
    assert any("a transformer" in note for note in attention.notes)
    _, cnn = _quantized(_conv_net(), calib=_calib_file(tmp_path, "x", (1, 3, 8, 8)))
    assert cnn.metrics["scheme"] == "uint8"
    assert any("Conv layers, no attention" in note for note in cnn.notes)


def test_int16_and_int4_are_refused_with_dynamic_activations() -> None:
    from onnxslim.errors import PipelineSpecError

    with pytest.raises(PipelineSpecError, match="int8 or uint8 weights"):
        Quantize(weights="int4", activations="dynamic")


def test_a_weight_through_a_constant_node_is_found(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(_normal((32, 16), 1), "w_value")
    model = make_model(
        [
            helper.make_node("Constant", [], ["w"], value=weight),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        [tensor_info("x", FLOAT, ["N", 32])],
        [tensor_info("y", FLOAT, ["N", 16])],
    )
    calib = _save_calib(tmp_path, x=_normal((16, 1, 32), 2))
    proto, _ = _quantized(model, activations="dynamic", calib=calib)
    assert "Constant" not in _ops(proto) and _ops(proto)["MatMulInteger"] == 1


def _probability_map_model() -> onnx.ModelProto:
    """A 1x1 Conv and a Sigmoid, reshaped: a per-pixel probability map like a text
    detector's."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["p"]),
            helper.make_node("Reshape", ["p", "flat"], ["map"]),
            helper.make_node("Conv", ["x", "w"], ["raw"]),
        ],
        [tensor_info("x", FLOAT, ["N", 4, 64, 64])],
        [tensor_info("map", FLOAT, ["N", 4096]), tensor_info("raw", FLOAT, ["N", 1, 64, 64])],
        {"w": _normal((1, 4, 1, 1), 5), "flat": np.array([0, 4096], np.int64)},
    )


def test_a_sigmoid_map_is_judged_by_its_decisions_at_one_half() -> None:
    """Mostly near 0, a probability map loses cosine to small absolute errors that change no
    decision: it meets the floor when its elements fall on the same side of 0.5; an output
    that is not a Sigmoid's is judged by cosine alone."""
    model = load(_probability_map_model())
    assert probability_outputs(model.graph) == {"map"}
    held = HeldOut(model, [{"x": _normal((1, 4, 64, 64), 6)}])
    held.probabilities = probability_outputs(model.graph)
    want = np.full((1, 4096), 0.001, np.float32)
    want[0, :512] = 0.9  # an eighth of the map is text
    got = want + np.where(want < 0.5, 0.1, -0.05).astype(np.float32)  # no decision changes
    got[0, 512:520] = 0.6  # eight do
    held.reference = [{"map": want, "raw": want}]
    quality = held._compare([{"map": got, "raw": got}])
    by_name = {output.name: output for output in quality.outputs}
    assert by_name["map"].top1 == pytest.approx(4088 / 4096)
    assert by_name["map"].cosine < 0.99 and by_name["raw"].cosine < 0.99
    floor = QualityFloor(min_cosine=0.99, min_top1=0.98)
    assert by_name["map"].misses(floor) is None  # 99.80% of 4,096 decisions, bound 99.61%
    few = OutputQuality("map", 0.97, 0.97, top1=63 / 64, top1_count=64)
    assert few.misses(floor) is not None  # 98.4% of only 64 decisions bounds at 91%
    assert by_name["raw"].misses(floor) is not None
