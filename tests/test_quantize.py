"""quantize: Q/DQ placement that onnxruntime fuses, integer weights, calibration, the guard."""

from __future__ import annotations

import collections
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from conftest import make_model, run_model, tensor_info
from onnx import TensorProto, helper, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnxslim.passes.quantize import Quantize
from onnxslim.passes.quantize.graph import WeightCache, WeightConfig
from onnxslim.passes.quantize.layers import WeightSource
from onnxslim.passes.quantize.numerics import (
    QUANT_TYPES,
    PackedInt4,
    activation_params,
    pack_int4,
    quantization_sqnr,
    quantize,
    unpack_int4,
    weight_params,
)
from typer.testing import CliRunner

from onnxslim.cli import app
from onnxslim.errors import InputDataError, PipelineSpecError
from onnxslim.model import load, to_proto
from onnxslim.pipeline import PassManager, PassRecord
from onnxslim.registry import parse_pipeline

FLOAT = TensorProto.FLOAT
REPO = Path(__file__).resolve().parent.parent
DIGITS_CALIB = REPO / "fixtures" / "digits_calib.npz"
_ORT_VERSION = tuple(int(part) for part in ort.__version__.split(".")[:2])


def _normal(shape, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _quantized(proto: onnx.ModelProto, **options) -> tuple[onnx.ModelProto, PassRecord]:
    model = load(proto)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # synthesized calibration data warns, on purpose
        records = PassManager([Quantize(**options)]).run(model)
    result = to_proto(model)
    onnx.checker.check_model(result, full_check=True)
    return result, records[0]


def _fused_ops(proto: onnx.ModelProto, tmp_path: Path) -> collections.Counter:
    """Op types of the model after onnxruntime's own graph optimizations."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
    return collections.Counter(node.op_type for node in optimized.graph.node)


def _ops(proto: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in proto.graph.node)


def _initializers(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in proto.graph.initializer}


def _producer(proto: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(node for node in proto.graph.node if tensor in node.output)


def _quantized_tensors(proto: onnx.ModelProto) -> set[str]:
    """The activations that go through a Q/DQ pair: graph inputs by name, computed tensors by
    the name their DequantizeLinear writes (the original one). Weights are stored as integers
    instead."""
    inputs = {value.name for value in proto.graph.input}
    quantized = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    return {
        quantized[node.input[0]] if quantized[node.input[0]] in inputs else node.output[0]
        for node in proto.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in quantized
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else 0.0


def _conv_net() -> onnx.ModelProto:
    """Conv+Relu -> MaxPool -> Conv+Relu -> Flatten -> Gemm(bias): ``x`` [N,3,8,8] -> ``y``."""
    weights = {
        "w1": _normal((4, 3, 3, 3), 1),
        "b1": _normal(4, 2),
        "w2": _normal((4, 4, 3, 3), 3),
        "b2": _normal(4, 4),
        "fc": _normal((10, 64), 5),
        "fc_bias": _normal(10, 6),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1] * 4, name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fc_bias"], ["y"], transB=1, name="fc"),
    ]
    return make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", 3, 8, 8])],
        [tensor_info("y", FLOAT, ["N", 10])],
        weights,
    )


def _calib_file(tmp_path: Path, name: str, shape: tuple[int, ...], count: int = 24) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, **{name: np.abs(_normal((count, *shape), 9))})
    return path


# ------------------------------------------------------------------------------ arithmetic


def test_activation_scale_and_zero_point_match_hand_computed_values() -> None:
    params = activation_params(-1.0, 3.0, QUANT_TYPES["uint8"])
    assert float(params.scale) == pytest.approx(4 / 255)
    assert int(params.zero_point) == 64  # round(1 / (4/255)) = round(63.75)
    relu = activation_params(0.0, 2.55, QUANT_TYPES["int8"])
    assert float(relu.scale) == pytest.approx(0.01) and int(relu.zero_point) == -128


def test_weights_are_symmetric_per_output_channel() -> None:
    weights = np.array([[1.0, -2.0], [0.5, 0.25]], dtype=np.float32)
    params = weight_params(weights, QUANT_TYPES["int8"], axis=0)
    np.testing.assert_allclose(params.scale, [2 / 127, 0.5 / 127], rtol=1e-6)
    assert not params.zero_point.any()
    reduced = weight_params(weights, QUANT_TYPES["int8"].reduced(), axis=None)
    assert float(reduced.scale) == pytest.approx(2 / 63)


@pytest.mark.parametrize("axis", [0, 1, None])
def test_a_large_weight_is_quantized_in_slices_exactly_as_a_whole(axis: int | None) -> None:
    weights = _normal((300, 700), 0)  # 4 slices of 2**16 values
    params = weight_params(weights, QUANT_TYPES["int8"], axis)
    scale = params.scale if axis is None else np.expand_dims(params.scale, 1 - axis)
    expected = np.clip(np.round(weights / scale), -128, 127).astype(np.int8)
    quantized = quantize(weights, params)
    np.testing.assert_array_equal(quantized, expected)
    error = weights.astype(np.float64) - expected * scale.astype(np.float64)
    sqnr = 10 * np.log10(np.sum(weights.astype(np.float64) ** 2) / np.sum(error**2))
    assert quantization_sqnr(weights, quantized, params) == pytest.approx(sqnr, abs=1e-3)


def test_quantizing_a_weight_holds_little_more_than_the_weight_and_its_integers() -> None:
    """MiniLM's 47 MB embedding table took 120 MB more resident memory to quantize: the proto's
    bytes and a copy of them, |w|, float quotients, a dequantized copy for the SQNR."""
    proto = numpy_helper.from_array(_normal((2048, 1024), 0), "table")  # 8 MB
    table = gs.Constant("table", LazyValues(proto))
    source = WeightSource(table, (), table)
    config = WeightConfig(QUANT_TYPES["int8"], per_channel=True)
    tracemalloc.start()
    try:
        WeightCache().get(source, config, axis=1, block=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.6 * 8 * 2**20  # the float values, their int8 copy, one slice's temporaries


def test_int4_packing_round_trips_with_the_first_value_in_the_low_nibble() -> None:
    assert pack_int4(np.array([1, -1])) == bytes([0xF1])
    values = np.random.default_rng(0).integers(-8, 8, size=(3, 5)).astype(np.int8)
    packed = pack_int4(values)
    assert len(packed) == 8  # 15 values, the last byte half used
    np.testing.assert_array_equal(unpack_int4(packed, (3, 5)), values)


def test_packed_int4_weights_keep_half_a_byte_per_value_and_give_the_integers_back() -> None:
    values = np.random.default_rng(1).integers(-8, 8, size=(3, 5)).astype(np.int8)
    packed = PackedInt4.of(values)
    assert packed.shape == (3, 5) and packed.data.nbytes == 8
    np.testing.assert_array_equal(np.asarray(packed), values)
    np.testing.assert_array_equal(np.asarray(packed, dtype=np.float32), values.astype(np.float32))


# ------------------------------------------------------------------------------ placement


def test_conv_relu_pool_net_becomes_integer_kernels_in_onnxruntime(tmp_path: Path) -> None:
    proto, _ = _quantized(_conv_net(), calib=_calib_file(tmp_path, "x", (1, 3, 8, 8)))
    assert "Relu" not in _ops(proto)  # the Q after each Conv clips at zero itself
    fused = _fused_ops(proto, tmp_path)
    assert fused["QLinearConv"] == 2 and fused["QGemm"] == 1
    assert not {"Conv", "Gemm"} & set(fused)
    if _ORT_VERSION >= (1, 20):  # 1.19 keeps DQ -> Flatten -> Q instead of dropping it
        assert "DequantizeLinear" not in fused


def test_data_movement_ops_keep_their_input_scale(tmp_path: Path) -> None:
    proto, _ = _quantized(_conv_net(), calib=_calib_file(tmp_path, "x", (1, 3, 8, 8)))
    relu, pooled, flat = (_producer(proto, name) for name in ("r1", "p1", "flat"))
    assert relu.op_type == pooled.op_type == "DequantizeLinear"
    assert list(relu.input[1:]) == list(pooled.input[1:])
    assert _producer(proto, "r2").input[1:] == flat.input[1:]


def test_residual_add_and_concat_get_shared_qdq_and_integer_kernels(tmp_path: Path) -> None:
    weights = {f"w{i}": _normal((4, 4, 1, 1), i) for i in range(4)}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["ra", "w1"], ["b"]),
        helper.make_node("Add", ["ra", "b"], ["sum"]),
        helper.make_node("Conv", ["sum", "w2"], ["c"]),
        helper.make_node("Concat", ["sum", "c"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w3_wide"], ["y"]),
    ]
    weights["w3_wide"] = _normal((2, 8, 1, 1), 7)
    del weights["w3"]
    model = make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", 4, 4, 4])],
        [tensor_info("y", FLOAT, ["N", 2, 4, 4])],
        weights,
    )
    proto, _ = _quantized(model, calib=_calib_file(tmp_path, "x", (1, 4, 4, 4)))
    # One Q/DQ pair for 'sum', which three nodes read.
    assert (
        sum(1 for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "sum")
        <= 1
    )
    assert (
        sum(1 for n in proto.graph.node if n.output == ["sum"] and n.op_type == "DequantizeLinear")
        == 1
    )
    # 'c' is read by the Concat alone: it shares the Concat output's scale and zero point;
    # 'sum' has other readers and keeps its own.
    assert _producer(proto, "c").input[1:] == _producer(proto, "cat").input[1:]
    assert _producer(proto, "sum").input[1:] != _producer(proto, "cat").input[1:]
    fused = _fused_ops(proto, tmp_path)
    assert fused["QLinearAdd"] == 1 and fused["QLinearConcat"] == 1 and fused["QLinearConv"] == 4
    feeds = {"x": np.abs(_normal((2, 4, 4, 4), 11))}
    assert _cosine(run_model(model, feeds)[0], run_model(proto, feeds)[0]) > 0.999


def test_matmul_chain_runs_as_qlinear_matmul(tmp_path: Path) -> None:
    weights = {"w0": _normal((16, 32), 0), "w1": _normal((32, 8), 1)}
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w1"], ["y"]),
    ]
    model = make_model(
        nodes, [tensor_info("x", FLOAT, ["N", 16])], [tensor_info("y", FLOAT, ["N", 8])], weights
    )
    proto, _ = _quantized(model, calib=_calib_file(tmp_path, "x", (1, 16), count=40))
    fused = _fused_ops(proto, tmp_path)
    assert fused["QLinearMatMul"] == 1 and fused["MatMulIntegerToFloat"] == 1
    assert "MatMul" not in fused
    feeds = {"x": np.abs(_normal((8, 16), 12))}
    assert _cosine(run_model(model, feeds)[0], run_model(proto, feeds)[0]) > 0.999


def test_bias_add_and_gelu_between_matmuls_stay_float_between_integer_kernels(
    tmp_path: Path,
) -> None:
    """3-D MatMul + bias Add (not a Gemm), then a gated activation and ``* 0.5``: the
    elementwise chain reads the first MatMul's dequantized output and feeds the second's
    QuantizeLinear in float, with no requantization of its own."""
    weights = {
        "w0": _normal((16, 32), 0),
        "b0": _normal((32,), 1),
        "half": np.array(0.5, np.float32),
        "w1": _normal((32, 8), 2),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("Add", ["h", "b0"], ["hb"]),
        helper.make_node("Sigmoid", ["hb"], ["gate"]),
        helper.make_node("Mul", ["hb", "gate"], ["act"]),
        helper.make_node("Mul", ["act", "half"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w1"], ["y"]),
    ]
    model = make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", 4, 16])],
        [tensor_info("y", FLOAT, ["N", 4, 8])],
        weights,
    )
    proto, _ = _quantized(model, calib=_calib_file(tmp_path, "x", (1, 4, 16), count=40))
    assert _quantized_tensors(proto) == {"x", "h", "scaled"}
    fused = _fused_ops(proto, tmp_path)
    assert fused["QLinearMatMul"] == 1 and fused["MatMulIntegerToFloat"] == 1
    assert "QLinearAdd" not in fused and "QLinearMul" not in fused
    assert _initializers(proto)["b0"].data_type == FLOAT  # a float Add's operand stays float
    feeds = {"x": np.abs(_normal((8, 4, 16), 12))}  # distributed like the calibration data
    assert _cosine(run_model(model, feeds)[0], run_model(proto, feeds)[0]) > 0.999


def _conv_hard_swish_conv() -> onnx.ModelProto:
    """PP-LCNet's block: Conv, hard-swish as exported (``a * clip(a + 3, 0, 6) / 6``), a
    learnable scalar scale and shift, Conv."""
    weights = {
        "w0": _normal((8, 4, 3, 3), 0, 0.5),
        "b0": _normal((8,), 1),
        "three": np.array(3.0, np.float32),
        "zero": np.array(0.0, np.float32),
        "six": np.array(6.0, np.float32),
        "scale": np.array(1.3, np.float32),
        "shift": np.array(-0.2, np.float32),
        "w1": _normal((4, 8, 3, 3), 2, 0.3),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "three"], ["a3"]),
        helper.make_node("Clip", ["a3", "zero", "six"], ["gate"]),
        helper.make_node("Mul", ["a", "gate"], ["ag"]),
        helper.make_node("Div", ["ag", "six"], ["swish"]),
        helper.make_node("Mul", ["swish", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["shifted"]),
        helper.make_node("Conv", ["shifted", "w1"], ["y"], pads=[1, 1, 1, 1]),
    ]
    return make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", 4, 8, 8])],
        [tensor_info("y", FLOAT, ["N", 4, 8, 8])],
        weights,
    )


def test_hard_swish_between_convs_gets_qdq_only_where_the_convs_read_and_write(
    tmp_path: Path,
) -> None:
    model = _conv_hard_swish_conv()
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=_normal((40, 1, 4, 8, 8), 3))
    proto, _ = _quantized(model, calib=calib, guard=False, min_cosine=0.0)
    # Each Conv's input and output (a QLinearConv reads and writes integers), nothing between.
    assert _quantized_tensors(proto) == {"x", "a", "shifted", "y"}
    fused = _fused_ops(proto, tmp_path)
    assert fused["QLinearConv"] == 2
    assert "QLinearAdd" not in fused and "QLinearMul" not in fused
    feeds = {"x": _normal((16, 4, 8, 8), 4)}
    # Measured: 0.99946 here, 0.99942 when the chain's Adds and Muls were integer kernels (four
    # more requantizations): one block barely shows it, a backbone of them does (README,
    # PP-OCR recognizer).
    assert _cosine(run_model(model, feeds)[0], run_model(proto, feeds)[0]) > 0.999


def test_a_residual_add_after_a_float_op_stays_float(tmp_path: Path) -> None:
    """An Add that reads a float op's output would need a requantization of that input:
    it stays float, and so does a Concat that would read the Add."""
    weights = {"w0": _normal((4, 4, 1, 1), 0), "w1": _normal((4, 8, 1, 1), 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"]),
        helper.make_node("Sigmoid", ["a"], ["s"]),
        helper.make_node("Add", ["a", "s"], ["sum"]),
        helper.make_node("Concat", ["sum", "a"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w1"], ["y"]),
    ]
    model = make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", 4, 4, 4])],
        [tensor_info("y", FLOAT, ["N", 4, 4, 4])],
        weights,
    )
    proto, _ = _quantized(model, calib=_calib_file(tmp_path, "x", (1, 4, 4, 4)))
    assert _quantized_tensors(proto) == {"x", "a", "cat", "y"}
    fused = _fused_ops(proto, tmp_path)
    assert fused["QLinearConv"] == 2 and "QLinearAdd" not in fused


def _masked_and_quantized(
    nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray], tmp_path: Path
) -> tuple[onnx.ModelProto, onnx.ModelProto, PassRecord, dict[str, np.ndarray]]:
    """``nodes`` on ``x`` [N, 8] and a ``keep`` mask -> ``y`` [N, 8], quantized on calibration
    data without padding (``keep`` all true); the float model, the quantized one, its record,
    and feeds whose last three positions are padding."""
    model = make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", 8]), tensor_info("keep", onnx.TensorProto.BOOL, ["N", 8])],
        [tensor_info("y", FLOAT, ["N", 8])],
        weights,
    )
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=_normal((32, 1, 8), 3), keep=np.ones((32, 1, 8), bool))
    proto, record = _quantized(model, calib=calib)
    keep = np.ones((4, 8), bool)
    keep[:, 5:] = False
    return model, proto, record, {"x": _normal((4, 8), 4), "keep": keep}


def test_a_mask_calibrated_without_padding_still_masks(tmp_path: Path) -> None:
    """Where(keep, 0, -1e9) saw only zeros in calibration (no padding): it must still mask the
    padded positions of other data. The Add that applies it reads a float op (the Where) and
    feeds one (the Softmax), so it is no integer kernel and neither the mask nor the masked
    scores are quantized."""
    weights = {
        "w": _normal((8, 8), 0),
        "zero": np.array(0.0, np.float32),
        "masked": np.array(-1e9, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["scores"]),
        helper.make_node("Where", ["keep", "zero", "masked"], ["mask"]),
        helper.make_node("Add", ["scores", "mask"], ["masked_scores"]),
        helper.make_node("Softmax", ["masked_scores"], ["y"], axis=-1),
    ]
    model, proto, _, feeds = _masked_and_quantized(nodes, weights, tmp_path)
    assert _quantized_tensors(proto) == {"x", "scores"}  # the QLinearMatMul's input and output
    expected, got = run_model(model, feeds)[0], run_model(proto, feeds)[0]
    assert np.abs(got[:, 5:]).max() < 1e-6  # padded positions get no attention
    assert _cosine(expected, got) > 0.99


def test_a_where_constant_outside_the_calibrated_range_keeps_its_output_float(
    tmp_path: Path,
) -> None:
    """Where(keep, x, -1e9) read by a MatMul saw no -1e9 in calibration: the constant it can
    select still belongs to its range, which then reaches the sentinels and stays float."""
    weights = {"w": _normal((8, 8), 0), "masked": np.array(-1e9, np.float32)}
    nodes = [
        helper.make_node("Where", ["keep", "x", "masked"], ["gated"]),
        helper.make_node("MatMul", ["gated", "w"], ["y"]),
    ]
    model, proto, record, feeds = _masked_and_quantized(nodes, weights, tmp_path)
    assert "gated" not in _quantized_tensors(proto)
    assert any("hold infinities" in note and "gated" in note for note in record.notes)
    # Quantized with the calibrated range, -1e9 would read as about -3 and y would be ~1e1.
    assert _cosine(run_model(model, feeds)[0], run_model(proto, feeds)[0]) > 0.999


def test_gemm_bias_is_int32_with_input_scale_times_weight_scale(tmp_path: Path) -> None:
    proto, _ = _quantized(_conv_net(), calib=_calib_file(tmp_path, "x", (1, 3, 8, 8)))
    initializers = _initializers(proto)
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    x_dq, w_dq, b_dq = (_producer(proto, name) for name in gemm.input)
    x_scale = numpy_helper.to_array(initializers[x_dq.input[1]])
    w_scale = numpy_helper.to_array(initializers[w_dq.input[1]])
    b_scale = numpy_helper.to_array(initializers[b_dq.input[1]])
    bias_q = numpy_helper.to_array(initializers[b_dq.input[0]])
    assert bias_q.dtype == np.int32
    np.testing.assert_allclose(b_scale, x_scale * w_scale, rtol=1e-6)
    np.testing.assert_array_equal(bias_q, np.round(_normal(10, 6) / b_scale).astype(np.int32))
    assert initializers[w_dq.input[0]].data_type == TensorProto.INT8


def test_graph_input_and_output_names_survive(tmp_path: Path) -> None:
    proto, _ = _quantized(_conv_net(), calib=_calib_file(tmp_path, "x", (1, 3, 8, 8)))
    assert [i.name for i in proto.graph.input] == ["x"]
    assert [o.name for o in proto.graph.output] == ["y"]
    assert _producer(proto, "y").op_type == "Gemm"  # outputs stay float


# ------------------------------------------------------------------------------ modes


def test_weight_only_mode_needs_no_calibration_data_and_shrinks_weights() -> None:
    model = _conv_net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proto, record = _quantized(model, activations="none")
    assert "QuantizeLinear" not in _ops(proto)
    assert record.initializer_bytes_after < 0.3 * record.initializer_bytes_before
    feeds = {"x": _normal((2, 3, 8, 8), 4)}
    assert _cosine(run_model(model, feeds)[0], run_model(proto, feeds)[0]) > 0.999


def test_int4_matmul_is_block_wise_at_opset_21_and_fuses_to_matmulnbits(tmp_path: Path) -> None:
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [tensor_info("x", FLOAT, ["N", 64])],
        [tensor_info("y", FLOAT, ["N", 32])],
        {"w": _normal((64, 32), 3)},
    )
    proto, _ = _quantized(model, weights="int4", activations="none", block_size=16)
    assert proto.opset_import[0].version == 21
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear")
    assert {a.name: a.i for a in dq.attribute} == {"axis": 0, "block_size": 16}
    weight = _initializers(proto)[dq.input[0]]
    assert weight.data_type == TensorProto.INT4 and len(weight.raw_data) == 64 * 32 // 2
    assert tuple(_initializers(proto)[dq.input[1]].dims) == (4, 32)
    feeds = {"x": _normal((4, 64), 5)}
    assert _cosine(run_model(model, feeds)[0], run_model(proto, feeds)[0]) > 0.99
    if _ORT_VERSION >= (1, 20):
        assert _fused_ops(proto, tmp_path)["MatMulNBits"] == 1


def test_int4_on_an_opset_13_model_converts_the_opset_and_quantizes(tmp_path: Path) -> None:
    """ReduceMax's axes became an input in opset 18: relabelling to 21 would change the
    model, so onnx's converter moves it; the weights are then int4."""
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Unsqueeze", ["h", "axis"], ["h3"]),
            helper.make_node("ReduceMax", ["h3"], ["y"], axes=[1], keepdims=0),
        ],
        [tensor_info("x", FLOAT, ["N", 64])],
        [tensor_info("y", FLOAT, ["N", 32])],
        {"w": _normal((64, 32), 3), "axis": np.array([1], np.int64)},
        opset=13,
    )
    proto, record = _quantized(model, weights="int4", activations="none", block_size=16)
    assert record.changed and proto.opset_import[0].version == 21
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear")
    assert _initializers(proto)[dq.input[0]].data_type == TensorProto.INT4
    reduce_max = next(n for n in proto.graph.node if n.op_type == "ReduceMax")
    assert len(reduce_max.input) == 2  # axes as an input, as opset 18 reads them
    feeds = {"x": _normal((4, 64), 5)}
    assert _cosine(run_model(model, feeds)[0], run_model(proto, feeds)[0]) > 0.95
    assert any("opset converted from 13 to 21" in note for note in record.notes)


