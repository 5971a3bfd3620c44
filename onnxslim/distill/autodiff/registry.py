"""Gradient rules: one function per op family, registered by op type.

A rule receives a :class:`GradientContext` for one forward node (its inputs, attributes, the
gradients arriving at its outputs) and returns, per input, the name of the tensor holding the
gradient with respect to it, or None. It writes the nodes that compute them with
``ctx.emit``, in ordinary ONNX ops, so any onnxruntime build runs the backward pass.

>>> @gradient("Neg")
... def _neg(ctx):
...     return [ctx.emit.op("Neg", [ctx.dy(0)])]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxslim.distill.autodiff.tensors import Dim, TensorTable
from onnxslim.distill.emitter import GraphEmitter
from onnxslim.distill.errors import GradientError

__all__ = ["GradientRule", "GradientContext", "RULES", "gradient", "rule_for", "reduce_to_shape"]

RuleFunction = Callable[["GradientContext"], Sequence[str | None]]


@dataclass(frozen=True)
class GradientRule:
    """``build`` for ``op``; ``inputs`` are the differentiable input positions (None: all).
    ``integer_outputs``: the op's integer outputs carry gradients too (QuantizeLinear, whose
    integers a DequantizeLinear turns back into floats)."""

    op: str
    inputs: tuple[int, ...] | None
    build: RuleFunction
    integer_outputs: bool = False

    def differentiable(self, position: int) -> bool:
        return self.inputs is None or position in self.inputs


RULES: dict[str, GradientRule] = {}


def gradient(
    *ops: str, inputs: tuple[int, ...] | None = (0,), integer_outputs: bool = False
) -> Callable[[RuleFunction], RuleFunction]:
    """Register the decorated function as the gradient rule of ``ops`` (default domain)."""

    def register(function: RuleFunction) -> RuleFunction:
        for op in ops:
            RULES[op] = GradientRule(op, inputs, function, integer_outputs)
        return function

    return register


def rule_for(node: onnx.NodeProto) -> GradientRule | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return RULES.get(node.op_type)


def _attribute(attribute: onnx.AttributeProto) -> Any:
    """An attribute's value, strings as ``str``."""
    value = helper.get_attribute_value(attribute)
    return value.decode() if isinstance(value, bytes) else value


