"""Which nodes quantize works on, and where their constant weights really come from.

A layer is a node quantize knows how to turn into an integer kernel: Conv, Gemm and MatMul
with a constant weight, Gather from a constant table, and (with static activations) Add, Mul,
Concat, pools and MatMul of two activations.

Exports do not always hand the weight to the layer directly. TorchScript without constant
folding writes ``MatMul(x, Transpose(W))`` for every ``nn.Linear``; half-precision checkpoints
read ``Cast(W_fp16)``; others go through Identity, Reshape, Squeeze/Unsqueeze or a Constant
node. :class:`WeightSource` follows such a chain back to the stored constant, so that the
weight is quantized as the layer sees it and stored as integers directly in front of the layer
(the chain folds into the integer initializer): onnxruntime's fusions need ``DQ -> MatMul``,
with nothing in between.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxslim.model import iter_graphs, read_constant
from onnxslim.rewrite import STANDARD_DOMAINS

__all__ = [
    "DEFAULT_OPS",
    "WEIGHT_OPS",
    "WeightSource",
    "weight_source",
    "Layer",
    "column_axis",
    "find_layers",
    "integer_flow",
    "is_float_variable",
    "tied_layers",
]

# Ops quantize knows how to place Q/DQ around; `ops=` picks among them.
DEFAULT_OPS = (
    "Conv",
    "Gemm",
    "MatMul",
    "Gather",
    "Add",
    "Mul",
    "Concat",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
)
WEIGHT_OPS = ("Conv", "Gemm", "MatMul", "Gather")
_FLOAT32 = np.dtype(np.float32)
_FLOAT_SOURCES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
# Ops whose integer kernel is worth its output's requantization only between other integer
# kernels (see integer_flow).
_JOIN_OPS = ("Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool")
# Ops that carry integers through unchanged: a Q/DQ pair around them shares its parameters
# (Relu: the next QuantizeLinear's zero point clips).
_CARRY_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Relu")
# Ops that only reinterpret a constant weight on its way to a layer.
_VIEW_OPS = ("Transpose", "Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


@dataclass(frozen=True)
class WeightSource:
    """A layer's constant weight: the stored constant and the view ops between it and the
    layer (Transpose, Cast, Identity, Reshape, Squeeze, Unsqueeze, Flatten), nearest the
    constant first. ``tensor`` is what the layer reads."""

    constant: gs.Constant
    steps: tuple[gs.Node, ...]
    tensor: gs.Tensor

    @property
    def key(self) -> tuple:
        """Identifies the weight as the layer sees it: shared by layers that read the same
        constant through the same views."""
        return (self.constant.name, *(_step_signature(node) for node in self.steps))

    @property
    def name(self) -> str:
        """A readable base name for the integer weight: the tensor the layer reads."""
        return self.tensor.name or self.constant.name

    @property
    def shape(self) -> tuple[int, ...]:
        shape = self.tensor.shape
        if shape is not None and all(isinstance(d, int) for d in shape):
            return tuple(shape)
        return self.values().shape

    def values(self) -> np.ndarray:
        """The float32 weight the layer reads (the views applied to the constant)."""
        values = read_constant(self.constant)
        for node in self.steps:
            values = _apply_view(node, values)
        return np.asarray(values, dtype=np.float32)


def _step_signature(node: gs.Node) -> tuple:
    constants = tuple(
        tuple(np.asarray(read_constant(t)).ravel().tolist())
        for t in node.inputs[1:]
        if isinstance(t, gs.Constant)
    )
    return (node.op, tuple(sorted((k, repr(v)) for k, v in node.attrs.items())), constants)


def _constant_input(node: gs.Node, index: int) -> np.ndarray | None:
    if index >= len(node.inputs) or not node.inputs[index].name:
        return None
    tensor = node.inputs[index]
    return np.asarray(read_constant(tensor)) if isinstance(tensor, gs.Constant) else None


def _axes(node: gs.Node) -> list[int] | None:
    axes = _constant_input(node, 1)
    if axes is not None:
        return [int(a) for a in axes.ravel()]
    return list(node.attrs["axes"]) if "axes" in node.attrs else None


def _apply_view(node: gs.Node, values: np.ndarray) -> np.ndarray:
    """``node`` (a view op whose other inputs are constant) evaluated on ``values``."""
    if node.op == "Transpose":
        return np.transpose(values, node.attrs.get("perm"))
    if node.op == "Cast":
        return values.astype(_FLOAT32)
    if node.op == "Identity":
        return values
    if node.op == "Reshape":
        shape = [int(d) for d in _constant_input(node, 1)]
        if not node.attrs.get("allowzero", 0):
            shape = [values.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return values.reshape(shape)
    if node.op == "Flatten":
        axis = int(node.attrs.get("axis", 1)) % max(values.ndim, 1)
        return values.reshape(int(np.prod(values.shape[:axis])), -1)
    axes = _axes(node)
    if node.op == "Squeeze":
        return np.squeeze(values, axis=tuple(axes) if axes is not None else None)
    rank = values.ndim + len(axes)
    return np.expand_dims(values, tuple(sorted(a % rank for a in axes)))


def _is_view(node: gs.Node) -> bool:
    """A view op that reads one tensor and otherwise only constants (shapes, axes)."""
    if node.op not in _VIEW_OPS or node.domain not in STANDARD_DOMAINS or len(node.outputs) != 1:
        return False
    if node.op == "Cast" and node.attrs.get("to") != onnx.TensorProto.FLOAT:
        return False
    if node.op == "Reshape" and _constant_input(node, 1) is None:
        return False
    if node.op in ("Squeeze", "Unsqueeze") and len(node.inputs) > 1:
        return _constant_input(node, 1) is not None
    return node.op != "Unsqueeze" or "axes" in node.attrs


def weight_source(tensor: gs.Tensor) -> WeightSource | None:
    """Where ``tensor`` comes from when it is a float constant seen through view ops (or a
    Constant node's output); None when it is computed from anything else."""
    steps: list[gs.Node] = []
    current = tensor
    while not isinstance(current, gs.Constant):
        producer = current.inputs[0] if current.inputs else None
        if producer is None:
            return None
        if producer.op == "Constant" and producer.domain in STANDARD_DOMAINS:
            value = producer.attrs.get("value")
            if not isinstance(value, gs.Constant):
                return None
            current = value
            break
        if not _is_view(producer):
            return None
        steps.append(producer)
        current = producer.inputs[0]
    if current.dtype not in _FLOAT_SOURCES:
        return None
    if not steps and current.dtype != _FLOAT32:
        return None  # a float16 constant read as it is: the layer computes in float16
    return WeightSource(current, tuple(reversed(steps)), tensor)


@dataclass
class Layer:
    """A node to quantize, named by its first output (unique, unlike node names).

    ``weight`` is the input index of its constant weight (``source`` says where that weight
    comes from) and ``axis`` that weight's output channel axis (None: per tensor);
    ``activations`` are the indices of its float inputs.
    """

    key: str
    node: gs.Node
    weight: int | None = None
    axis: int | None = None
    block_axis: int | None = None
    bias: int | None = None
    activations: list[int] = field(default_factory=list)
    operand: bool = False  # the weight is an elementwise operand, stored like an activation
    source: WeightSource | None = None

    @property
    def op(self) -> str:
        return self.node.op


def is_float_variable(tensor: gs.Tensor) -> bool:
    """A float activation: computed, not a weight seen through views, not dequantized."""
    if not isinstance(tensor, gs.Variable) or tensor.dtype != _FLOAT32:
        return False
    return not _is_weight(tensor) and not _dequantized(tensor)


def _dequantized(tensor: gs.Variable) -> bool:
    """Already quantized: the output of a DequantizeLinear (in a model quantized before)."""
    return bool(tensor.inputs) and tensor.inputs[0].op == "DequantizeLinear"


def _is_weight(tensor: gs.Variable) -> bool:
    """A variable that is really a constant seen through views (a weight, not an activation)."""
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is None or (producer.op not in _VIEW_OPS and producer.op != "Constant"):
        return False
    return weight_source(tensor) is not None


def _float_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant) and tensor.dtype == _FLOAT32


