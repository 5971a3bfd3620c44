"""Reshape after Reshape, Flatten, Squeeze or Unsqueeze: one Reshape."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnxslim.passes.eliminations.chain import ChainRule

from onnxslim.rewrite import Match, MatchResult, Miss, Scope, fail, static_dim

__all__ = ["MergeReshapes"]


class MergeReshapes(ChainRule):
    """Reshape(view(x)) is Reshape(x), except where the second's 0 copies a dim that only the
    intermediate tensor has: then the dim is written out, when it is static."""

    anchors = ("Reshape",)
    feeders = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})

    def match_pair(self, first: gs.Node, second: gs.Node, scope: Scope) -> MatchResult:
        given, target = scope.ints_param(second, "shape", 1, 5)
        if not given:
            return fail("it has no shape")
        resolved = target
        if not second.attrs.get("allowzero", 0):
            if target is None:
                return fail("its shape is computed at run time and may copy dims")
            resolved = _copied_dims_written_out(first, second, target, scope)
            if isinstance(resolved, Miss):
                return resolved
        return Match([first, second], target=target, resolved=resolved)

    def rewrite(self, match: Match) -> None:
        first, second = match.nodes
        second.inputs[0] = first.inputs[0]
        match.scope.detach(first)
        if match.resolved != match.target:
            match.scope.set_ints_param(second, "shape", 1, 5, match.resolved)


def _copied_dims_written_out(
    first: gs.Node, second: gs.Node, target: list[int], scope: Scope
) -> list[int] | Miss:
    """``target`` with each 0 that copies a dim of the intermediate tensor replaced by that
    dim, unless the first node copied it from its input too."""
    first_target = None
    if first.op == "Reshape" and not first.attrs.get("allowzero", 0):
        first_target = scope.ints_param(first, "shape", 1, 5)[1]
    middle = scope.dims(second.inputs[0]) or []
    resolved = list(target)
    for position, wanted in enumerate(target):
        if wanted != 0:
            continue
        copied = first_target is not None and position < len(first_target)
        if copied and first_target[position] == 0:
            continue  # the intermediate dim is the input's dim
        dim = static_dim(middle[position]) if position < len(middle) else None
        if not dim:
            return fail(
                "their 0 copies a dim of the intermediate tensor that is not static", tell=True
            )
        resolved[position] = dim
    return resolved
