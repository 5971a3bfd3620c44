"""What the fusions into Conv, ConvTranspose and Gemm share: the op seen as ``W x + b`` per
output channel, and absorbing a per-channel affine map into its constants.

Weights are recomputed in float64 and cast back to their type; the result differs from the
unfused graph only by float rounding. Constants are read where they are initializers, Constant
nodes or either behind Identity (the TorchScript exporter shares identical parameters between
layers that way); only initializers that the op alone reads are rewritten in place. Any other
weight or bias is written as a new constant, and only when that adds no more bytes than the
rewrite frees plus ``NODE_BYTES`` for the node it removes: a node and its kernel launch are
worth a few hundred bytes of file. A constant shared by several nodes counts as freed in
equal shares, so that fusing all of them frees it whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.model import constant_nbytes
from onnxslim.rewrite import Miss, Scope, constant_value, fail, is_op

__all__ = [
    "FLOAT_TYPES",
    "NODE_BYTES",
    "ChannelLinear",
    "Absorption",
    "float_constant",
    "per_channel",
    "linear_before",
    "take_output",
]

FLOAT_TYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm")
# What removing one node is worth in added bytes of file.
NODE_BYTES = 512


def float_constant(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The values of a constant of a float type (behind Identity too), else None."""
    values = constant_value(tensor)
    if values is None or values.dtype not in FLOAT_TYPES:
        return None
    return values