def _present(node: gs.Node, index: int) -> bool:
    return index < len(node.inputs) and bool(node.inputs[index].name)


def _excluded(node: gs.Node, key: str, patterns: Iterable[str]) -> bool:
    names = [name for name in (node.name, key) if name]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def _layer_of(node: gs.Node, static: bool) -> Layer | None:
    """The Layer for ``node``, or None where quantize has nothing to do with it."""
    if node.domain not in STANDARD_DOMAINS or not node.outputs or not node.outputs[0].name:
        return None
    key = node.outputs[0].name
    if any(isinstance(t, gs.Variable) and _dequantized(t) for t in node.inputs):
        return None  # quantized already
    float_inputs = [i for i, t in enumerate(node.inputs) if is_float_variable(t)]
    op = node.op
    source = weight_source(node.inputs[1]) if op in ("Conv", "Gemm", "MatMul") else None
    if op == "Conv" and source is not None:
        if len(source.shape) < 3 or 0 not in float_inputs:
            return None
        bias = 2 if _present(node, 2) and _float_constant(node.inputs[2]) else None
        return Layer(key, node, 1, 0, 1, bias, [0], source=source)
    if op == "Gemm" and source is not None:
        if 0 not in float_inputs or node.attrs.get("transA", 0) or len(source.shape) != 2:
            return None
        trans_b = bool(node.attrs.get("transB", 0))
        channels = source.shape[0 if trans_b else 1]
        bias = None
        if _present(node, 2) and _float_constant(node.inputs[2]):
            plain = node.attrs.get("alpha", 1.0) == 1.0 and node.attrs.get("beta", 1.0) == 1.0
            if plain and tuple(node.inputs[2].shape) == (channels,):
                bias = 2
        return Layer(
            key, node, 1, 0 if trans_b else 1, 1 if trans_b else 0, bias, [0], source=source
        )
    if op == "MatMul" and len(node.inputs) == 2:
        if source is not None and 0 in float_inputs:
            rank = len(source.shape)
            axis = rank - 1 if rank >= 2 else None
            block = rank - 2 if rank >= 2 else None
            return Layer(key, node, 1, axis, block, None, [0], source=source)
        if static and float_inputs == [0, 1]:
            return Layer(key, node, activations=[0, 1])
        return None
    if op == "Gather":
        table = weight_source(node.inputs[0])
        rank = len(table.shape) if table is not None else 0
        if rank < 1:
            return None
        axis = int(node.attrs.get("axis", 0)) % rank
        return Layer(key, node, 0, None if static else axis, rank - 1, None, [], source=table)
    if not static or not is_float_variable(node.outputs[0]):
        return None
    if op in ("Add", "Mul", "Concat") and float_inputs and len(float_inputs) == len(node.inputs):
        return Layer(key, node, activations=float_inputs)
    if op in ("Add", "Mul") and len(node.inputs) == 2 and len(float_inputs) == 1:
        index = 1 - float_inputs[0]
        operand = weight_source(node.inputs[index])
        if operand is not None and np.isfinite(operand.values()).all():
            return Layer(key, node, index, activations=float_inputs, operand=True, source=operand)
    pools = ("MaxPool", "AveragePool", "GlobalAveragePool")
    if op in pools and float_inputs == [0] and len(node.outputs) == 1:
        return Layer(key, node, activations=[0])
    return None


