"""Dropout in inference mode."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.rewrite import Miss, NoopRule, Scope, fail

__all__ = ["RemoveDropout"]


class RemoveDropout(NoopRule):
    """A Dropout that passes its input through: its mask unused, not in training mode."""

    anchors = ("Dropout",)

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        if len(node.outputs) > 1 and (
            node.outputs[1].outputs or scope.is_protected(node.outputs[1])
        ):
            return fail("its mask is used")
        training = scope.present(node, 2)
        if training is not None:
            mode = scope.constant(training)
            if mode is None or bool(np.any(mode)):
                return fail("it may run in training mode")
        return node.inputs[0]
