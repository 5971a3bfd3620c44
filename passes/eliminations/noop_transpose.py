"""Transpose with the identity permutation."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnxslim.passes.eliminations.transpose_through import is_identity_perm

from onnxslim.rewrite import Miss, NoopRule, Scope, fail

__all__ = ["NoopTranspose"]


class NoopTranspose(NoopRule):
    """A Transpose that keeps every axis in place (or reverses a tensor of rank 0 or 1)."""

    anchors = ("Transpose",)

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        source, perm = node.inputs[0], node.attrs.get("perm")
        if perm is None:  # reverses the dims
            rank = scope.rank(source)
            return source if rank is not None and rank <= 1 else fail("it reverses the dims")
        return source if is_identity_perm(perm) else fail("it moves an axis")
