"""GraphEmitter: appends ONNX nodes and constants to a graph under construction.

Losses, gradients and optimizer steps are all written as plain ONNX nodes added to the
student's graph. They share this small vocabulary: fresh names under one prefix (so nothing
collides with the student's names), constants of a given dtype (deduplicated), and the few
ops whose form changed between opsets (reductions take their axes as an attribute or as an
input depending on the op and the opset).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["GraphEmitter", "AXES_AS_INPUT_SINCE"]

# The opset from which each reduction takes ``axes`` as an input instead of an attribute.
AXES_AS_INPUT_SINCE = {
    "ReduceSum": 13,
    "ReduceMean": 18,
    "ReduceMax": 18,
    "ReduceMin": 18,
    "ReduceProd": 18,
    "ReduceL2": 18,
    "ReduceSumSquare": 18,
    "ReduceLogSumExp": 18,
}


class GraphEmitter:
    """Nodes and initializers to append to a graph, named ``<prefix><hint>_<n>``.

    >>> emit = GraphEmitter("loss/", opset=17)
    >>> half = emit.constant(0.5, np.float32)
    >>> y = emit.op("Mul", ["x", half])
    >>> [n.op_type for n in emit.nodes], y
    (['Mul'], 'loss/mul_2')
    """

    def __init__(self, prefix: str, opset: int) -> None:
        self.prefix = prefix
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._constants: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        output: str | None = None,
        *,
        domain: str = "",
        **attrs: Any,
    ) -> str:
        """Append one node with a single output; that output's name."""
        return self.op_multi(
            op_type, inputs, [output or self.fresh(op_type.lower())], domain=domain, **attrs
        )[0]

    def op_multi(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | int,
        *,
        domain: str = "",
        **attrs: Any,
    ) -> list[str]:
        """Append one node with several outputs (a count gets fresh names); their names."""
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{op_type.lower()}{i}") for i in range(outputs)]
        attrs = {key: value for key, value in attrs.items() if value is not None}
        node = helper.make_node(
            op_type, list(inputs), list(outputs), name=self.fresh(op_type), domain=domain, **attrs
        )
        self.nodes.append(node)
        return list(outputs)

    def constant(self, value: Any, dtype: Any = np.float32) -> str:
        """An initializer holding ``value`` as ``dtype``; equal constants share one."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant (shapes, axes, pads)."""
        return self.constant(list(values), np.int64)

    # -- ops whose form depends on the opset

    def reduce(
        self,
        op_type: str,
        tensor: str,
        axes: Sequence[int] | str | None,
        *,
        keepdims: bool,
        output: str | None = None,
    ) -> str:
        """``op_type`` (ReduceSum, ReduceMean, ...) over ``axes``: a list, a 1-D int64 tensor
        name (input form only), or None for all axes."""
        keep = int(keepdims)
        if axes is None:
            return self.op(op_type, [tensor], output, keepdims=keep)
        if self.opset >= AXES_AS_INPUT_SINCE[op_type]:
            axes_input = axes if isinstance(axes, str) else self.ints(axes)
            return self.op(op_type, [tensor, axes_input], output, keepdims=keep)
        if isinstance(axes, str):
            raise ValueError(f"{op_type} at opset {self.opset} needs constant axes")
        return self.op(op_type, [tensor], output, axes=list(axes), keepdims=keep)

    def unsqueeze(self, tensor: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [tensor, self.ints(axes)])
        return self.op("Unsqueeze", [tensor], axes=list(axes))

    def squeeze(self, tensor: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", [tensor, self.ints(axes)])
        return self.op("Squeeze", [tensor], axes=list(axes))
