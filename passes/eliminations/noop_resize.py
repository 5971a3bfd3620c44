"""Resize to the size the input already has."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.rewrite import Miss, NoopRule, Scope, fail, normalized_axes, static_dim

__all__ = ["NoopResize"]


class NoopResize(NoopRule):
    """A Resize to the input's size, in any mode that maps each output pixel onto the input
    pixel of the same index (all but tf_crop_and_resize, which reads a region)."""

    anchors = ("Resize",)

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        source = node.inputs[0]
        if node.attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
            return fail("it crops a region")
        scales = scope.present(node, 1 if scope.opset < 11 else 2)
        if scales is not None:
            values = scope.constant(scales)
            if values is None:
                return fail("its scales are not constant")
            if values.size:
                return source if bool(np.all(values == 1)) else fail("it scales")
        sizes = scope.constant_ints(scope.present(node, 3)) if scope.opset >= 11 else None
        known = scope.dims(source)
        if sizes is None or known is None:
            return fail("its sizes or the input's shape are unknown")
        axes = normalized_axes(list(node.attrs.get("axes", range(len(known)))), len(known))
        if axes is None or len(axes) != len(sizes):
            return fail("its axes do not fit")
        if all(static_dim(known[a]) == s for a, s in zip(axes, sizes, strict=True)):
            return source
        return fail("it resizes")
