"""The accuracy guard: which layers to keep float so that the result meets its floor.

Sensitivity comes from one run, not one per layer. Every quantized layer gets a *shadow* in
a copy of the float model: the same op reading its quantized inputs and weights, beside the
original. One run of that model gives each layer's own error, the SQNR of its shadow's output
against its float output, free of the errors accumulated before it (:func:`add_shadows`).

Layers are then kept float worst first, as many as it takes for the floor to hold, found in
a few evaluations on the held-out samples (:func:`keep_float_until`). A variant is accepted
when the *lower confidence bound* of its held-out agreement meets the floor, not its mean
(see ``evaluate``): the search stops at the first variant that passes, so a test on the mean
picks the variant that was lucky on a few samples (the PP-OCR recognizer: mean cosine 0.9907
on 16 held-out lines, 0.9815 on 64 others). The per-layer noise gives the first guess: the
output's error is taken as proportional to the noise of the layers still quantized, scaled
to what the all-quantized model measured. Each evaluation rescales that model to what it
measured; once a miss and a hit bracket the count, the guesses interpolate between them,
with bisection whenever a guess narrows the bracket too little. MiniLM-L6 keeping 9 of 39
layers float: 4 evaluations where doubling and bisection took 8.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    ranked: Sequence[str],
    evaluate: Callable[[list[str]], Quality],
    floor: QualityFloor,
    start: Quality,
    noise: Sequence[float] = (),
) -> GuardResult | None:
    """The fewest of ``ranked`` (most sensitive first) to keep float for ``evaluate`` to meet
    ``floor``, at least one layer staying quantized; None when no such count exists.

    ``start`` is the quality with every layer quantized (a miss); ``noise`` the noise power
    of each ranked layer's own output relative to its signal (``10 ** (-SQNR / 10)``), which
    guides the guesses (without it: counts 1, 2, 4... then bisection). Quality is assumed to
    grow with the count.
    """
    limit = len(ranked) - 1
    if limit < 1:
        return None
    guide = _Guide(noise, floor) if len(noise) == len(ranked) else None
    tried: dict[int, Quality] = {0: start}
    low, high, width = 0, None, limit + 1
    while high is None or high - low > 1:
        count = guide.next(low, high, tried) if guide else None
        if count is None or (high is not None and high - low > width / 2):
            count = min(max(2 * low, 1), limit) if high is None else (low + high) // 2
        width = (high if high is not None else limit + 1) - low
        tried[count] = evaluate(list(ranked[:count]))
        if tried[count].meets(floor):
            high = count
        elif count >= limit:
            return None
        else:
            low = count
    return GuardResult(list(ranked[:high]), tried[high], len(tried) - 1)


class _Guide:
    """Guesses the count to keep float from the per-layer noise: the output's shortfall (its
    error as a share of what the floor allows) is taken to be proportional to the noise of
    the layers still quantized."""

    def __init__(self, noise: Sequence[float], floor: QualityFloor) -> None:
        total = float(sum(noise))
        tails = np.cumsum(np.asarray(noise, np.float64)[::-1])[::-1] / total if total else None
        # tail[c]: the share of the noise left with the c worst layers kept float.
        self.tail = None if tails is None else [*tails.tolist(), 0.0]
        self.allowed = None if floor.min_cosine is None else 1.0 - floor.min_cosine

    def shortfall(self, quality: Quality) -> float | None:
        """The worst output's error (1 - the cosine's lower bound, which the floor is
        checked against) as a share of the floor's allowance."""
        if not self.allowed or not any(o.cosine is not None for o in quality.outputs):
            return None
        return (1.0 - quality.cosine_bound) / self.allowed

    def next(self, low: int, high: int | None, tried: dict[int, Quality]) -> int | None:
        """A count strictly between ``low`` (a miss) and ``high`` (a hit; None: none yet),
        or None when nothing can be predicted."""
        if self.tail is None:
            return None
        miss = self.shortfall(tried[low])
        if miss is None or self.tail[low] <= 0:
            return None
        if high is None:
            # Scale the model to the last miss and find where it reaches the allowance.
            target, last = self.tail[low] / miss, len(self.tail) - 2
        else:
            hit = self.shortfall(tried[high])
            spread = self.tail[low] - self.tail[high]
            if hit is None or miss <= hit or spread <= 0:
                return None
            # Interpolate the shortfall linearly in the remaining noise to where it is 1.
            target = self.tail[high] + (1.0 - hit) * spread / (miss - hit)
            last = high - 1
        count = next((c for c in range(low + 1, last + 1) if self.tail[c] <= target), last)
        return count if low < count <= last else None
