"""Cast and CastLike to the type their input already has."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxslim.rewrite import Miss, NoopRule, Scope, element_type, fail

__all__ = ["NoopCast"]


class NoopCast(NoopRule):
    """A Cast or CastLike whose input already has the target element type."""

    anchors = ("Cast", "CastLike")

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        source = node.inputs[0]
        if node.op == "CastLike":
            like = scope.present(node, 1)
            target = element_type(like) if like is not None else None
        else:
            target = node.attrs.get("to")
        known = element_type(source)
        return source if known is not None and known == target else fail("it changes the type")
