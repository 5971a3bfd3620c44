"""Mul and Div by 1, Add of 0 and Sub of 0, And with True and Or with False."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from onnxslim.model import read_constant, read_constant_bytes
from onnxslim.rewrite import (
    NUMPY_NATIVE_TYPES,
    Miss,
    NoopRule,
    Scope,
    broadcast_keeps,
    element_type,
    fail,
)

__all__ = ["NeutralArithmetic"]

# The neutral element of each op, and which operand positions may hold it.
_NEUTRAL = {
    "Add": (0, (0, 1)),
    "Mul": (1, (0, 1)),
    "Sub": (0, (1,)),
    "Div": (1, (1,)),
    "And": (1, (0, 1)),
    "Or": (0, (0, 1)),
}
# Whether a constant is all ones is read from this many bytes first, so that a real weight is
# told apart without reading all of it.
_PREFIX_BYTES = 4096


class NeutralArithmetic(NoopRule):
    """The other operand of Mul/Div by 1, Add/Sub of 0, And with True or Or with False, where
    the constant does not broadcast it to a larger shape. (Add of +0 turns an input of -0.0
    into +0.0, which no comparison can see.)"""

    anchors = tuple(_NEUTRAL)

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        if len(node.inputs) != 2:
            return fail("it does not have two operands")
        neutral, positions = _NEUTRAL[node.op]
        for position in positions:
            constant, other = node.inputs[position], node.inputs[1 - position]
            if not _filled_with(constant, neutral):
                continue
            sizes = scope.dims(other)
            if sizes is None:
                return fail(
                    "the shape of their other operand is unknown (run infer-shapes)", tell=True
                )
            if broadcast_keeps(sizes, list(constant.shape)):
                return other
            return fail(
                "their neutral constant broadcasts the other operand to a larger shape", tell=True
            )
        return fail("no operand is a neutral constant")


def _filled_with(tensor: gs.Tensor, value: int) -> bool:
    """Whether ``tensor`` is an initializer whose every element equals ``value``."""
    if not isinstance(tensor, gs.Constant) or element_type(tensor) not in NUMPY_NATIVE_TYPES:
        return False
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(element_type(tensor))).newbyteorder("<")
    prefix = read_constant_bytes(tensor, _PREFIX_BYTES)
    count = len(prefix) // dtype.itemsize
    if not np.all(np.frombuffer(prefix, dtype, count) == value):
        return False
    return count == int(np.prod(tensor.shape)) or bool(np.all(read_constant(tensor) == value))
