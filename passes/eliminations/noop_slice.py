"""Slice that keeps every element."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnxslim.passes.eliminations.slices import INT64_MAX, SliceSpec, clamped

from onnxslim.rewrite import Miss, NoopRule, Scope, fail, static_dim

__all__ = ["NoopSlice"]


class NoopSlice(NoopRule):
    """A Slice that steps by 1 from the start to the end of every axis it names."""

    anchors = ("Slice",)

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        source, sizes = node.inputs[0], scope.dims(node.inputs[0])
        spec = SliceSpec.of(node, scope)
        by_axis = spec.by_axis(scope.rank(source)) if spec is not None else None
        if by_axis is None:
            return fail("its parameters or axes are unknown")
        for axis, (start, end, step) in by_axis.items():
            dim = static_dim(sizes[axis]) if sizes is not None and axis < len(sizes) else None
            if step != 1:
                return fail("it steps")
            if dim is None:
                if start != 0 or end < INT64_MAX:
                    return fail("it may crop an axis of unknown size")
            elif clamped(start, dim) != 0 or clamped(end, dim) != dim:
                return fail("it crops")
        return source
