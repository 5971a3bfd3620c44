"""What the chain rules share: a node and the one that feeds it, merged into one or none."""

from __future__ import annotations

from typing import ClassVar

import onnx_graphsurgeon as gs

from onnxslim.rewrite import MatchResult, Rule, Scope, fail

__all__ = ["ChainRule"]


class ChainRule(Rule):
    """A rule for a node (the anchor, ``second``) whose first input is the first output of a
    ``feeders`` node (``first``) in the same graph that nothing else reads, so that merging
    the two removes ``first``."""

    feeders: ClassVar[frozenset[str]] = frozenset()

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        middle = node.inputs[0] if node.inputs else None
        first = scope.feeder(node, middle, self.feeders)
        if first is None or not first.inputs or first.outputs[0] is not middle:
            return fail(f"its input is not made for it alone by {', '.join(sorted(self.feeders))}")
        if len(middle.outputs) != 1:
            return fail("it reads its input twice")
        return self.match_pair(first, node, scope)

    def match_pair(self, first: gs.Node, second: gs.Node, scope: Scope) -> MatchResult:
        raise NotImplementedError
