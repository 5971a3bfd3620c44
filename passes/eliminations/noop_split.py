"""Split into one output."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxslim.rewrite import Miss, NoopRule, Scope, fail, normalized_axes, static_dim

__all__ = ["NoopSplit"]


class NoopSplit(NoopRule):
    """A Split with one output, which is then its whole input."""

    anchors = ("Split",)

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        source = node.inputs[0]
        if len(node.outputs) != 1:
            return fail("it has several outputs")
        given, split = scope.ints_param(node, "split", 1, 13)
        if not given:
            return source
        sizes = scope.dims(source)
        axes = normalized_axes([node.attrs.get("axis", 0)], scope.rank(source))
        if split is None or sizes is None or axes is None or len(split) != 1:
            return fail("its split or the input's shape is unknown")
        return source if static_dim(sizes[axes[0]]) == split[0] else fail("it crops")
