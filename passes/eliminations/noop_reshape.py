"""Reshape to the shape its input already has."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxslim.rewrite import Miss, NoopRule, Scope, fail, static_dim

__all__ = ["NoopReshape"]


class NoopReshape(NoopRule):
    """A Reshape whose target, read with its 0 (copy) and -1 (infer) entries, is the input's
    own shape."""

    anchors = ("Reshape",)

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        source, sizes = node.inputs[0], scope.dims(node.inputs[0])
        _, target = scope.ints_param(node, "shape", 1, 5)
        if target is None or sizes is None or len(target) != len(sizes):
            return fail("the target or the input's rank is unknown, or they differ")
        allowzero = bool(node.attrs.get("allowzero", 0))
        inferred = None
        for position, (dim, wanted) in enumerate(zip(sizes, target, strict=True)):
            if wanted == 0 and not allowzero:
                continue  # copies the input's dim
            if wanted == -1 and inferred is None:
                inferred = position
            elif static_dim(dim) != wanted:
                return fail("it changes a dim")
        # -1 takes what the other dims leave: the input's own dim, unless another one is 0.
        if inferred is not None and any(
            static_dim(d) == 0 for i, d in enumerate(sizes) if i != inferred
        ):
            return fail("its -1 meets an empty dim")
        return source
