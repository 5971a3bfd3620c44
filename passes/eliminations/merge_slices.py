"""Slice after Slice: one Slice."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnxslim.passes.eliminations.chain import ChainRule
from onnxslim.passes.eliminations.slices import SliceSpec, merged_range

from onnxslim.rewrite import Match, MatchResult, Scope, fail, static_dim

__all__ = ["MergeSlices"]


class MergeSlices(ChainRule):
    """Slices of disjoint axes become one; on a shared axis both must step by 1, and the
    indices must be non-negative or the dim static."""

    anchors = ("Slice",)
    feeders = frozenset({"Slice"})

    def match_pair(self, first: gs.Node, second: gs.Node, scope: Scope) -> MatchResult:
        source = first.inputs[0]
        specs = (SliceSpec.of(first, scope), SliceSpec.of(second, scope))
        if specs[0] is None or specs[1] is None:
            return fail("a parameter is not constant")
        rank, sizes = scope.rank(source), scope.dims(source)
        by_axis1, by_axis2 = specs[0].by_axis(rank), specs[1].by_axis(rank)
        if by_axis1 is None or by_axis2 is None:
            return fail("the axes are unknown")
        merged = {**by_axis1, **by_axis2}
        for axis in by_axis1.keys() & by_axis2.keys():
            (start1, end1, step1), (start2, end2, step2) = by_axis1[axis], by_axis2[axis]
            if step1 != 1 or step2 != 1:
                return fail("they step on a shared axis")
            dim = static_dim(sizes[axis]) if sizes is not None and axis < len(sizes) else None
            bounds = merged_range((start1, end1), (start2, end2), dim)
            if bounds is None:
                return fail("a shared axis has negative indices and an unknown size")
            merged[axis] = (*bounds, 1)
        return Match([first, second], source=source, merged=merged)

    def rewrite(self, match: Match) -> None:
        first, second = match.nodes
        second.inputs[0] = match.source
        match.scope.detach(first)
        merged = match.merged
        axes = sorted(merged)
        columns = {
            "starts": [merged[a][0] for a in axes],
            "ends": [merged[a][1] for a in axes],
            "axes": axes,
            "steps": [merged[a][2] for a in axes],
        }
        if match.scope.opset < 10:  # no steps before opset 10: they are all 1 here
            del columns["steps"]
        for index, (name, values) in enumerate(columns.items(), 1):
            match.scope.set_ints_param(second, name, index, 10, values)
