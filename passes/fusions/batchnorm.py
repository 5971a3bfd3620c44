"""BatchNormalization into the Conv, ConvTranspose or Gemm before it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.fusions.channel_linear import float_constant, linear_before

from onnxslim.rewrite import Match, MatchResult, Rule, Scope, fail

__all__ = ["BatchNormIntoLinear"]


class BatchNormIntoLinear(Rule):
    """An inference-mode BatchNormalization whose input only it reads, made by an op with
    constant float weights: its scale and shift go into the weights and the bias."""

    anchors = ("BatchNormalization",)

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        if not _is_inference_batchnorm(node, scope):
            return fail(
                "it is not an inference-mode BatchNormalization with running statistics",
                tell=True,
            )
        found = linear_before(node, scope)
        if found is None or found[1] is not node.inputs[0]:
            return fail(
                "its input is not the output of a Conv, ConvTranspose or Gemm with constant "
                "weights that only it reads",
                tell=True,
            )
        linear = found[0]
        params = [float_constant(t) for t in node.inputs[1:5]]
        if any(p is None or p.shape != (linear.channels,) for p in params):
            return fail("its statistics are not constant per channel", tell=True)
        scale, shift, mean, variance = (p.astype(np.float64) for p in params)
        epsilon = float(node.attrs.get("epsilon", 1e-5))
        with np.errstate(all="ignore"):
            factor = scale / np.sqrt(variance + epsilon)
            offset = shift - mean * factor
        absorbed = linear.absorb(factor, offset, node, scope)
        return Match([node], absorbed=absorbed) if absorbed else absorbed

    def rewrite(self, match: Match) -> None:
        match.absorbed.apply(match.scope)


def _is_inference_batchnorm(node: gs.Node, scope: Scope) -> bool:
    """One output, running statistics, one statistic per channel (not ``spatial=0``)."""
    if len(node.outputs) != 1 or len(node.inputs) != 5:
        return False
    if node.attrs.get("training_mode", 0) or not node.attrs.get("spatial", 1):
        return False
    # Before opset 7, is_test=0 (the default) asked for batch statistics.
    return scope.opset >= 7 or bool(node.attrs.get("is_test", 0))