def per_channel(values: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``values`` as one float64 number per channel, when broadcasting them against a tensor of
    rank ``rank`` with ``channels`` along axis 1 adds the same number to a whole channel and
    leaves the tensor's shape as it is; else None."""
    if values.ndim > rank:
        return None
    shape = (1,) * (rank - values.ndim) + values.shape
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return np.broadcast_to(values.astype(np.float64).reshape(-1), (channels,))


@dataclass
class Absorption:
    """New weights and bias for a linear op, and the node whose output it takes over."""

    linear: ChannelLinear
    follower: gs.Node
    weights: np.ndarray | None
    bias: np.ndarray | None

    def apply(self, scope: Scope) -> None:
        node = self.linear.node
        if self.weights is not None:
            _set_constant(node, 1, self.weights, scope)
        if self.bias is not None:
            _set_constant(node, 2, self.bias, scope)
            if node.op == "Gemm":
                node.attrs["beta"] = 1.0
        take_output(node, self.follower, scope)


@dataclass
class ChannelLinear:
    """Conv, ConvTranspose or Gemm with constant float weights, seen as ``W x + b`` per output
    channel: ``channels`` of them, along axis 1 of an output of rank ``rank``."""

    node: gs.Node
    weight: gs.Tensor
    weights: np.ndarray
    bias: np.ndarray | None  # per channel, float64; None where the op has no bias
    channels: int
    rank: int

    @classmethod
    def of(cls, node: gs.Node, scope: Scope) -> ChannelLinear | None:
        weight = scope.present(node, 1)
        weights = float_constant(weight)
        if weights is None:
            return None
        if node.op == "Conv" and weights.ndim >= 3:
            channels, rank = weights.shape[0], weights.ndim
        elif node.op == "ConvTranspose" and weights.ndim >= 3:
            group = int(node.attrs.get("group", 1))
            if group < 1 or weights.shape[0] % group:
                return None
            channels, rank = weights.shape[1] * group, weights.ndim
        elif node.op == "Gemm" and weights.ndim == 2 and scope.opset >= 7:
            channels, rank = weights.shape[0 if node.attrs.get("transB", 0) else 1], 2
        else:
            return None
        bias = scope.present(node, 2)
        if bias is None:
            return cls(node, weight, weights, None, channels, rank)
        values = float_constant(bias)
        if values is None or values.dtype != weights.dtype:
            return None
        values = values.astype(np.float64)
        if node.op == "Gemm":
            # C broadcasts to [M, N]; only a C that is the same for every row is per channel.
            values = per_channel(values, 2, channels)
            if values is None:
                return None
            values = values * float(node.attrs.get("beta", 1.0))
        elif values.shape != (channels,):
            return None
        return cls(node, weight, weights, values, channels, rank)

    def scaled_weights(self, scale: np.ndarray) -> np.ndarray:
        """The weights with output channel ``c`` multiplied by ``scale[c]``, in float64."""
        weights = self.weights.astype(np.float64)
        if self.node.op == "Conv":
            return weights * scale.reshape(-1, *[1] * (weights.ndim - 1))
        if self.node.op == "ConvTranspose":
            # W is [C_in, C_out / group, k...]; output channel g * C_out/group + j is column j
            # of the input channels of group g.
            group = int(self.node.attrs.get("group", 1))
            per_group = weights.shape[1]
            kernel = weights.shape[2:]
            grouped = weights.reshape(group, -1, per_group, *kernel)
            factors = scale.reshape(group, 1, per_group, *[1] * len(kernel))
            return (grouped * factors).reshape(weights.shape)
        if self.node.attrs.get("transB", 0):
            return weights * scale[:, None]
        return weights * scale[None, :]

    def absorb(
        self, scale: np.ndarray | None, shift: np.ndarray | None, follower: gs.Node, scope: Scope
    ) -> Absorption | Miss:
        """The constants that make the op compute ``scale * op(x) + shift`` in place of
        ``follower``; a miss where they are not finite or the file would grow."""
        dtype = self.weights.dtype
        new_weights = None
        if scale is not None:
            new_weights = self.scaled_weights(scale).astype(dtype)
        new_bias = None
        if self.bias is not None or shift is not None:
            bias = np.zeros(self.channels) if self.bias is None else self.bias
            if scale is not None:
                bias = bias * scale
            if shift is not None:
                bias = bias + shift
            new_bias = bias.astype(dtype)
        with np.errstate(all="ignore"):
            finite = all(np.isfinite(v).all() for v in (new_weights, new_bias) if v is not None)
        if not finite:
            return fail("the fused constants would not be finite", tell=True)
        grown = 0
        if new_weights is not None and not _owned(self.weight, self.node, scope):
            grown += new_weights.nbytes
        if new_bias is not None and not _owned(scope.present(self.node, 2), self.node, scope):
            grown += new_bias.nbytes
        if grown > _freed_bytes(follower, scope) + NODE_BYTES:
            return fail(
                "the constants it would add outweigh those it frees and the node it removes",
                tell=True,
            )
        return Absorption(self, follower, new_weights, new_bias)


def _owned(tensor: gs.Tensor | None, node: gs.Node, scope: Scope) -> bool:
    """Whether ``tensor`` is an initializer that ``node`` alone reads: rewritable in place."""
    return isinstance(tensor, gs.Constant) and scope.only_reader(tensor, node)


def _freed_bytes(node: gs.Node, scope: Scope) -> float:
    """Bytes of the constants that go when ``node`` goes: those it alone reads whole, and an
    equal share of those it reads with others (directly or through Identity)."""
    freed: dict[int, float] = {}
    for tensor in node.inputs:
        source, readers = _shared_source(tensor, scope)
        if source is not None and not scope.is_protected(source) and readers:
            freed[id(source)] = constant_nbytes(source) / readers
    return sum(freed.values())


def _shared_source(tensor: gs.Tensor, scope: Scope) -> tuple[gs.Constant | None, int]:
    """The initializer behind ``tensor`` (through Identity) and how many nodes other than
    Identity read it; (None, 0) for anything else."""
    while isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1:
        producer = tensor.inputs[0]
        if not is_op(producer, "Identity") or scope.is_protected(tensor):
            return None, 0
        tensor = producer.inputs[0]
    if not isinstance(tensor, gs.Constant):
        return None, 0
    return tensor, _final_readers(tensor, scope)


def _final_readers(tensor: gs.Tensor, scope: Scope, depth: int = 8) -> int:
    """The nodes that read ``tensor``, counting those behind Identity nodes in place of
    them."""
    count = 0
    for reader in scope.readers(tensor):
        if is_op(reader, "Identity") and depth and not scope.is_protected(reader.outputs[0]):
            count += _final_readers(reader.outputs[0], scope, depth - 1)
        else:
            count += 1
    return count


def _set_constant(node: gs.Node, index: int, values: np.ndarray, scope: Scope) -> None:
    """Give input ``index`` of ``node`` the ``values``: in place where ``node`` alone reads the
    initializer there, else as a new constant (appended where the input was absent)."""
    current = scope.present(node, index)
    if _owned(current, node, scope):
        current.values = values
        return
    base = current.name if current is not None else f"{node.name or node.outputs[0].name}_bias"
    constant = scope.new_constant(f"{base}_fused", values)
    if index < len(node.inputs):
        node.inputs[index] = constant
    else:
        node.inputs.append(constant)


def take_output(node: gs.Node, follower: gs.Node, scope: Scope) -> None:
    """Let ``node`` write ``follower``'s output and disconnect ``follower``."""
    output = follower.outputs[0]
    scope.detach(follower)
    node.outputs[0] = output


def linear_before(node: gs.Node, scope: Scope) -> tuple[ChannelLinear, gs.Tensor] | None:
    """The linear op whose output ``node`` alone reads, with that output."""
    for tensor in node.inputs:
        producer = scope.feeder(node, tensor, LINEAR_OPS)
        if producer is not None:
            linear = ChannelLinear.of(producer, scope)
            if linear is not None:
                return linear, tensor
    return None
