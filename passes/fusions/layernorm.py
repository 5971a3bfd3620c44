"""Decomposed layer normalization into LayerNormalization (opset 17)."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnxslim.passes.fusions.normalization import (
    NormalizationFusion,
    affine_tail,
    reduced_axes,
    static_tail,
)

from onnxslim.rewrite import Match, MatchResult, Scope, fail, float_dtype

__all__ = ["LayerNormFusion"]


class LayerNormFusion(NormalizationFusion):
    """ReduceMean(x) -> Sub(x, mean) -> Pow(d, 2) or Mul(d, d) -> ReduceMean -> Add(eps)
    -> Sqrt -> Div(d, std) or Reciprocal + Mul, then an optional Mul by a scale and Add of a
    bias whose shape is the normalized shape, as PyTorch (below opset 17) and TensorFlow
    exporters write it.

    Both means run over the same trailing axes, kept (keepdims=1), given as an attribute
    (opset < 18) or a constant input (opset >= 18). The normalized dims must be static.
    """

    anchors = ("ReduceMean",)
    min_opset = 17
    produces = "LayerNormalization"

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        x, mean = node.inputs[0], node.outputs[0]
        sub = scope.read_once(mean, "Sub")
        if sub is None or sub.inputs[0] is not x or sub.inputs[1] is not mean:
            return fail("the mean is not subtracted from its input")
        centered = sub.outputs[0]
        rank = scope.rank(x, centered)
        axes = reduced_axes(node, rank, scope)
        if axes is None or axes != tuple(range(-len(axes), 0)):
            return fail("it does not average the trailing axes, kept")
        square, divide = _square_and_divide(centered, rank, scope)
        if square is None:
            return fail("x - mean is not squared and divided")
        variance_node = scope.read_once(square.outputs[0], "ReduceMean")
        if variance_node is None or reduced_axes(variance_node, rank, scope) != axes:
            return fail("the square is not averaged over the same axes")
        variance = variance_node.outputs[0]
        add_epsilon = scope.read_once(variance, "Add")
        epsilon = scope.scalar(scope.other_input(add_epsilon, variance), rank)
        sqrt = scope.read_once(add_epsilon.outputs[0], "Sqrt") if epsilon is not None else None
        if sqrt is None:
            return fail("no epsilon is added to the variance and square-rooted")
        normalizing = _normalizing_nodes(sqrt.outputs[0], centered, scope)
        if normalizing is None or normalizing[-1] is not divide:
            return fail("x - mean is not divided by the deviation")
        normalized = divide.outputs[0]
        shape = static_tail((x, centered, normalized), len(axes))
        if shape is None:
            return fail("the normalized dims are not static")
        norm_shape, rank = shape
        affine, affine_nodes, output = affine_tail(
            normalized, norm_shape, rank, ("Mul", "Add"), scope
        )
        nodes = [node, sub, square, variance_node, add_epsilon, sqrt, *normalizing, *affine_nodes]
        dtype = float_dtype(x, centered, normalized, affine.get("Add"))
        if "Mul" not in affine and dtype is None:
            return fail("the ones scale it would need has no known type")
        return Match(
            nodes,
            x=x,
            output=output,
            axis=axes[0],
            epsilon=epsilon,
            norm_shape=norm_shape,
            dtype=dtype,
            scale=affine.get("Mul"),
            bias=affine.get("Add"),
        )


def _square_and_divide(
    centered: gs.Tensor, rank: int | None, scope: Scope
) -> tuple[gs.Node | None, gs.Node | None]:
    """The two readers of x - mean: the node that squares it and the one that divides it."""
    if scope.is_protected(centered):
        return None, None
    distinct = scope.readers(centered)
    if len(distinct) != 2:
        return None, None
    for square, divide in (distinct, distinct[::-1]):
        by_mul = scope.is_op(square, "Mul") and all(t is centered for t in square.inputs)
        by_pow = (
            scope.is_op(square, "Pow")
            and square.inputs[0] is centered
            and scope.is_scalar(square.inputs[1], 2.0, rank)
        )
        if (by_mul or by_pow) and len(centered.outputs) == (3 if by_mul else 2):
            return square, divide
    return None, None


def _normalizing_nodes(std: gs.Tensor, centered: gs.Tensor, scope: Scope) -> list[gs.Node] | None:
    """Div(centered, std), or Reciprocal(std) then Mul with centered; the divide comes last."""
    divide = scope.read_once(std, "Div")
    if divide is not None:
        return [divide] if divide.inputs[0] is centered and divide.inputs[1] is std else None
    reciprocal = scope.read_once(std, "Reciprocal")
    if reciprocal is None:
        return None
    multiply = scope.read_once(reciprocal.outputs[0], "Mul")
    if scope.other_input(multiply, reciprocal.outputs[0]) is not centered:
        return None
    return [reciprocal, multiply]
