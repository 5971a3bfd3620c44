"""Exact GELU, 0.5 * x * (1 + erf(x / sqrt(2))), into Gelu."""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs
from onnxslim.passes.fusions.gelu import GeluRule, one_plus_times_half_x, scaled_operand

from onnxslim.rewrite import Match, MatchResult, Scope, fail

__all__ = ["ErfGeluFusion"]

_SQRT2 = math.sqrt(2.0)


class ErfGeluFusion(GeluRule):
    """0.5 * x * (1 + erf(x / sqrt(2))), with Div by sqrt(2) or Mul by 1/sqrt(2), multiplying
    by x and 0.5 in whichever order and grouping the exporters write."""

    anchors = ("Erf",)

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        scaled = node.inputs[0]
        rank = scope.rank(scaled)
        scaling = scope.feeder(node, scaled, "Div", once=True)
        if scaling is not None:
            x = scaling.inputs[0] if scope.is_scalar(scaling.inputs[1], _SQRT2, rank) else None
        else:
            scaling = scope.feeder(node, scaled, "Mul", once=True)
            x = scaled_operand(scaling, 1 / _SQRT2, rank, scope)
        if x is None:
            return fail("its input is not x / sqrt(2)")
        tail = one_plus_times_half_x(node.outputs[0], x, rank, scope)
        if tail is None:
            return fail("it is not followed by (1 + erf) * x * 0.5")
        output, tail_nodes = tail
        return Match([scaling, node, *tail_nodes], x=x, output=output, approximate="none")
