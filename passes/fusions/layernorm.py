"""Decomposed layer normalization into LayerNormalization (opset 17)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxslim.model import read_constant
from onnxslim.rewrite import Match, MatchResult, Rule, Scope, fail, float_dtype

__all__ = ["LayerNormFusion", "reduced_axes"]


class LayerNormFusion(Rule):
    """ReduceMean(x) -> Sub(x, mean) -> Pow(d, 2) or Mul(d, d) -> ReduceMean -> Add(eps)
    -> Sqrt -> Div(d, std) or Reciprocal + Mul, then an optional Mul by a scale and Add of a
    bias whose shape is the normalized shape, as PyTorch (below opset 17) and TensorFlow
    exporters write it.

    Both means run over the same trailing axes, kept (keepdims=1), given as an attribute
    (opset < 18) or a constant input (opset >= 18). The normalized dims must be static.
    Without a scale, LayerNormalization needs a ones tensor; it is added (once per shape and
    type) only when the nodes it replaces outweigh it in the file.
    """

    anchors = ("ReduceMean",)
    min_opset = 17
    produces = "LayerNormalization"

    def __init__(self) -> None:
        self.unscaled: dict[tuple[str, tuple[int, ...]], list[Match]] = defaultdict(list)

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
        nodes = [node, sub, square, variance_node, add_epsilon, sqrt, *normalizing]
        normalized = divide.outputs[0]
        shape = _static_tail((x, centered, normalized), len(axes))
        if shape is None:
            return fail("the normalized dims are not static")
        norm_shape, rank = shape
        scale, bias, output = None, None, normalized
        for op in ("Mul", "Add"):
            affine = scope.read_once(output, op)
            weight = scope.other_input(affine, output)
            if not _fits_normalized_shape(weight, norm_shape, rank):
                continue
            if op == "Mul":
                scale = weight
            else:
                bias = weight
            nodes.append(affine)
            output = affine.outputs[0]
        dtype = float_dtype(x, centered, normalized, bias)
        if scale is None and dtype is None:
            return fail("the ones scale it would need has no known type")
        return Match(
            nodes,
            x=x,
            output=output,
            axis=axes[0],
            epsilon=epsilon,
            norm_shape=norm_shape,
            dtype=dtype,
            scale=scale,
            bias=bias,
        )

    def rewrite(self, match: Match) -> bool:
        if match.scale is None:  # decided in finish, with the others of its shape and type
            self.unscaled[(match.dtype.str, match.norm_shape)].append(match)
            return False
        _replace(match, _shaped(match.scale, match.norm_shape))
        return True

    def finish(self, scope: Scope) -> bool:
        changed = False
        for (dtype, shape), group in self.unscaled.items():
            group = [m for m in group if all(node.outputs for node in m.nodes)]
            ones = np.ones(shape, np.dtype(dtype))
            scale = scope.new_constant("layernorm_unit_scale", ones)
            saved = sum(_bytes_saved(match, scale) for match in group)
            if saved < ones.nbytes:
                scope.leave(
                    f"the {ones.nbytes}-byte ones scale that LayerNormalization needs "
                    f"outweighs the {saved} bytes of nodes it would replace",
                    [m.node for m in group],
                )
                continue
            for match in group:
                _replace(match, scale)
            changed |= bool(group)
        return changed


def reduced_axes(node: gs.Node, rank: int | None, scope: Scope) -> tuple[int, ...] | None:
    """The axes a keepdims ReduceMean averages over, counted from the end (negative)."""
    if node.attrs.get("keepdims", 1) != 1:
        return None
    if "axes" in node.attrs:
        axes = [int(a) for a in node.attrs["axes"]]
    else:
        values = scope.constant(scope.present(node, 1), max_size=64)
        if values is None:
            return None
        axes = [int(a) for a in values.reshape(-1)]
    if not axes or (rank is None and any(a >= 0 for a in axes)):
        return None
    negative = sorted({a - rank if a >= 0 else a for a in axes})
    return tuple(negative) if len(negative) == len(axes) else None


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


def _static_tail(tensors: Iterable[gs.Tensor], count: int) -> tuple[tuple[int, ...], int] | None:
    """(the last ``count`` dims, the rank) of the first of ``tensors`` where those are static."""
    for tensor in tensors:
        shape = tensor.shape
        if shape is None or len(shape) < count:
            continue
        tail = shape[len(shape) - count :]
        if all(isinstance(d, int | np.integer) and d >= 0 for d in tail):
            return tuple(int(d) for d in tail), len(shape)
    return None


def _without_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _fits_normalized_shape(
    weight: gs.Tensor | None, norm_shape: tuple[int, ...], rank: int
) -> bool:
    """A scale or bias LayerNormalization can take: an initializer that broadcasts exactly
    like the normalized shape. One that needs reshaping must have no other reader, or its
    reshaped copy would add its bytes to the file."""
    if not isinstance(weight, gs.Constant):
        return False
    shape = tuple(weight.shape)
    if len(shape) > rank or _without_leading_ones(shape) != _without_leading_ones(norm_shape):
        return False
    return shape == norm_shape or len(weight.outputs) == 1


def _shaped(weight: gs.Constant, shape: tuple[int, ...]) -> gs.Constant:
    """``weight`` with the normalized shape itself: ONNX Runtime 1.19 takes nothing else."""
    if tuple(weight.shape) == shape:
        return weight
    return gs.Constant(weight.name, read_constant(weight).reshape(shape))


def _replace(match: Match, scale: gs.Constant) -> None:
    bias = [_shaped(match.bias, match.norm_shape)] if match.bias is not None else []
    attrs = {"axis": match.axis, "epsilon": match.epsilon}
    inputs = [match.x, scale, *bias]
    match.scope.replace(match.nodes, "LayerNormalization", inputs, [match.output], attrs)


def _node_bytes(op: str, inputs: Iterable[gs.Tensor], outputs: Iterable[gs.Tensor], **attrs) -> int:
    names_in = [t.name for t in inputs]
    names_out = [t.name for t in outputs]
    return onnx.helper.make_node(op, names_in, names_out, **attrs).ByteSize()


def _bytes_saved(match: Match, scale: gs.Constant) -> int:
    """Bytes the fusion takes out of the file, besides its scale: the replaced nodes (without
    their attributes, so an underestimate) minus the LayerNormalization node."""
    removed = sum(
        _node_bytes(node.op, node.inputs, node.outputs, name=node.name) for node in match.nodes
    )
    inputs = [match.x, scale] + ([match.bias] if match.bias is not None else [])
    added = _node_bytes(
        "LayerNormalization",
        inputs,
        [match.output],
        name=match.node.name,
        axis=match.axis,
        epsilon=match.epsilon,
    )
    return removed - added
