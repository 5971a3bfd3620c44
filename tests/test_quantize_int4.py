"""Block-wise weight-only quantization for decoder LLMs: the int4 grid, rounding better than
round-to-nearest (data-free clipping search, GPTQ), MatMulNBits with 8 bits, embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, run_model, tensor_info
from onnx import TensorProto, helper
from onnxslim.passes.quantize import Quantize
from onnxslim.passes.quantize.gptq import gptq
from onnxslim.passes.quantize.numerics import (
    QUANT_TYPES,
    blockwise_params,
    dequantize,
    quantize,
)
from test_quantize import _fused_ops, _normal, _quantized

from onnxslim.errors import PipelineSpecError

FLOAT = TensorProto.FLOAT
INT4 = QUANT_TYPES["int4"]


def _planted_weight(rows: int = 128, columns: int = 64) -> np.ndarray:
    """Heavy-tailed (Laplace) weights, as trained linear layers have: a few large values per
    block stretch round to nearest's step."""
    return np.random.default_rng(1).laplace(size=(rows, columns)).astype(np.float32)


def _correlated_inputs(rows: int, tokens: int = 2048, seed: int = 4) -> np.ndarray:
    """Inputs near a 16-dimensional subspace, as hidden states are: their channels are
    strongly correlated, which GPTQ's compensation exploits."""
    basis = np.random.default_rng(3).standard_normal((16, rows))
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((tokens, 16)) @ basis + 0.3 * rng.standard_normal((tokens, rows))
    return values.astype(np.float32)


def _output_error(inputs: np.ndarray, weights: np.ndarray, approx: np.ndarray) -> float:
    return float(np.square(inputs @ (weights - approx)).mean())


def _rounded(weights: np.ndarray, **options) -> np.ndarray:
    """``weights`` through int4 blocks of 32 along the rows, dequantized."""
    params = blockwise_params(weights, INT4, axis=0, block_size=32, **options)
    return dequantize(quantize(weights, params), params)


