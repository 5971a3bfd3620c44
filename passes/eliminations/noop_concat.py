"""Concat of one input."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxslim.rewrite import Miss, NoopRule, Scope, fail

__all__ = ["NoopConcat"]


class NoopConcat(NoopRule):
    """A Concat with a single input."""

    anchors = ("Concat",)

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        return node.inputs[0] if len(node.inputs) == 1 else fail("it joins several inputs")
