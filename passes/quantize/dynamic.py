"""Dynamic activations: each input's range measured at run time, per tensor.

Trained transformers have activation outliers: a few channels of a LayerNorm's output carry
values tens of times larger than the rest, on some tokens only. A range calibrated once must
cover the largest value any input produces, so on most inputs it wastes most of its integer
levels; a range measured on the input at hand does not. Weights stay static, int8 per output
channel.

A MatMul (or Gemm) with a constant weight becomes the form onnxruntime's own
``quantize_dynamic`` writes and its optimizer fuses into one kernel, DynamicQuantizeMatMul, or
MatMulIntegerToFloat where several layers read one quantized input (Q, K and V), with the bias
Add that follows folded in::

    x -> DynamicQuantizeLinear -> x_q, x_scale, x_zero      (one per tensor, shared)
    MatMulInteger(x_q, W_q, x_zero, W_zero) -> Cast(float) -> Mul(Mul(x_scale, W_scale)) -> y

Only standard ONNX ops: the model runs on any ONNX runtime, fastest on onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnxslim.passes.quantize.graph import GraphBuilder, LayerResult, WeightCache, WeightConfig
from onnxslim.passes.quantize.layers import Layer

from onnxslim.model import read_constant

__all__ = ["supports_dynamic", "insert_dynamic"]

_FLOAT32 = np.dtype(np.float32)


def supports_dynamic(layer: Layer) -> bool:
    """Whether ``layer`` has a dynamic integer kernel: MatMul or Gemm with a 2-D constant
    weight (and, for Gemm, a constant bias or none)."""
    if layer.source is None or layer.weight != 1 or len(layer.source.shape) != 2:
        return False
    if layer.op == "MatMul":
        return True
    if layer.op != "Gemm" or layer.node.attrs.get("transA", 0):
        return False
    node = layer.node
    return (
        len(node.inputs) < 3 or not node.inputs[2].name or isinstance(node.inputs[2], gs.Constant)
    )


def insert_dynamic(
    graph: gs.Graph, layers: list[Layer], config: WeightConfig, cache: WeightCache
) -> list[LayerResult]:
    """Rewrite ``layers`` (all :func:`supports_dynamic`) in place into integer MatMuls with
    inputs quantized at run time."""
    builder = GraphBuilder(graph)
    inputs: dict[str, tuple[gs.Variable, gs.Variable, gs.Variable]] = {}
    weights: dict[tuple, tuple[gs.Constant, gs.Constant, np.ndarray]] = {}
    results = []
    for layer in layers:
        node, source = layer.node, layer.source
        transposed = node.op == "Gemm" and bool(node.attrs.get("transB", 0))
        weight = cache.get(source, config, layer.axis, None)
        if source.key not in weights:
            values = weight.values.T if transposed else weight.values
            zero_point = weight.params.zero_point
            weights[source.key] = (
                builder.constant(f"{source.name}_quantized", np.ascontiguousarray(values)),
                # Symmetric weights need no zero point: MatMulInteger's default is 0.
                builder.constant(f"{source.name}_zero_point", zero_point)
                if zero_point.any()
                else None,
                weight.params.scale.astype(np.float32),
            )
        stored, zero_point, scale = weights[source.key]
        x = node.inputs[0]
        if x.name not in inputs:
            inputs[x.name] = _quantized_input(builder, x)
        x_q, x_scale, x_zero = inputs[x.name]
        base = node.name or layer.key
        alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
        w_scale = builder.constant(f"{source.name}_scale", (scale * np.float32(alpha)))
        accumulated = builder.variable(f"{layer.key}_int32", np.dtype(np.int32))
        operands = [x_q, stored, x_zero] + ([zero_point] if zero_point is not None else [])
        builder.node("MatMulInteger", f"{base}_MatMulInteger", operands, [accumulated])
        as_float = builder.variable(f"{layer.key}_int32_float")
        builder.node("Cast", f"{base}_Cast", [accumulated], [as_float], to=onnx.TensorProto.FLOAT)
        scales = builder.variable(f"{layer.key}_scales")
        builder.node("Mul", f"{base}_scales_Mul", [x_scale, w_scale], [scales])
        output = node.outputs[0]
        bias = _bias(node)
        if bias is None:
            builder.node("Mul", f"{base}_output_Mul", [as_float, scales], [output])
        else:
            product = builder.variable(f"{layer.key}_product")
            builder.node("Mul", f"{base}_output_Mul", [as_float, scales], [product])
            builder.node(
                "Add",
                f"{base}_bias_Add",
                [product, builder.constant(f"{base}_bias", bias)],
                [output],
            )
        node.inputs.clear()
        node.outputs.clear()
        results.append(LayerResult(layer.key, layer.op, weight.sqnr))
    graph.nodes.extend(builder.nodes)
    graph.toposort()
    return results


def _quantized_input(builder: GraphBuilder, x: gs.Tensor) -> tuple[gs.Variable, ...]:
    quantized = builder.variable(f"{x.name}_quantized", np.dtype(np.uint8), x.shape)
    scale = builder.variable(f"{x.name}_scale", _FLOAT32, ())
    zero = builder.variable(f"{x.name}_zero_point", np.dtype(np.uint8), ())
    builder.node(
        "DynamicQuantizeLinear", f"{x.name}_DynamicQuantizeLinear", [x], [quantized, scale, zero]
    )
    return quantized, scale, zero


def _bias(node: gs.Node) -> np.ndarray | None:
    """A Gemm's ``beta * C`` as a constant to add; None for MatMul or a Gemm without C."""
    if node.op != "Gemm" or len(node.inputs) < 3 or not node.inputs[2].name:
        return None
    beta = np.float32(node.attrs.get("beta", 1.0))
    return (read_constant(node.inputs[2]).astype(np.float32) * beta).astype(np.float32)
