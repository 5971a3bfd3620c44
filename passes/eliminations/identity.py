"""Identity."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxslim.rewrite import Miss, NoopRule, Scope

__all__ = ["RemoveIdentity"]


class RemoveIdentity(NoopRule):
    """An Identity node: its readers read its input."""

    anchors = ("Identity",)

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        return node.inputs[0]
