"""Transpose after Transpose: one Transpose, or none when they cancel."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnxslim.passes.eliminations.chain import ChainRule

from onnxslim.rewrite import Match, MatchResult, Scope, fail

__all__ = ["MergeTransposes"]


class MergeTransposes(ChainRule):
    """Two Transposes compose into one permutation; the identity removes both."""

    anchors = ("Transpose",)
    feeders = frozenset({"Transpose"})

    def match_pair(self, first: gs.Node, second: gs.Node, scope: Scope) -> MatchResult:
        source = first.inputs[0]
        perm1, perm2 = first.attrs.get("perm"), second.attrs.get("perm")
        if perm1 is None and perm2 is None:  # two reversals
            rank = scope.rank(source)
            composed = None if rank is None else list(range(rank))
            identity = True
        else:
            rank = len(perm1 if perm1 is not None else perm2)
            perm1 = list(perm1) if perm1 is not None else list(reversed(range(rank)))
            perm2 = list(perm2) if perm2 is not None else list(reversed(range(rank)))
            if len(perm1) != len(perm2):
                return fail("their ranks differ")
            composed = [perm1[axis] for axis in perm2]
            identity = composed == list(range(rank))
        if identity and scope.can_bypass(second, source):
            return Match([first, second], source=source, perm=None)
        if composed is None:
            return fail("the rank is unknown")
        # Where a graph output needs it, an identity stays as one node instead of two.
        return Match([first, second], source=source, perm=composed)

    def rewrite(self, match: Match) -> None:
        first, second = match.nodes
        if match.perm is None:
            match.scope.bypass(second, match.source)
        else:
            second.inputs[0] = match.source
            second.attrs["perm"] = match.perm
        match.scope.detach(first)
