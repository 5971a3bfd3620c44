"""Reading shape arithmetic: which dims a shape vector is made of, and which dims are equal.

Exporters compute Reshape and Expand targets at run time, ``Concat(Unsqueeze(Gather(Shape(x),
0)), Unsqueeze(Gather(Shape(x), 1)), [12], [64])`` for a head split, and shape inference often
knows nothing of the result (TorchScript exports name every such dim ``unk__N``). A rule that
must know that such a Reshape keeps dims 0 and 1 of its input (and splits the last into 12
heads of 64) reads the vector as entries: constants, and :class:`DimOf` references to a dim of
some tensor. :func:`same_dim` then decides whether two dims are provably equal: the same
static size, the same symbolic name, or the same dim of tensors that ops like MatMul, Split,
LayerNormalization or Transpose carry from one to the other.

>>> import onnx_graphsurgeon as gs, numpy as np
>>> x = gs.Variable("x", np.float32, ["batch", "seq", 768])
>>> shape = gs.Variable("shape", np.int64, [3])
>>> graph = gs.Graph(nodes=[gs.Node("Shape", inputs=[x], outputs=[shape])], inputs=[x])
>>> shape_entries(shape)
[DimOf(x, 0), DimOf(x, 1), DimOf(x, 2)]
>>> same_dim(DimOf(x, 2), 768)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxslim.rewrite.nodes import is_op
from onnxslim.rewrite.tensors import constant_value, dims, rank, static_dim

__all__ = [
    "DimOf",
    "Entry",
    "shape_entries",
    "same_dim",
    "dim_aliases",
    "dim_source",
    "static_size",
]

# How far same_dim walks from each side; exports reach the tensor a shape was read from
# within a few ops.
_MAX_STEPS = 12
# Ops whose output has the shape of their first input.
_SAME_SHAPE = frozenset(
    {
        "Cast",
        "CastLike",
        "Identity",
        "Relu",
        "Gelu",
        "Erf",
        "Tanh",
        "Sigmoid",
        "Neg",
        "Sqrt",
        "Reciprocal",
        "Exp",
        "Softmax",
        "LayerNormalization",
        "RMSNormalization",
        "RotaryEmbedding",
        "Dropout",
    }
)
_BROADCASTING = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Where", "And", "Or"})


@dataclass(frozen=True)
class DimOf:
    """Dim ``axis`` (counted from 0) of ``tensor``."""

    tensor: gs.Tensor
    axis: int

    def __repr__(self) -> str:
        return f"DimOf({self.tensor.name}, {self.axis})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DimOf) and other.tensor is self.tensor and other.axis == self.axis

    def __hash__(self) -> int:
        return hash((id(self.tensor), self.axis))


Entry = int | DimOf


def shape_entries(tensor: gs.Tensor | None) -> list[Entry | None] | None:
    """The entries of a 1-D int64 shape vector: ints where constant, :class:`DimOf` where read
    from a tensor's shape, None for an entry computed otherwise; None for the whole where even
    the number of entries is not known."""
    values = constant_value(tensor)
    if values is not None:
        return [int(v) for v in values.reshape(-1)] if values.dtype.kind in "iu" else None
    node = tensor.inputs[0] if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 else None
    if is_op(node, "Shape"):
        source = node.inputs[0]
        size = rank(source)
        if size is None:
            return None
        axes = range(size)[slice(node.attrs.get("start", 0), node.attrs.get("end", size))]
        return [DimOf(source, axis) for axis in axes]
    if is_op(node, "Concat") and node.attrs.get("axis", 0) in (0, -1):
        entries: list[Entry | None] = []
        for piece in node.inputs:
            found = shape_entries(piece)
            if found is None:
                size = dims(piece)
                if size is None or len(size) != 1 or static_dim(size[0]) is None:
                    return None
                found = [None] * size[0]
            entries.extend(found)
        return entries
    if is_op(node, ("Unsqueeze", "Reshape", "Squeeze", "Cast")):
        return _scalar_entries(node.inputs[0])
    if is_op(node, ("Gather", "Slice")):
        return _selected_entries(node)
    if is_op(node, "Where"):
        return _unless_minus_one(node)
    return None


def _scalar_entries(tensor: gs.Tensor) -> list[Entry | None] | None:
    """A scalar or one-entry vector as a one-entry list (Unsqueeze/Reshape of a Gather)."""
    entries = shape_entries(tensor)
    return entries if entries is not None and len(entries) == 1 else None


def _selected_entries(node: gs.Node) -> list[Entry | None] | None:
    """Gather (axis 0) or Slice (step 1) of a shape vector."""
    source = shape_entries(node.inputs[0])
    if source is None:
        return None
    if node.op == "Gather":
        indices = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if node.attrs.get("axis", 0) != 0 or indices is None or indices.dtype.kind not in "iu":
            return None
        picked = [int(i) for i in indices.reshape(-1)]
        if any(not -len(source) <= i < len(source) for i in picked):
            return None
        return [source[i] for i in picked]
    bounds = [constant_value(t) if t.name else None for t in node.inputs[1:5]]
    if len(bounds) < 2 or bounds[0] is None or bounds[1] is None:
        return None
    extra = bounds[2:] + [None] * (4 - len(bounds))
    axes, steps = extra[0], extra[1]
    if (axes is not None and [int(a) for a in axes.reshape(-1)] not in ([0], [-1])) or (
        steps is not None and [int(s) for s in steps.reshape(-1)] != [1]
    ):
        return None
    start, end = int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0])
    return source[start:end]


def _unless_minus_one(node: gs.Node) -> list[Entry | None] | None:
    """``Where(Equal(v, -1), ones, v)``, the way exporters turn -1 into 1 for Expand: ``v``
    itself, where no entry of ``v`` can be -1 (dims read from shapes never are)."""
    condition, ones, v = node.inputs
    equal = condition.inputs[0] if isinstance(condition, gs.Variable) and condition.inputs else None
    if not is_op(equal, "Equal") or v not in equal.inputs:
        return None
    entries = shape_entries(v)
    if entries is None:
        return None
    return [None if entry == -1 or entry is None else entry for entry in entries]


def dim_aliases(tensor: gs.Tensor, axis: int) -> Iterator[tuple[gs.Tensor, int] | int]:
    """What provably has the same size as dim ``axis`` of ``tensor``: (tensor, axis) pairs,
    itself first, then the dims that the ops writing it carry over from their inputs, walking
    up; and an int where a Reshape gave the dim as a constant."""
    seen: set[tuple[int, int]] = set()
    frontier: list = [(tensor, axis)]
    for _ in range(_MAX_STEPS):
        following = []
        for item in frontier:
            if isinstance(item, int):
                yield item
                continue
            current, current_axis = item
            if (id(current), current_axis) in seen:
                continue
            seen.add((id(current), current_axis))
            yield current, current_axis
            following.extend(_carried_from(current, current_axis))
        if not following:
            return
        frontier = following


def _carried_from(tensor: gs.Tensor, axis: int) -> list[tuple[gs.Tensor, int] | int]:
    """The input dims that the op writing ``tensor`` copies to its dim ``axis``."""
    node = tensor.inputs[0] if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 else None
    if node is None or not node.inputs:
        return []
    size = rank(tensor)
    if size is None or not 0 <= axis < size:
        return []
    first = node.inputs[0]
    if is_op(node, _SAME_SHAPE) and rank(first) == size:
        return [(first, axis)]
    if is_op(node, "Transpose") and "perm" in node.attrs:
        return [(first, int(node.attrs["perm"][axis]))]
    if is_op(node, _BROADCASTING):
        return _broadcast_source(node, axis, size)
    if is_op(node, "MatMul") and len(node.inputs) == 2:
        weight = node.inputs[1]
        if rank(first) == size and axis < size - 1 and isinstance(weight, gs.Constant):
            return [(first, axis)] if rank(weight) == 2 else []
        return []
    if is_op(node, ("Split", "Slice")) and rank(first) == size:
        if axis not in _cut_axes(node, size):
            return [(first, axis)]
        return _split_size(node, tensor)
    if is_op(node, "Gather") and node.attrs.get("axis", 0) == 0 and isinstance(first, gs.Constant):
        indices = node.inputs[1]
        if rank(indices) is not None and axis < rank(indices):
            return [(indices, axis)]
    if is_op(node, ("Reshape", "Expand")):
        entries = shape_entries(node.inputs[1]) if len(node.inputs) > 1 else None
        entry = entries[axis] if entries is not None and len(entries) == size else None
        if node.op == "Expand" and not _absent_or_one(first, axis, size):
            # max(input dim, entry): the entry alone only where the input cannot exceed it
            return [(first, axis)] if entry == 1 else []
        if isinstance(entry, DimOf):
            return [(entry.tensor, entry.axis)]
        if node.op == "Reshape" and entry == 0 and not node.attrs.get("allowzero", 0):
            return [(first, axis)]
        if isinstance(entry, int) and entry > 0:
            return [entry]
    return []


def _absent_or_one(tensor: gs.Tensor, axis: int, size: int) -> bool:
    """Whether ``tensor``, broadcast to rank ``size``, is statically 1 (or absent) at ``axis``."""
    sizes = dims(tensor)
    if sizes is None:
        return False
    position = axis - (size - len(sizes))
    return position < 0 or static_dim(sizes[position]) == 1


def _broadcast_source(node: gs.Node, axis: int, size: int) -> list[tuple[gs.Tensor, int]]:
    """The operand whose dim ``axis`` a broadcasting op's output takes: the only operand that
    can be other than 1 there (the others are constants, or statically 1 or absent)."""
    varying = []
    for operand in node.inputs:
        if rank(operand) is None:
            return []
        position = axis - (size - rank(operand))
        sizes = dims(operand)
        if position < 0 or (sizes is not None and static_dim(sizes[position]) == 1):
            continue
        if isinstance(operand, gs.Constant) and operand.shape[position] == 1:
            continue
        varying.append((operand, position))
    return varying if len(varying) == 1 else []


def _split_size(node: gs.Node, tensor: gs.Tensor) -> list[int]:
    """The size a Split with constant sizes gives ``tensor`` (one of its outputs) on its axis."""
    if node.op != "Split":
        return []
    sizes = node.attrs.get("split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1].name:
        values = constant_value(node.inputs[1])
        sizes = None if values is None else [int(v) for v in values.reshape(-1)]
    if sizes is None or len(sizes) != len(node.outputs):
        return []
    position = next(i for i, t in enumerate(node.outputs) if t is tensor)
    return [sizes[position]]


def dim_source(tensor: gs.Tensor, axis: int) -> DimOf:
    """The furthest tensor dim known equal to dim ``axis`` of ``tensor`` (a graph input's,
    where the walk reaches one): reading a size from there keeps intermediate tensors out of
    shape computations, and lets computations that read the same source merge."""
    found = DimOf(tensor, axis)
    for alias in dim_aliases(tensor, axis):
        if not isinstance(alias, int):
            found = DimOf(*alias)
    return found


def static_size(tensor: gs.Tensor, axis: int) -> int | None:
    """Dim ``axis`` of ``tensor`` as an int where it is known: from shape inference, or from
    what the ops writing it say (a Reshape's constant entry, a Split's sizes)."""
    for alias in dim_aliases(tensor, axis):
        size = alias if isinstance(alias, int) else _size(DimOf(*alias))
        if isinstance(size, int):
            return size
    return None


def _cut_axes(node: gs.Node, size: int) -> set[int]:
    """The axes a Split or Slice may shorten (all of them where that is not known)."""
    if node.op == "Split":
        axis = int(node.attrs.get("axis", 0))
        return {axis + size if axis < 0 else axis}
    axes = constant_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    if axes is None:
        starts = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
        return set(range(size)) if starts is None else set(range(starts.size))
    return {int(a) + size if int(a) < 0 else int(a) for a in axes.reshape(-1)}


def _size(entry: Entry) -> int | str | None:
    """A static size, or a symbolic name, for an entry."""
    if isinstance(entry, int):
        return entry
    sizes = dims(entry.tensor)
    if sizes is None or entry.axis >= len(sizes):
        return None
    return sizes[entry.axis] if sizes[entry.axis] not in ("", None) else None


def same_dim(a: Entry, b: Entry) -> bool:
    """Whether two dims are provably equal: the same static size or symbolic name (from shape
    inference), or dims of tensors that ops carry from one to the other."""
    known_a, known_b = _known(a), _known(b)
    return bool(known_a & known_b)


def _known(entry: Entry) -> set:
    """Keys for what an entry is known to equal: its size or name, and its aliases."""
    if isinstance(entry, int):
        return {("size", entry)}
    known = set()
    for alias in dim_aliases(entry.tensor, entry.axis):
        if isinstance(alias, int):
            known.add(("size", alias))
            continue
        size = _size(DimOf(*alias))
        if size is not None:
            known.add(("size", size) if isinstance(size, int) else ("name", size))
        known.add(("dim", id(alias[0]), alias[1]))
    return known