def _gptq_case(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ's ``H`` from correlated calibration inputs, and held-out inputs like them."""
    inputs = _correlated_inputs(weights.shape[0])
    hessian = inputs.T.astype(np.float64) @ inputs / len(inputs)
    return hessian, _correlated_inputs(weights.shape[0], tokens=512, seed=5)


# ------------------------------------------------------------------------------ grid math


def test_int4_blocks_map_their_largest_magnitude_to_minus_eight() -> None:
    """All 16 levels: scale = peak / -8, negative when the peak is positive."""
    weights = np.array(
        [[0.8, -1.6], [-0.3, 0.2], [0.1, 0.6], [0.6, -0.4]],
        dtype=np.float32,
    )
    params = blockwise_params(weights, INT4, axis=0, block_size=4)
    np.testing.assert_allclose(params.scale, [[-0.1, 0.2]], rtol=1e-6)
    q = quantize(weights, params)
    np.testing.assert_array_equal(q, [[-8, -8], [3, 1], [-1, 3], [-6, -2]])
    np.testing.assert_allclose(dequantize(q, params), weights, atol=1e-6)


def test_the_side_opposite_the_peak_clips_at_seven_steps() -> None:
    weights = np.array([[1.0], [-1.0], [0.5], [0.0]], dtype=np.float32)
    params = blockwise_params(weights, INT4, axis=0, block_size=4)
    assert float(params.scale[0, 0]) == pytest.approx(-0.125)
    q = quantize(weights, params)
    np.testing.assert_array_equal(q.ravel(), [-8, 7, -4, 0])
    np.testing.assert_allclose(dequantize(q, params).ravel(), [1.0, -0.875, 0.5, 0.0])


def test_the_clipping_search_picks_the_orientation_of_least_error() -> None:
    """For [1.0, -1.0, ...] putting the peak on +7 (scale 1/7) represents both ends exactly,
    where round to nearest on -8 loses 0.125 on the negative one."""
    weights = np.array([[1.0], [-1.0], [3 / 7], [0.0]], dtype=np.float32)
    params = blockwise_params(weights, INT4, axis=0, block_size=4, search=True)
    assert abs(float(params.scale[0, 0])) == pytest.approx(1 / 7, rel=1e-5)
    np.testing.assert_allclose(dequantize(quantize(weights, params), params), weights, atol=1e-6)


def test_a_short_last_block_is_padded_and_zero_blocks_get_scale_one() -> None:
    weights = np.zeros((6, 2), dtype=np.float32)
    weights[4, 1] = 0.4
    params = blockwise_params(weights, INT4, axis=0, block_size=4)
    np.testing.assert_allclose(params.scale, [[1.0, 1.0], [1.0, -0.05]], rtol=1e-6)


def test_zero_points_spread_each_block_range_over_all_sixteen_levels() -> None:
    """[-0.3, 1.2]: scale 1.5 / 15 = 0.1, zero point -8 + 3 = -5; an all-positive block
    [0, 1.5] puts 0 on -8. Both are represented exactly, where the symmetric grid's step
    would be 1.5 / 8."""
    weights = np.array(
        [[-0.3, 0.3], [0.2, 0.6], [1.2, 1.5], [0.6, 0.0]],
        dtype=np.float32,
    )
    params = blockwise_params(weights, INT4, axis=0, block_size=4, zero_points=True)
    np.testing.assert_allclose(params.scale, [[0.1, 0.1]], rtol=1e-6)
    np.testing.assert_array_equal(params.zero_point, [[-5, -8]])
    q = quantize(weights, params)
    np.testing.assert_array_equal(q, [[-8, -5], [-3, -2], [7, 7], [1, -8]])
    np.testing.assert_allclose(dequantize(q, params), weights, atol=1e-6)
    symmetric = blockwise_params(weights, INT4, axis=0, block_size=4)
    assert np.abs(dequantize(quantize(weights, symmetric), symmetric) - weights).max() > 0.05


def test_unsigned_blocks_always_take_a_zero_point() -> None:
    """uint8 has no negative levels: its blocks are asymmetric even without zero_points
    ([-1, 1.55] in 255 steps of 0.01, zero on 100)."""
    weights = np.array([[-1.0], [0.0], [0.5], [1.55]], dtype=np.float32)
    params = blockwise_params(weights, QUANT_TYPES["uint8"], axis=0, block_size=4)
    np.testing.assert_allclose(params.scale, [[0.01]], rtol=1e-6)
    np.testing.assert_array_equal(params.zero_point, [[100]])
    np.testing.assert_allclose(dequantize(quantize(weights, params), params), weights, atol=1e-6)


# ------------------------------------------------------------------ better than nearest


def test_the_clipping_search_reduces_the_layer_output_error_of_nearest() -> None:
    weights = _planted_weight()
    inputs = _normal((512, weights.shape[0]), 5)
    errors = {s: _output_error(inputs, weights, _rounded(weights, search=s)) for s in (0, 1)}
    assert errors[True] < 0.95 * errors[False]


def test_gptq_reduces_the_layer_output_error_below_nearest_and_the_search() -> None:
    weights = _planted_weight()
    hessian, held_out = _gptq_case(weights)

    def error(search: bool) -> float:
        return _output_error(held_out, weights, _rounded(weights, search=search))

    q, params = gptq(weights, hessian, INT4, 32)
    assert q.dtype == np.int8 and q.min() >= -8 and q.max() <= 7
    compensated = _output_error(held_out, weights, dequantize(q, params))
    assert compensated < 0.5 * error(True) < 0.5 * error(False)


def _skewed_weight(rows: int = 128, columns: int = 64) -> np.ndarray:
    """Lopsided weights (a gamma distribution, shifted): long tails on the positive side
    only, so a symmetric grid leaves most of its negative levels unused."""
    values = np.random.default_rng(6).gamma(1.5, size=(rows, columns)) - 1.0
    return values.astype(np.float32)


@pytest.mark.parametrize("search", [False, True])
def test_zero_points_reduce_the_layer_output_error_on_lopsided_weights(search: bool) -> None:
    weights = _skewed_weight()
    inputs = _normal((512, weights.shape[0]), 5)
    errors = {
        zero_points: _output_error(
            inputs, weights, _rounded(weights, search=search, zero_points=zero_points)
        )
        for zero_points in (False, True)
    }
    assert errors[True] < 0.8 * errors[False]


def test_gptq_with_zero_points_reduces_the_layer_output_error_further() -> None:
    weights = _skewed_weight()
    hessian, held_out = _gptq_case(weights)
    errors = {}
    for zero_points in (False, True):
        q, params = gptq(weights, hessian, INT4, 32, zero_points=zero_points)
        assert q.min() >= -8 and q.max() <= 7
        errors[zero_points] = _output_error(held_out, weights, dequantize(q, params))
    assert bool(params.zero_point.any())
    assert errors[True] < 0.8 * errors[False]


# ------------------------------------------------------------------------ in the graph


def _linear(rows: int = 128, columns: int = 64) -> onnx.ModelProto:
    return make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [tensor_info("x", FLOAT, ["N", rows])],
        [tensor_info("y", FLOAT, ["N", columns])],
        {"w": _planted_weight(rows, columns)},
    )