def test_int16_activations_raise_the_opset_and_stay_close(tmp_path: Path) -> None:
    model = _conv_net()
    proto, _ = _quantized(
        model, activations="int16", calib=_calib_file(tmp_path, "x", (1, 3, 8, 8))
    )
    assert proto.opset_import[0].version == 21
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
    assert _initializers(proto)[q.input[2]].data_type == TensorProto.INT16
    feeds = {"x": np.abs(_normal((2, 3, 8, 8), 4))}
    assert _cosine(run_model(model, feeds)[0], run_model(proto, feeds)[0]) > 0.999


def test_excluded_layers_stay_float_and_are_reported(tmp_path: Path) -> None:
    proto, record = _quantized(
        _conv_net(), exclude=["conv2"], calib=_calib_file(tmp_path, "x", (1, 3, 8, 8))
    )
    conv2 = next(n for n in proto.graph.node if n.name == "conv2")
    assert conv2.input[1] == "w2" and _initializers(proto)["w2"].data_type == FLOAT
    rows = {row[0]: row for row in record.tables[0].rows}
    assert rows["c2"][-1] == "excluded" and rows["c1"][2] == "int8"


def test_accuracy_guard_keeps_a_sensitive_layer_float(tmp_path: Path) -> None:
    # w2's first row is huge but meets an always-zero feature: harmless in float, while one
    # per-tensor int8 scale for w2 rounds all its useful weights to zero.
    w1 = _normal((8, 8), 1)
    w1[:, 0] = 0
    w2 = _normal((8, 8), 2)
    w2[0, :] = 1000
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y"]),
    ]
    model = make_model(
        nodes,
        [tensor_info("x", FLOAT, ["N", 8])],
        [tensor_info("y", FLOAT, ["N", 8])],
        {"w1": w1, "w2": w2},
    )
    calib = _calib_file(tmp_path, "x", (1, 8), count=32)
    unguarded, _ = _quantized(model, per_channel=False, calib=calib, min_cosine=0)
    proto, record = _quantized(model, per_channel=False, calib=calib, min_cosine=0.999)
    feeds = {"x": np.abs(_normal((16, 8), 9))}
    reference = run_model(model, feeds)[0]
    assert _cosine(reference, run_model(unguarded, feeds)[0]) < 0.9
    assert _cosine(reference, run_model(proto, feeds)[0]) >= 0.998
    kept = [row[0] for row in record.tables[0].rows if row[-1] == "accuracy guard"]
    assert kept == ["y"]
    assert _initializers(proto)["w2"].data_type == FLOAT
    assert any(
        n.op_type == "DequantizeLinear" and n.output == ["w1_dequantized"] for n in proto.graph.node
    )


