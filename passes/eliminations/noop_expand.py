"""Expand to a shape the input already has."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxslim.rewrite import Miss, NoopRule, Scope, broadcast_keeps, fail

__all__ = ["NoopExpand"]


class NoopExpand(NoopRule):
    """An Expand whose constant shape broadcasts to the input's own shape."""

    anchors = ("Expand",)

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        source, sizes = node.inputs[0], scope.dims(node.inputs[0])
        shape = scope.constant_ints(scope.present(node, 1))
        if shape is None or sizes is None:
            return fail("the shape or the input's rank is unknown")
        return source if broadcast_keeps(sizes, shape) else fail("it broadcasts")
