"""Decomposed RMS normalization into RMSNormalization (opset 23)."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnxslim.passes.fusions.normalization import (
    NormalizationFusion,
    affine_tail,
    reduced_axes,
    static_tail,
)

from onnxslim.rewrite import Match, MatchResult, Scope, fail, float_dtype

__all__ = ["RMSNormFusion"]


class RMSNormFusion(NormalizationFusion):
    """x * 1/sqrt(mean(x²) + eps), then an optional Mul by a scale of the normalized shape, as
    Llama, T5 and Mistral exports write it: x² as Pow(x, 2) or Mul(x, x), the mean a
    keepdims ReduceMean over trailing axes, and the division as Div(x, sqrt), or Reciprocal
    or Div(1, ·) of the sqrt multiplied by x. The normalized dims must be static."""

    anchors = ("ReduceMean",)
    min_opset = 23
    produces = "RMSNormalization"

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        squared, mean = node.inputs[0], node.outputs[0]
        square = scope.feeder(node, squared, ("Pow", "Mul"), once=True)
        x = _squared(square, scope)
        if x is None:
            return fail("it does not average a square")
        rank = scope.rank(x, squared)
        axes = reduced_axes(node, rank, scope)
        if axes is None or axes != tuple(range(-len(axes), 0)):
            return fail("it does not average the trailing axes, kept")
        add_epsilon = scope.read_once(mean, "Add")
        epsilon = scope.scalar(scope.other_input(add_epsilon, mean), rank)
        sqrt = scope.read_once(add_epsilon.outputs[0], "Sqrt") if epsilon is not None else None
        if sqrt is None:
            return fail("no epsilon is added to the mean square and square-rooted")
        normalizing = _normalizing_nodes(sqrt.outputs[0], x, scope)
        if normalizing is None:
            return fail("x is not divided by the root mean square")
        normalized = normalizing[-1].outputs[0]
        shape = static_tail((x, squared, normalized), len(axes))
        if shape is None:
            return fail("the normalized dims are not static")
        norm_shape, rank = shape
        affine, affine_nodes, output = affine_tail(normalized, norm_shape, rank, ("Mul",), scope)
        dtype = float_dtype(x, squared, normalized)
        if not affine and dtype is None:
            return fail("the ones scale it would need has no known type")
        nodes = [square, node, add_epsilon, sqrt, *normalizing, *affine_nodes]
        return Match(
            nodes,
            x=x,
            output=output,
            axis=axes[0],
            epsilon=epsilon,
            norm_shape=norm_shape,
            dtype=dtype,
            scale=affine.get("Mul"),
            bias=None,
        )


def _squared(square: gs.Node | None, scope: Scope) -> gs.Tensor | None:
    """The x of Pow(x, 2) or Mul(x, x)."""
    if scope.is_op(square, "Mul"):
        first, second = square.inputs
        return first if first is second else None
    if scope.is_op(square, "Pow") and scope.is_scalar(square.inputs[1], 2.0):
        return square.inputs[0]
    return None


def _normalizing_nodes(root: gs.Tensor, x: gs.Tensor, scope: Scope) -> list[gs.Node] | None:
    """Div(x, root), or Reciprocal(root) / Div(1, root) multiplied by x."""
    divide = scope.read_once(root, "Div")
    if divide is not None and divide.inputs[0] is x and divide.inputs[1] is root:
        return [divide]
    if divide is not None and divide.inputs[1] is root and scope.is_scalar(divide.inputs[0], 1.0):
        inverse = divide
    else:
        inverse = scope.read_once(root, "Reciprocal")
    if inverse is None:
        return None
    multiply = scope.read_once(inverse.outputs[0], "Mul")
    if scope.other_input(multiply, inverse.outputs[0]) is not x:
        return None
    return [inverse, multiply]