def test_gptq_with_calibration_data_beats_nearest_in_the_quantized_model(tmp_path) -> None:
    model = _linear()
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=_correlated_inputs(128, tokens=96))
    feeds = {"x": _correlated_inputs(128, tokens=256, seed=5)}
    reference = run_model(model, feeds)[0]
    errors = {}
    for rounding in ("nearest", "gptq"):
        proto, record = _quantized(model, weights="int4", calib=calib, rounding=rounding)
        errors[rounding] = float(np.square(run_model(proto, feeds)[0] - reference).mean())
    assert any("gptq: input statistics of 1 weight" in note for note in record.notes)
    assert errors["gptq"] < 0.5 * errors["nearest"]


def test_int4_without_calibration_data_searches_clipping_by_default() -> None:
    assert Quantize(weights="int4").rounding_method() == "mse"
    assert Quantize(weights="int4", calib=Path("x.npz")).rounding_method() == "gptq"
    assert Quantize(weights="int4", rounding="nearest").rounding_method() == "nearest"


@pytest.mark.parametrize("rounding", ["mse", "gptq"])
def test_searched_and_compensated_int4_still_fuse_into_matmulnbits(tmp_path, rounding) -> None:
    proto, _ = _quantized(_linear(), weights="int4", rounding=rounding)
    assert _fused_ops(proto, tmp_path) == {"MatMulNBits": 1}


@pytest.mark.parametrize("rounding", ["mse", "gptq"])
def test_int4_with_zero_points_fuses_into_matmulnbits_and_computes_the_same(
    tmp_path, rounding
) -> None:
    """The zero points reach MatMulNBits: its error is the unfused DequantizeLinear +
    MatMul's (up to the int8 activations of its accuracy level 4), and below the symmetric
    grid's on lopsided weights."""
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [tensor_info("x", FLOAT, ["N", 128])],
        [tensor_info("y", FLOAT, ["N", 64])],
        {"w": _skewed_weight()},
    )
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=_correlated_inputs(128, tokens=96))
    options = {"weights": "int4", "rounding": rounding, "calib": calib}
    proto, _ = _quantized(model, zero_points=True, **options)
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear")
    assert len(dq.input) == 3  # weights, scale, zero point
    assert _fused_ops(proto, tmp_path) == {"MatMulNBits": 1}
    feeds = {"x": _correlated_inputs(128, tokens=256, seed=5)}
    reference = run_model(model, feeds)[0]

    def error(proto: onnx.ModelProto, fused: bool = True) -> float:
        output = run_model(proto, feeds, ort_optimizations=fused)[0]
        return float(np.square(output - reference).mean())

    assert error(proto) == pytest.approx(error(proto, fused=False), rel=0.1)
    symmetric, _ = _quantized(model, **options)
    assert error(proto) < 0.8 * error(symmetric)