def column_axis(layer: Layer) -> int | None:
    """The last axis of a Gather's table when the Gather does not index it (its columns:
    every row read keeps them), else None."""
    rank = len(layer.source.shape)
    gathered = int(layer.node.attrs.get("axis", 0)) % rank
    return rank - 1 if rank > 1 and gathered != rank - 1 else None


def find_layers(
    graph: gs.Graph, ops: Iterable[str], exclude: Iterable[str], static: bool
) -> tuple[list[Layer], list[str]]:
    """The layers to quantize, in graph order, and the keys of those that ``exclude`` names."""
    wanted, patterns = set(ops), list(exclude)
    layers, excluded = [], []
    for node in graph.nodes:
        if node.op not in wanted:
            continue
        layer = _layer_of(node, static)
        if layer is None:
            continue
        if _excluded(node, layer.key, patterns):
            excluded.append(layer.key)
        else:
            layers.append(layer)
    return layers, excluded


def integer_flow(graph: gs.Graph, layers: list[Layer]) -> list[Layer]:
    """``layers`` without the Add, Mul, Concat and pool layers that would requantize inside
    a float chain: such a layer is kept only where every activation it reads comes out of
    another kept layer and every node that reads its output is one.

    Elsewhere its integer kernel costs a requantization of its output (and of any input that
    a float op computed), each one rounding error more; a decomposed hard-swish and the
    affine scale and shift after it (``x * clip(x + 3, 0, 6) / 6 * s + b``) would add five.
    Left float between the DequantizeLinear of one integer kernel and the QuantizeLinear of
    the next, the chain computes on the dequantized values, and the model has one rounding
    point per weight layer: PP-OCRv4's recognizer, every layer quantized, agrees with fp32 on
    96.05% of the frames of 64 held-out lines instead of 92.31% (README). Residual Adds and
    Concats between Convs keep their integer kernels. Removing one layer can strand its
    neighbours, so this runs to a fixed point.
    """
    kept = {id(layer.node): layer for layer in layers}
    outputs = {id(t) for t in graph.outputs}
    changed = True
    while changed:
        changed = False
        for layer in list(kept.values()):
            if layer.op in _JOIN_OPS and not _between_integer_kernels(layer, kept, outputs):
                del kept[id(layer.node)]
                changed = True
    return [layer for layer in layers if id(layer.node) in kept]