def test_per_layer_table_reports_weight_and_output_sqnr(tmp_path: Path) -> None:
    _, record = _quantized(_conv_net(), calib=_calib_file(tmp_path, "x", (1, 3, 8, 8)))
    table = record.tables[0]
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}
    assert rows["c1"]["weight dB"] > 30 and rows["y"]["model dB"] > 20
    assert record.metrics["held-out cosine"] > 0.99 and "held-out top-1" in record.metrics


# ------------------------------------------------------------------------------ real data


def test_digits_cnn_keeps_its_accuracy_within_half_a_point() -> None:
    with np.load(REPO / "fixtures" / "digits.npz") as data:
        images, labels = data["x_test"], data["y_test"]
    fp32 = onnx.load(str(REPO / "fixtures" / "digits_cnn.onnx"))
    proto, record = _quantized(fp32, calib=DIGITS_CALIB)
    accuracy = [
        (run_model(m, {"image": images})[0].argmax(1) == labels).mean() for m in (fp32, proto)
    ]
    assert accuracy[1] >= accuracy[0] - 0.005
    assert record.initializer_bytes_after < 0.3 * record.initializer_bytes_before


def test_pass_is_usable_from_a_spec_string() -> None:
    (step,) = parse_pipeline(f"quantize(calib={DIGITS_CALIB}, ops=Conv|Gemm, weights=int8)")
    assert (
        isinstance(step, Quantize) and step.ops == ["Conv", "Gemm"] and step.calib == DIGITS_CALIB
    )


