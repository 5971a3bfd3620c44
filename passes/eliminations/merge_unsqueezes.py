"""Unsqueeze after Unsqueeze: one Unsqueeze of all the new axes."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxslim.rewrite import Match, MatchResult, Rule, Scope, fail, normalized_axes

__all__ = ["MergeUnsqueezes", "merged_unsqueeze_axes"]


class MergeUnsqueezes(Rule):
    """``Unsqueeze(Unsqueeze(x, a), b)`` is ``Unsqueeze(x, c)``: ``b`` counted in the output,
    and each axis of ``a`` where the intermediate tensor's axes land among the output's. The
    anchor is the first Unsqueeze; where several Unsqueezes (and nothing else) read it, each
    reads ``x`` instead, and the first goes."""

    anchors = ("Unsqueeze",)

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        middle = node.outputs[0]
        readers = scope.readers(middle)
        if scope.is_protected(middle) or not readers:
            return fail("its output is a graph output or unread")
        if any(
            not scope.is_op(r, "Unsqueeze")
            or r.inputs[0] is not middle
            or any(t is middle for t in r.inputs[1:])
            for r in readers
        ):
            return fail("something other than an Unsqueeze's data input reads it")
        if any(scope.graph_of(r) is not scope.graph_of(node) for r in readers):
            return fail("it is read in another graph")
        _, inner = scope.ints_param(node, "axes", 1, 13)
        rank = scope.rank(node.inputs[0])
        if inner is None or rank is None:
            return fail("its axes or its input's rank are unknown")
        merged = []
        for reader in readers:
            _, outer = scope.ints_param(reader, "axes", 1, 13)
            axes = None if outer is None else merged_unsqueeze_axes(inner, outer, rank)
            if axes is None:
                return fail("a reader's axes are unknown, out of range or repeated")
            merged.append(axes)
        return Match([node, *readers], readers=readers, merged=merged)

    def rewrite(self, match: Match) -> None:
        source = match.node.inputs[0]
        for reader, axes in zip(match.readers, match.merged, strict=True):
            reader.inputs[0] = source
            match.scope.set_ints_param(reader, "axes", 1, 13, axes)
        match.scope.detach(match.node)


def merged_unsqueeze_axes(inner: list[int], outer: list[int], rank: int) -> list[int] | None:
    """The axes one Unsqueeze of a rank-``rank`` tensor needs to insert what ``inner`` then
    ``outer`` insert."""
    middle_rank = rank + len(inner)
    final_rank = middle_rank + len(outer)
    inner_axes = normalized_axes(inner, middle_rank)
    outer_axes = normalized_axes(outer, final_rank)
    if inner_axes is None or outer_axes is None:
        return None
    if not all(0 <= a < middle_rank for a in inner_axes) or not all(
        0 <= a < final_rank for a in outer_axes
    ):
        return None
    kept = [axis for axis in range(final_rank) if axis not in outer_axes]
    return sorted(outer_axes + [kept[axis] for axis in inner_axes])
