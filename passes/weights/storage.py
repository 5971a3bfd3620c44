"""The weights that weight-compression passes (prune-weights, cluster-weights) work on.

A weight is a float constant of rank two or more that a Conv, ConvTranspose, Gemm or MatMul
multiplies by, or that a Gather looks rows up in (an embedding table), with at least
``min_size`` elements: biases, scales and shape constants are left alone. The output-channel
axis of each weight comes from the op that reads it, for per-channel statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from onnxslim.model import read_constant
from onnxslim.rewrite import STANDARD_DOMAINS, Scope, fresh_name, replace_input

__all__ = ["Weight", "find_weights", "pack_bits", "RebuildGraph", "FLOAT_TYPES"]

# The rebuilding ops (CumSum, Mod, Slice with inputs) need this opset.
REBUILD_OPSET = 11

FLOAT_TYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class Weight:
    """A weight constant, the op that reads it, and its output-channel axis."""

    constant: gs.Constant
    op: str
    channel_axis: int

    @property
    def name(self) -> str:
        return self.constant.name

    def values(self) -> np.ndarray:
        return read_constant(self.constant)


def find_weights(graph: gs.Graph, min_size: int) -> list[Weight]:
    """The weights of the main graph, each once, in node order."""
    scope = Scope(graph)
    found: dict[int, Weight] = {}
    for node in graph.nodes:
        if node.domain not in STANDARD_DOMAINS:
            continue
        for index, axis in _weight_positions(node):
            if index >= len(node.inputs):
                continue
            tensor = node.inputs[index]
            if (
                isinstance(tensor, gs.Constant)
                and not scope.is_protected(tensor)
                and id(tensor) not in found
                and tensor.dtype in FLOAT_TYPES
                and tensor.shape is not None
                and len(tensor.shape) >= 2
                and int(np.prod(tensor.shape)) >= min_size
            ):
                found[id(tensor)] = Weight(tensor, node.op, axis % len(tensor.shape))
    return list(found.values())


def _weight_positions(node: gs.Node) -> list[tuple[int, int]]:
    """(input index, output-channel axis) of the weights ``node`` reads."""
    if node.op == "Conv":
        return [(1, 0)]
    if node.op == "ConvTranspose":
        return [(1, 1)]
    if node.op == "Gemm":
        return [
            (0, -1 if node.attrs.get("transA", 0) else 0),
            (1, 0 if node.attrs.get("transB", 0) else -1),
        ]
    if node.op == "MatMul":
        return [(0, -2), (1, -1)]
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0:
        return [(0, 0)]
    return []


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned integers below ``2**bits`` packed ``8 // bits`` to a byte, first in the high
    bits (``bits`` is 1, 2, 4 or 8); the tail of the last byte is zero."""
    per_byte = 8 // bits
    flat = values.astype(np.uint8).ravel()
    padded = np.zeros(-(-flat.size // per_byte) * per_byte, np.uint8)
    padded[: flat.size] = flat
    shifts = np.array([8 - bits * (j + 1) for j in range(per_byte)], np.uint8)
    return np.bitwise_or.reduce(padded.reshape(-1, per_byte) << shifts, axis=1).astype(np.uint8)


class RebuildGraph:
    """The nodes that rebuild a weight from a compact form when the model loads.

    onnxruntime folds them into a dense initializer at session creation (all their inputs are
    constants), so inference runs at dense speed while the file stays small. Names are fresh
    and start with the weight's name.
    """

    def __init__(self, weight: Weight, names: set[str]) -> None:
        self.weight = weight
        self.names = names
        self.nodes: list[gs.Node] = []

    def constant(self, suffix: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(fresh_name(f"{self.weight.name}_{suffix}", self.names), values)

    def op(self, op: str, inputs: list[gs.Tensor], dtype, **attrs) -> gs.Variable:
        """Append ``op`` and return its output."""
        output = gs.Variable(fresh_name(f"{self.weight.name}_{op.lower()}", self.names), dtype)
        name = fresh_name(f"{output.name}_node", self.names)
        self.nodes.append(gs.Node(op, name, attrs=attrs, inputs=inputs, outputs=[output]))
        return output

    def unpack(self, packed: np.ndarray, bits: int, count: int) -> gs.Variable:
        """int32 ``[count]``: the numbers :func:`pack_bits` packed into ``packed``."""
        wide = self.op("Cast", [self.constant("packed", packed)], np.int32, to=TensorProto.INT32)
        if bits == 8:
            return wide
        per_byte = 8 // bits
        column = self.op("Reshape", [wide, self.constant("column", np.array([-1, 1]))], np.int32)
        divisors = np.array([[1 << (8 - bits * (j + 1)) for j in range(per_byte)]], np.int32)
        shifted = self.op("Div", [column, self.constant("divisors", divisors)], np.int32)
        digits = self.op(
            "Mod", [shifted, self.constant("modulus", np.array(1 << bits, np.int32))], np.int32
        )
        flat = self.op("Reshape", [digits, self.constant("flat", np.array([-1]))], np.int32)
        start, end = self.constant("start", np.array([0])), self.constant("end", np.array([count]))
        return self.op("Slice", [flat, start, end], np.int32)

    def reshape(self, tensor: gs.Tensor, shape: tuple[int, ...]) -> gs.Variable:
        return self.op(
            "Reshape", [tensor, self.constant("shape", np.array(shape, np.int64))], tensor.dtype
        )

    def install(self, graph: gs.Graph, dense: gs.Variable) -> None:
        """Make every reader of the weight read ``dense`` instead."""
        dense.dtype, dense.shape = self.weight.constant.dtype, list(self.weight.constant.shape)
        for node in graph.nodes:
            replace_input(node, self.weight.constant, dense)
        graph.nodes.extend(self.nodes)