# ------------------------------------------------------------------------------ errors


def test_unknown_op_and_bad_block_size_are_spec_errors() -> None:
    with pytest.raises(PipelineSpecError, match="cannot quantize 'Softmax'"):
        parse_pipeline("quantize(ops=Softmax)")
    with pytest.raises(PipelineSpecError, match="power of two"):
        parse_pipeline("quantize(weights=int4, block_size=24)")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"image": np.ones((3, 1, 3, 8, 8), np.float32)}, "no data for input 'x'"),
        ({"x": np.ones((3, 1, 3, 9, 9), np.float32)}, "expects 8 at axis 2"),
        ({"x": np.ones((3, 1, 3, 8, 8), np.complex64)}, "expects float32 data"),
    ],
    ids=["wrong-name", "wrong-shape", "wrong-dtype"],
)
def test_bad_calibration_file_is_one_clear_error(tmp_path: Path, arrays, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputDataError, match=message):
        _quantized(_conv_net(), calib=path)


def test_cli_writes_a_quantized_model_and_reports_bad_data_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    output = tmp_path / "digits.int8.onnx"
    model = REPO / "fixtures" / "digits_cnn.onnx"
    result = runner.invoke(
        app, ["quantize", str(model), "--calib", str(DIGITS_CALIB), "-o", str(output)]
    )
    assert result.exit_code == 0, result.output
    assert "per-layer SQNR" in result.output and output.stat().st_size < model.stat().st_size / 3
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.ones((2, 1, 8, 8), np.float32))
    result = runner.invoke(app, ["quantize", str(model), "--calib", str(bad), "-o", str(output)])
    assert result.exit_code == 2 and "no data for input 'image'" in result.output
    assert "Traceback" not in result.output