def test_zero_points_need_block_wise_weights() -> None:
    with pytest.raises(PipelineSpecError, match="block-wise"):
        Quantize(weights="int8", zero_points=True)


def test_blockwise_int8_is_weight_only_and_fuses_into_8_bit_matmulnbits(tmp_path) -> None:
    model = _linear()
    proto, _ = _quantized(model, weights="int8", blockwise=True, block_size=32)
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear")
    assert {a.name: a.i for a in dq.attribute} == {"axis": 0, "block_size": 32}
    assert "QuantizeLinear" not in {n.op_type for n in proto.graph.node}
    assert _fused_ops(proto, tmp_path) == {"MatMulNBits": 1}
    optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
    bits = {a.name: a.i for a in optimized.graph.node[0].attribute}["bits"]
    assert bits == 8
    feeds = {"x": _normal((8, 128), 6)}
    reference = run_model(model, feeds)[0]
    cosine = (
        np.dot(reference.ravel(), run_model(proto, feeds)[0].ravel()) / np.square(reference).sum()
    )
    assert cosine == pytest.approx(1.0, abs=1e-3)


def test_blockwise_weights_refuse_quantized_activations() -> None:
    with pytest.raises(PipelineSpecError, match="weight-only"):
        Quantize(weights="int8", blockwise=True, activations="dynamic")


# ------------------------------------------------------------------------------ embeddings


def _decoder_head(tied: bool) -> onnx.ModelProto:
    """ids -> Gather(table) -> MatMul(w_mid) -> MatMul(lm_head) -> logits; the lm_head is
    the table transposed when ``tied`` (a tied embedding), its own weight otherwise."""
    vocab, hidden = 96, 64
    weights = {"table": _normal((vocab, hidden), 1), "w_mid": _normal((hidden, hidden), 2)}
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"]),
        helper.make_node("MatMul", ["embedded", "w_mid"], ["hidden"]),
    ]
    if tied:
        nodes.append(helper.make_node("Transpose", ["table"], ["lm_head"], perm=[1, 0]))
    else:
        weights["lm_head"] = _normal((hidden, vocab), 3)
    nodes.append(helper.make_node("MatMul", ["hidden", "lm_head"], ["logits"]))
    return make_model(
        nodes,
        [tensor_info("ids", TensorProto.INT64, ["B", "S"])],
        [tensor_info("logits", FLOAT, ["B", "S", vocab])],
        weights,
    )


def _dequantized_weights(proto: onnx.ModelProto) -> set[str]:
    return {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}


def test_int4_leaves_gather_tables_float_unless_embeddings_is_set() -> None:
    proto, record = _quantized(_decoder_head(tied=False), weights="int4", min_cosine=0.5)
    gather = next(n for n in proto.graph.node if n.op_type == "Gather")
    assert gather.input[0] == "table"
    assert len(_dequantized_weights(proto)) == 2  # w_mid and lm_head
    assert any("Gather table(s) (embeddings) stay float" in note for note in record.notes)
    proto, _ = _quantized(
        _decoder_head(tied=False), weights="int4", embeddings=True, min_cosine=0.5
    )
    assert len(_dequantized_weights(proto)) == 3


@pytest.mark.parametrize("embeddings", [False, True])
def test_a_tied_embedding_and_lm_head_are_stored_once(embeddings: bool) -> None:
    model = _decoder_head(tied=True)
    proto, record = _quantized(model, weights="int4", embeddings=embeddings, min_cosine=0.5)
    tables = [t for t in proto.graph.initializer if int(np.prod(t.dims)) == 96 * 64]
    assert [t.name for t in tables] == ["table"]  # once, float, read by both
    assert len(_dequantized_weights(proto)) == 1  # only w_mid
    assert any("tied embedding and lm_head" in note for note in record.notes)
    assert proto.ByteSize() < model.ByteSize()
