"""Squeeze then Unsqueeze of the same axes, or the reverse: the input back."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnxslim.passes.eliminations.chain import ChainRule

from onnxslim.rewrite import Match, MatchResult, Scope, fail, normalized_axes, static_dim

__all__ = ["CancelSqueezes"]


class CancelSqueezes(ChainRule):
    """A Squeeze and an Unsqueeze of the same axes, in either order, cancel."""

    anchors = ("Squeeze", "Unsqueeze")
    feeders = frozenset({"Squeeze", "Unsqueeze"})

    def match_pair(self, first: gs.Node, second: gs.Node, scope: Scope) -> MatchResult:
        if first.op == second.op:
            return fail("both squeeze, or both unsqueeze")
        source, middle = first.inputs[0], first.outputs[0]
        squeeze, unsqueeze = (first, second) if first.op == "Squeeze" else (second, first)
        _, unsqueeze_axes = scope.ints_param(unsqueeze, "axes", 1, 13)
        if unsqueeze_axes is None:
            return fail("the Unsqueeze axes are unknown")
        # Both sets of axes count in the rank of the tensor that has the unit dims.
        if first.op == "Squeeze":
            wide = source
            rank = scope.rank(source, second.outputs[0])
        else:
            wide = middle
            rank = scope.rank(middle)
            if rank is None and scope.rank(source) is not None:
                rank = scope.rank(source) + len(unsqueeze_axes)
        squeeze_axes = _squeeze_axes(squeeze, wide, rank, scope)
        unsqueeze_axes = normalized_axes(unsqueeze_axes, rank)
        if squeeze_axes is None or unsqueeze_axes is None:
            return fail("the axes are unknown")
        if sorted(squeeze_axes) != sorted(unsqueeze_axes):
            return fail("their axes differ")
        if not scope.can_bypass(second, source):
            return fail("the output is a graph output that only it can name")
        return Match([first, second], source=source)

    def rewrite(self, match: Match) -> None:
        first, second = match.nodes
        match.scope.bypass(second, match.source)
        match.scope.detach(first)


def _squeeze_axes(node: gs.Node, wide: gs.Tensor, rank: int | None, scope: Scope):
    """The axes a Squeeze removes from ``wide``, counted from 0; without an axes parameter,
    the unit dims, which must then all be static."""
    given, axes = scope.ints_param(node, "axes", 1, 13)
    if given:
        return None if axes is None else normalized_axes(axes, rank)
    sizes = scope.dims(wide)
    if sizes is None or any(static_dim(d) is None for d in sizes):
        return None
    return [i for i, d in enumerate(sizes) if d == 1]
