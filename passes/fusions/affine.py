"""Add, Sub, Mul or Div by a per-channel constant into the Conv, ConvTranspose or Gemm before."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.fusions.channel_linear import float_constant, linear_before, per_channel

from onnxslim.rewrite import Match, MatchResult, Rule, Scope, fail

__all__ = ["AffineIntoLinear"]


class AffineIntoLinear(Rule):
    """``op(x) (+ - * /) c`` with ``c`` constant per output channel (broadcast as ``[C,1,1]``,
    ``[1,C,1,1]``, a scalar, or ``[N]`` for Gemm): the weights and bias absorb it."""

    anchors = ("Add", "Sub", "Mul", "Div")

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        if len(node.inputs) != 2:
            return fail("it does not have two operands")
        found = linear_before(node, scope)
        if found is None:
            return fail("no operand is a linear op's output that only it reads")
        linear, tensor = found
        position = 0 if node.inputs[0] is tensor else 1
        other = float_constant(node.inputs[1 - position])
        if other is None or other.dtype != linear.weights.dtype:
            return fail("the other operand is not a constant of the weights' type")
        values = per_channel(other, linear.rank, linear.channels)
        if values is None:
            return fail("the constant is not per channel")
        affine = _as_affine(node.op, values, linear_first=position == 0)
        if affine is None:
            return fail("it divides by the linear op's output")
        absorbed = linear.absorb(*affine, node, scope)
        return Match([node], absorbed=absorbed) if absorbed else absorbed

    def rewrite(self, match: Match) -> None:
        match.absorbed.apply(match.scope)


def _as_affine(
    op: str, values: np.ndarray, linear_first: bool
) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """(scale, shift) such that ``op`` of the linear output and ``values`` is
    ``scale * x + shift``; None for ``values / x``, which is not affine."""
    if op == "Add":
        return None, values
    if op == "Mul":
        return values, None
    if op == "Sub":
        return (None, -values) if linear_first else (-np.ones_like(values), values)
    if linear_first and np.all(values != 0):
        return 1.0 / values, None
    return None
