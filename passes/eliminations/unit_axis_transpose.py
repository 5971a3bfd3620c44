"""A Transpose that moves only axes of size 1: a Reshape, which merges with the one beside it.

Swin's window partition ends in ``[B, 1, 7, 1, 7, C] -> Transpose(0, 1, 3, 2, 4, 5)`` at its
last stage, where one window covers the whole map: the data stays in place, only a unit axis
moves. As a Reshape it joins the Reshapes on either side, and the chain is one node.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.eliminations.transpose_reshape import reshape_target
from onnxslim.passes.eliminations.transpose_through import is_identity_perm, transpose_perm

from onnxslim.rewrite import Match, MatchResult, Rule, Scope, fail

__all__ = ["UnitAxisTranspose"]

RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


class UnitAxisTranspose(Rule):
    """A Transpose whose axes larger than 1 keep their order, next to a Reshape (written by
    one, or read by one alone), becomes a Reshape to its output's dims (a named dim copied
    with 0 where it stays in place, else the one -1)."""

    anchors = ("Transpose",)
    min_opset = 5  # a Reshape's target is an input

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        source = node.inputs[0]
        before, perm = scope.dims(source), transpose_perm(node, scope)
        if before is None or perm is None or None in before:
            return fail("its input's dims are not known")
        moved = [axis for axis in perm if before[axis] != 1]
        if moved != sorted(moved) or is_identity_perm(perm):
            return fail("it moves data, not only axes of size 1")
        beside = scope.producer(source, RESHAPES) or scope.read_once(node.outputs[0], "Reshape")
        if beside is None:
            return fail("no Reshape beside it would absorb it")
        target = reshape_target([before[axis] for axis in perm], before)
        if target is None:
            return fail("its output's dims need more than one -1")
        return Match(node, target=target)

    def rewrite(self, match: Match) -> None:
        node, scope = match.node, match.scope
        base = f"{node.name or node.outputs[0].name}_shape"
        target = scope.new_constant(base, np.array(match.target, dtype=np.int64))
        scope.replace([node], "Reshape", [node.inputs[0], target], list(node.outputs))