def _between_integer_kernels(layer: Layer, kept: dict[int, Layer], outputs: set[int]) -> bool:
    node = layer.node
    for index in layer.activations:
        producer = _source_node(node.inputs[index])
        if producer is None or id(producer) not in kept:
            return False
    readers = _reader_nodes(node.outputs[0], outputs)
    return readers is not None and bool(readers) and all(id(r) in kept for r in readers)


def _source_node(tensor: gs.Tensor) -> gs.Node | None:
    """The node that computes ``tensor``, looking through ops that carry integers."""
    while tensor.inputs:
        producer = tensor.inputs[0]
        if producer.op not in _CARRY_OPS or not producer.inputs:
            return producer
        tensor = producer.inputs[0]
    return None


def _reader_nodes(tensor: gs.Tensor, outputs: set[int]) -> list[gs.Node] | None:
    """The nodes that read ``tensor``, looking through ops that carry integers; None when it
    (or a carried copy) is a graph output, which stays float."""
    if id(tensor) in outputs:
        return None
    readers: list[gs.Node] = []
    for reader in tensor.outputs:
        if reader.op in _CARRY_OPS and reader.outputs:
            carried = _reader_nodes(reader.outputs[0], outputs)
            if carried is None:
                return None
            readers.extend(carried)
        else:
            readers.append(reader)
    return readers


def tied_layers(graph: gs.Graph, layers: Iterable[Layer]) -> list[Layer]:
    """The weight layers of ``graph`` whose constant something else also reads: another layer
    through other views (a tied embedding and lm_head), or a node that stays float.
    Quantizing them would store the weight twice (float and integer, or two integer
    layouts), so they stay float."""
    groups: dict[str, list[Layer]] = {}
    for layer in layers:
        if layer.source is not None and not layer.operand:
            groups.setdefault(layer.source.constant.name, []).append(layer)
    if not groups:
        return []
    # Readers from the graph itself: copies of a graph share constants, whose ``outputs``
    # then list the nodes of every copy.
    readers: dict[int, list[gs.Node]] = {}
    for node in (n for g in iter_graphs(graph) for n in g.nodes):
        for tensor in node.inputs:
            readers.setdefault(id(tensor), []).append(node)
    tied: list[Layer] = []
    for group in groups.values():
        chains = {id(layer.node) for layer in group}
        chains |= {id(step) for layer in group for step in layer.source.steps}
        read = [group[0].source.constant]
        read += [step.outputs[0] for layer in group for step in layer.source.steps]
        alone = all(id(reader) in chains for t in read for reader in readers.get(id(t), []))
        if not alone or len({layer.source.key for layer in group}) > 1:
            tied.extend(group)
    return tied