class GradientContext:
    """One forward node as its rule sees it, and the tools to write its backward nodes."""

    def __init__(
        self,
        node: onnx.NodeProto,
        dys: list[str | None],
        wants: list[bool],
        emit: GraphEmitter,
        table: TensorTable,
        *,
        straight_through: bool = False,
    ) -> None:
        self.node = node
        self.dys = dys
        self.wants = wants
        self.emit = emit
        self.table = table
        self.straight_through = straight_through
        self.attrs: dict[str, Any] = {a.name: _attribute(a) for a in node.attribute}
        self._shapes: dict[str, str] = {}

    # -- the node

    @property
    def op(self) -> str:
        return self.node.op_type

    def input(self, position: int) -> str | None:
        """The name of input ``position``, or None when absent (optional inputs)."""
        if position < len(self.node.input) and self.node.input[position]:
            return self.node.input[position]
        return None

    def output(self, position: int) -> str:
        """The name of output ``position``, added to the forward node when it had none (a
        MaxPool's indices, a LayerNormalization's mean): the backward pass reads it."""
        while len(self.node.output) <= position:
            self.node.output.append("")
        if not self.node.output[position]:
            self.node.output[position] = self.emit.fresh(
                f"{self.node.op_type.lower()}_out{position}"
            )
        return self.node.output[position]

    def dy(self, position: int = 0) -> str | None:
        """The gradient arriving at output ``position``, or None when nothing depends on it."""
        return self.dys[position] if position < len(self.dys) else None

    def dy_or_zeros(self, position: int) -> str:
        dy = self.dy(position)
        return dy if dy is not None else self.zeros_like(self.output(position))

    def wanted(self, position: int) -> bool:
        return position < len(self.wants) and self.wants[position]

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def fail(self, reason: str) -> GradientError:
        """The error to raise when this node's form has no gradient here; say ``reason``."""
        label = f"{self.op} node '{self.node.name}'" if self.node.name else f"{self.op} node"
        return GradientError(f"no gradient for {label}: {reason}")

    # -- facts about forward tensors

    def rank(self, name: str) -> int:
        rank = self.table.rank(name)
        if rank is None:
            raise self.fail(f"the rank of '{name}' is unknown (shape inference could not tell)")
        return rank

    def static_shape(self, name: str, what: str = "shape") -> list[int]:
        shape = self.table.static_shape(name)
        if shape is None:
            raise self.fail(f"its {what} must be static, '{name}' is {self.table.shape(name)}")
        return shape

    def constant(self, name: str | None, what: str) -> np.ndarray:
        """The value of constant input ``name`` (an initializer or Constant node)."""
        value = None if name is None else self.table.value(name)
        if value is None:
            raise self.fail(f"its {what} must be a constant")
        return value

    def dtype(self, name: str) -> np.dtype:
        dtype = self.table.dtype(name)
        if dtype is None:
            raise self.fail(f"the element type of '{name}' is unknown")
        return dtype

    # -- building blocks

    def scalar(self, value: float, like: str) -> str:
        """A scalar constant of ``like``'s element type."""
        return self.emit.constant(value, self.dtype(like))

    def shape_of(self, name: str) -> str:
        """``Shape(name)``, one node per tensor however often it is asked for."""
        if name not in self._shapes:
            self._shapes[name] = self.emit.op("Shape", [name])
        return self._shapes[name]

    def masked(self, grad: str, condition: str, like: str) -> str:
        """``grad`` where ``condition`` holds, zero elsewhere. A product with the condition
        cast to floats: several times faster than Where in onnxruntime's CPU kernels."""
        mask = self.emit.op("Cast", [condition], to=int(self.table.elem_type(like)))
        return self.emit.op("Mul", [grad, mask])

    def zeros_like(self, name: str) -> str:
        shape = self.table.static_shape(name)
        source = self.emit.ints(shape) if shape is not None else self.shape_of(name)
        zero = helper.make_tensor("value", self.table.elem_type(name), [1], [0])
        return self.emit.op("ConstantOfShape", [source], value=zero)

    def reduce_to(self, grad: str, target: str, source: str) -> str:
        """``grad`` (shaped like ``source``, which broadcasting made from ``target``) summed
        over the broadcast axes, so that it has ``target``'s shape."""
        shape = self.table.shape(source)
        if shape is None:
            raise self.fail(f"the rank of '{source}' must be known")
        return reduce_to_shape(self, grad, shape, target)


def _same_dim(a: Any, b: Any) -> bool:
    return a is not None and a == b


def reduce_to_shape(ctx: GradientContext, grad: str, out_shape: list[Dim], target: str) -> str:
    """``grad``, of shape ``out_shape``, summed to the shape of forward tensor ``target``.
    Static shapes decide the axes at build time; where a dim is unknown the axes are found at
    run time (the dims that differ)."""
    in_shape = ctx.table.shape(target)
    if in_shape is None:
        raise ctx.fail(f"the rank of '{target}' must be known")
    lead = len(out_shape) - len(in_shape)
    padded = [1] * lead + list(in_shape)
    if lead == 0 and all(_same_dim(a, b) for a, b in zip(padded, out_shape, strict=True)):
        return grad
    emit = ctx.emit
    static_axes, unknown = [], False
    for axis, (i, o) in enumerate(zip(padded, out_shape, strict=True)):
        if axis < lead or (i == 1 and o != 1):
            static_axes.append(axis)
        elif not (isinstance(i, int) or _same_dim(i, o) or o == 1):
            unknown = True  # a symbolic or unknown input dim that may be a broadcast 1
    if not unknown:
        summed = emit.reduce("ReduceSum", grad, static_axes, keepdims=True) if static_axes else grad
        if lead == 0:
            return summed
        target_shape = ctx.table.static_shape(target)
        shape = emit.ints(target_shape) if target_shape is not None else ctx.shape_of(target)
        return emit.op("Reshape", [summed, shape])
    # Dims unknown at build time: reduce wherever the padded input shape differs.
    source_shape = ctx.shape_of(grad)
    target_shape = ctx.shape_of(target)
    if lead:
        target_shape = emit.op("Concat", [emit.ints([1] * lead), target_shape], axis=0)
    differs = emit.op("Not", [emit.op("Equal", [target_shape, source_shape])])
    axes = emit.op("Reshape", [emit.op("NonZero", [differs]), emit.ints([-1])])
    summed = emit.op("ReduceSum", [grad, axes], keepdims=1, noop_with_empty_axes=1)
    return emit.op("Reshape", [summed, ctx.shape_of(target)])
