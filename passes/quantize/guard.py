"""The accuracy guard: which layers to keep float so that the result meets its floor.

Sensitivity comes from one run, not one per layer. Every quantized layer gets a *shadow* in
a copy of the float model: the same op reading its quantized inputs and weights, beside the
original. One run of that model gives each layer's own error, the SQNR of its shadow's output
against its float output, free of the errors accumulated before it (:func:`add_shadows`).

Layers are then kept float worst first, 1, 2, 4... of them until the floor holds, and the
count is bisected between the last miss and the first hit (:func:`keep_float_until`): about
2·log2(L) evaluations on the held-out samples for L layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.quantize.evaluate import Quality, QualityFloor
from onnxslim.passes.quantize.graph import GraphBuilder, QuantizedWeight
from onnxslim.passes.quantize.layers import Layer
from onnxslim.passes.quantize.numerics import QuantParams

__all__ = ["add_shadows", "GuardResult", "keep_float_until"]

_FLOAT32 = np.dtype(np.float32)


def add_shadows(
    graph: gs.Graph,
    layers: list[Layer],
    activation_params: Mapping[str, QuantParams] | None,
    weight_of: Callable[[Layer], QuantizedWeight | None],
) -> dict[str, str]:
    """Give each of ``layers`` (nodes of ``graph``, a float model) a shadow that reads
    quantized inputs: Q/DQ with ``activation_params`` (static; a tensor without parameters
    stays float) or, when that is None, DynamicQuantizeLinear -> DequantizeLinear on the first
    input; and its weight as ``weight_of`` quantizes it. Returns, per layer key, the name of
    its shadow's output."""
    builder = GraphBuilder(graph)
    inputs: dict[str, gs.Tensor] = {}
    weights: dict[tuple, gs.Tensor] = {}

    def quantized_input(tensor: gs.Tensor) -> gs.Tensor:
        if tensor.name not in inputs:
            inputs[tensor.name] = _quantized(builder, tensor, activation_params)
        return inputs[tensor.name]

    shadows = {}
    for layer in layers:
        node = layer.node
        reads = list(node.inputs)
        indices = layer.activations if activation_params is not None else [0]
        for index in indices:
            reads[index] = quantized_input(node.inputs[index])
        weight = weight_of(layer) if layer.source is not None else None
        if weight is not None:
            source = layer.source
            key = (source.key, id(weight))
            if key not in weights:
                stored = builder.constant(
                    f"{source.name}_shadow_quantized", weight.values, weight.params.qtype
                )
                weights[key] = builder.dequantized(
                    f"{source.name}_shadow", stored, weight.params, source.tensor
                )
            reads[layer.weight] = weights[key]
        output = builder.variable(f"{layer.key}_shadow", _FLOAT32, node.outputs[0].shape)
        shadow = builder.node(node.op, f"{node.name or layer.key}_shadow", reads, [output])
        shadow.attrs.update(node.attrs)
        shadow.domain = node.domain
        shadows[layer.key] = output.name
    graph.nodes.extend(builder.nodes)
    graph.toposort()
    return shadows


def _quantized(
    builder: GraphBuilder, tensor: gs.Tensor, params: Mapping[str, QuantParams] | None
) -> gs.Tensor:
    """``tensor`` after the quantization a layer's input goes through, in float."""
    restored = builder.variable(f"{tensor.name}_shadow_input", _FLOAT32, tensor.shape)
    if params is None:
        quantized = builder.variable(f"{tensor.name}_shadow_q", np.dtype(np.uint8), tensor.shape)
        scale = builder.variable(f"{tensor.name}_shadow_scale", _FLOAT32, ())
        zero = builder.variable(f"{tensor.name}_shadow_zero", np.dtype(np.uint8), ())
        builder.node(
            "DynamicQuantizeLinear", f"{tensor.name}_shadow_DQL", [tensor], [quantized, scale, zero]
        )
        builder.node(
            "DequantizeLinear", f"{tensor.name}_shadow_DQ", [quantized, scale, zero], [restored]
        )
        return restored
    if tensor.name not in params:
        return tensor
    own = params[tensor.name]
    constants = builder.params(f"{tensor.name}_shadow", own)
    quantized = builder.variable(f"{tensor.name}_shadow_q", own.qtype.storage, tensor.shape)
    builder.node(
        "QuantizeLinear", f"{tensor.name}_shadow_Q", [tensor, *constants], [quantized], own
    )
    builder.node(
        "DequantizeLinear", f"{tensor.name}_shadow_DQ", [quantized, *constants], [restored], own
    )
    return restored


@dataclass
class GuardResult:
    """The layers kept float, the quality reached with them, and how many variants the
    search evaluated."""

    kept: list[str]
    quality: Quality
    evaluations: int


def keep_float_until(
    ranked: list[str], evaluate: Callable[[list[str]], Quality], floor: QualityFloor
) -> GuardResult | None:
    """The fewest of ``ranked`` (most sensitive first) to keep float for ``evaluate`` to meet
    ``floor``, at least one layer staying quantized; None when no such count exists.

    Counts grow 1, 2, 4, ... to the first that meets the floor, then the gap to the last
    count that missed is bisected (quality is assumed to grow with the count).
    """
    tried: dict[int, Quality] = {}

    def meets(count: int) -> bool:
        tried[count] = evaluate(ranked[:count])
        return tried[count].meets(floor)

    limit = len(ranked) - 1
    low, high = 0, 1
    while high <= limit and not meets(high):
        low, high = high, min(high * 2, limit) if high < limit else limit + 1
    if high > limit:
        return None
    while high - low > 1:
        middle = (low + high) // 2
        if meets(middle):
            high = middle
        else:
            low = middle
    return GuardResult(ranked[:high], tried[high], len(tried))
