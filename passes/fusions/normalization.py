"""What the normalization fusions share: the trailing axes a mean runs over, the affine tail
(Mul by a scale, Add of a bias), and the ones scale a fusion without one needs.

LayerNormalization and RMSNormalization take a scale input, which a decomposed normalization
without one lacks: a ones tensor is added, once per shape and type, only when the nodes the
fusions replace outweigh it in the file.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxslim.model import read_constant
from onnxslim.rewrite import Match, Rule, Scope

__all__ = ["NormalizationFusion", "reduced_axes", "static_tail", "affine_tail"]


class NormalizationFusion(Rule):
    """Base of the fusions into LayerNormalization and RMSNormalization. A match gives ``x``,
    ``output``, ``axis``, ``epsilon``, ``norm_shape``, ``dtype``, ``scale`` (None where the
    decomposed form has none) and ``bias`` (None, and always None for RMSNormalization)."""

    produces: ClassVar[str]

    def __init__(self) -> None:
        self.unscaled: dict[tuple[str, tuple[int, ...]], list[Match]] = defaultdict(list)

    def rewrite(self, match: Match) -> bool:
        if match.scale is None:  # decided in finish, with the others of its shape and type
            self.unscaled[(match.dtype.str, match.norm_shape)].append(match)
            return False
        self._fuse(match, _shaped(match.scale, match.norm_shape))
        return True

    def finish(self, scope: Scope) -> bool:
        changed = False
        for (dtype, shape), group in self.unscaled.items():
            group = [m for m in group if all(node.outputs for node in m.nodes)]
            ones = np.ones(shape, np.dtype(dtype))
            scale = scope.new_constant(f"{self.produces.lower()}_unit_scale", ones)
            saved = sum(self._bytes_saved(match, scale) for match in group)
            if saved < ones.nbytes:
                scope.leave(
                    f"the {ones.nbytes}-byte ones scale that {self.produces} needs outweighs "
                    f"the {saved} bytes of nodes it would replace",
                    [m.node for m in group],
                )
                continue
            for match in group:
                self._fuse(match, scale)
            changed |= bool(group)
        return changed

    def _inputs(self, match: Match, scale: gs.Constant) -> list[gs.Tensor]:
        bias = [_shaped(match.bias, match.norm_shape)] if match.bias is not None else []
        return [match.x, scale, *bias]

    def _fuse(self, match: Match, scale: gs.Constant) -> None:
        attrs = {"axis": match.axis, "epsilon": match.epsilon}
        inputs = self._inputs(match, scale)
        match.scope.replace(match.nodes, self.produces, inputs, [match.output], attrs)

    def _bytes_saved(self, match: Match, scale: gs.Constant) -> int:
        """Bytes the fusion takes out of the file, besides its scale: the replaced nodes
        (without their attributes, so an underestimate) minus the fused node."""
        removed = sum(_node_bytes(n.op, n.inputs, n.outputs, name=n.name) for n in match.nodes)
        added = _node_bytes(
            self.produces,
            self._inputs(match, scale),
            [match.output],
            name=match.node.name,
            axis=match.axis,
            epsilon=match.epsilon,
        )
        return removed - added


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


def static_tail(tensors: Iterable[gs.Tensor], count: int) -> tuple[tuple[int, ...], int] | None:
    """(the last ``count`` dims, the rank) of the first of ``tensors`` where those are static."""
    for tensor in tensors:
        shape = tensor.shape
        if shape is None or len(shape) < count:
            continue
        tail = shape[len(shape) - count :]
        if all(isinstance(d, int | np.integer) and d >= 0 for d in tail):
            return tuple(int(d) for d in tail), len(shape)
    return None


def affine_tail(
    normalized: gs.Tensor, norm_shape: tuple[int, ...], rank: int, ops: tuple[str, ...], scope
) -> tuple[dict[str, gs.Constant], list[gs.Node], gs.Tensor]:
    """The Mul by a scale and Add of a bias (those of ``ops``, in that order) that follow the
    normalized tensor: ({op: constant}, their nodes, the output)."""
    found, nodes, output = {}, [], normalized
    for op in ops:
        affine = scope.read_once(output, op)
        weight = scope.other_input(affine, output)
        if not _fits_normalized_shape(weight, norm_shape, rank):
            continue
        found[op] = weight
        nodes.append(affine)
        output = affine.outputs[0]
    return found, nodes, output


def _without_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _fits_normalized_shape(
    weight: gs.Tensor | None, norm_shape: tuple[int, ...], rank: int
) -> bool:
    """A scale or bias the fused op can take: an initializer that broadcasts exactly like the
    normalized shape. One that needs reshaping must have no other reader, or its reshaped
    copy would add its bytes to the file."""
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


def _node_bytes(op: str, inputs: Iterable[gs.Tensor], outputs: Iterable[gs.Tensor], **attrs) -> int:
    names_in = [t.name for t in inputs]
    names_out = [t.name for t in outputs]
    return onnx.helper.make_node(op, names_in, names_out, **attrs).ByteSize()
