"""Pad by nothing."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxslim.rewrite import Miss, NoopRule, Scope, fail

__all__ = ["NoopPad"]


class NoopPad(NoopRule):
    """A Pad whose pads are all zero."""

    anchors = ("Pad",)

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        given, pads = scope.ints_param(node, "pads", 1, 11)
        if given and pads is not None and not any(pads):
            return node.inputs[0]
        return fail("it pads, or its pads are not constant")
