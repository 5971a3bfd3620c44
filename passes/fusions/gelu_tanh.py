"""GELU's tanh approximation into Gelu(approximate="tanh")."""

from __future__ import annotations

import math

import onnx_graphsurgeon as gs
from onnxslim.passes.fusions.gelu import GeluRule, one_plus_times_half_x, scaled_operand

from onnxslim.rewrite import Match, MatchResult, Scope, fail

__all__ = ["TanhGeluFusion"]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


class TanhGeluFusion(GeluRule):
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))), with x^3 as Pow(x, 3) or two
    Muls, multiplying by x and 0.5 in whichever order and grouping the exporters write
    (PyTorch, Hugging Face, TensorFlow)."""

    anchors = ("Tanh",)

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        scaled = node.inputs[0]
        rank = scope.rank(scaled)
        scaling = scope.feeder(node, scaled, "Mul", once=True)
        inner = scaled_operand(scaling, _SQRT_2_OVER_PI, rank, scope)
        add = scope.feeder(scaling, inner, "Add", once=True)
        if add is None:
            return fail("its input is not sqrt(2/pi) * (x + ...)")
        for x, cubic in (add.inputs, add.inputs[::-1]):
            cubic_nodes = _cubic_term(cubic, x, add, rank, scope)
            if cubic_nodes is not None:
                break
        else:
            return fail("no 0.044715 * x^3 term")
        tail = one_plus_times_half_x(node.outputs[0], x, rank, scope)
        if tail is None:
            return fail("it is not followed by (1 + tanh) * x * 0.5")
        output, tail_nodes = tail
        nodes = [*cubic_nodes, add, scaling, node, *tail_nodes]
        return Match(nodes, x=x, output=output, approximate="tanh")


def _cubic_term(
    term: gs.Tensor, x: gs.Tensor, into: gs.Node, rank: int | None, scope: Scope
) -> list[gs.Node] | None:
    """The nodes of 0.044715 * x^3, x^3 as Pow(x, 3) or x * (x * x) in either order."""
    scaling = scope.feeder(into, term, "Mul", once=True)
    cube = scaled_operand(scaling, _TANH_CUBIC, rank, scope)
    power = scope.feeder(scaling, cube, "Pow", once=True)
    if power is not None:
        if power.inputs[0] is x and scope.is_scalar(power.inputs[1], 3.0, rank):
            return [power, scaling]
        return None
    product = scope.feeder(scaling, cube, "Mul", once=True)
    squared = scope.other_input(product, x)
    squaring = scope.feeder(product, squared, "Mul", once=True)
    if squaring is None or not all(t is x for t in squaring.inputs):
        return None
    return [squaring, product, scaling]
