"""The default quantization scheme for a model: what ``activations=auto`` picks, and why.

* Transformers (linear layers outnumber convolutions, and there is attention or a
  LayerNormalization) get **dynamic** activations. Trained transformers have activation
  outliers, a few channels tens of times larger than the rest on some tokens: a range
  calibrated once wastes most integer levels on them (a pretrained MiniLM calibrated on real
  sentences keeps cosine 0.40 with static ranges), while a range measured per input at run time
  keeps them (0.99). onnxruntime fuses the dynamic form into DynamicQuantizeMatMul.
* Everything else (convolutional networks above all) gets **static** uint8 activations:
  calibrated ranges turn Conv, pools and residual Adds into onnxruntime's QLinear kernels,
  faster than dynamic quantization, whose per-call range computation and lack of integer
  convolution kernels would cost what quantization gains.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_graphsurgeon as gs
from onnxslim.passes.quantize.layers import Layer, is_float_variable

from onnxslim.model import iter_graphs

__all__ = ["choose_activations"]

_NORMS = frozenset(
    {
        "LayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "RMSNormalization",
    }
)


def choose_activations(graph: gs.Graph, layers: Sequence[Layer]) -> tuple[str, str]:
    """``dynamic`` or ``uint8`` for ``graph`` (whose weight ``layers`` are given), with the
    reason in words for the report."""
    linear = sum(layer.op in ("MatMul", "Gemm") for layer in layers)
    convolutions = sum(layer.op == "Conv" for layer in layers)
    ops = {node.op for g in iter_graphs(graph) for node in g.nodes}
    attention = "Softmax" in ops and any(
        node.op == "MatMul" and all(is_float_variable(t) for t in node.inputs)
        for g in iter_graphs(graph)
        for node in g.nodes
    )
    norms = sorted(ops & _NORMS)
    if linear > convolutions and (attention or norms):
        signs = ", ".join((["attention"] if attention else []) + norms)
        return "dynamic", (
            f"a transformer ({linear} MatMul/Gemm layers; {signs}): activation ranges "
            "measured per input at run time keep the outlier channels trained transformers have"
        )
    kind = f"{convolutions} Conv layers" if convolutions else f"{linear} linear layers"
    return "uint8", (
        f"{kind}, no attention: calibrated uint8 activations for onnxruntime's QLinear kernels"
    )
