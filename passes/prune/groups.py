"""Dependency groups of channels: which channels of a graph must be removed together.

Channels are born in a *source* (a Conv, or a Gemm/MatMul with a constant weight) and flow
through the graph along one axis of every tensor they reach. Everything that touches them
either passes them on (activations, BatchNormalization, pools, Resize, Transpose, a Reshape
that keeps or flattens them), mixes several flows that must then lose the same channels (the
branches of a residual Add, the two inputs of a gating Mul), lays flows side by side
(Concat, and Split or Slice taking them apart again), or consumes them (the input channels of
the next Conv, the rows of the next Gemm or MatMul weight).

The walk follows the graph in topological order and gives every tensor a :class:`Layout`: the
axis that carries channels and the run of :class:`Segment` (group, channel count, elements
per channel) along it. A Concat output has one segment per input; a Flatten into a Gemm turns
each channel into a block of features. Groups merge with union-find where flows meet. Every
node that has to change when a group loses channels leaves an :class:`Edit` behind; anything
the walk does not understand blocks the groups it sees, with the reason, so that they are
reported rather than broken.

A Reshape that splits channels into ``[units, width]`` (attention heads) makes the group lose
channels in whole units from then on: every layout seen so far is rewritten so that one
channel of the group is one head, a block of ``width`` elements. Products of two activations
(scores, context) carry heads along their batch axes.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.prune.layout import (
    ChannelGroup,
    CountRead,
    GroupAnalysis,
    Layout,
    element_count,
    tensor_rank,
    tensor_shape,
)
from onnxslim.passes.prune.reshapes import ReshapeRules

from onnxslim.model import iter_graphs
from onnxslim.rewrite import STANDARD_DOMAINS, constant_value

__all__ = ["POINTWISE", "analyze"]


POINTWISE = frozenset(
    [
        "Relu",
        "LeakyRelu",
        "Sigmoid",
        "Tanh",
        "Clip",
        "HardSigmoid",
        "HardSwish",
        "Elu",
        "Selu",
        "Celu",
        "Softplus",
        "Softsign",
        "Gelu",
        "Erf",
        "Abs",
        "Neg",
        "Exp",
        "Log",
        "Sqrt",
        "Reciprocal",
        "Identity",
        "Cast",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "Sin",
        "Cos",
        "Mish",
        "ThresholdedRelu",
        "Not",
        "IsNaN",
        "IsInf",
        "Dropout",
    ]
)
_ELEMENTWISE = frozenset(
    [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "Where",
        "PRelu",
        "Equal",
        "Greater",
        "Less",
        "GreaterOrEqual",
        "LessOrEqual",
        "And",
        "Or",
        "Xor",
        "Mod",
        "BitShift",
    ]
)
_POOLS = frozenset(
    ["MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"]
)
_REDUCE = frozenset(
    [
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    ]
)


def _dims_read(reader: gs.Node, rank: int | None) -> list[int] | None:
    """Which entries of a shape ``reader`` takes: a Gather of constant indices, or a Slice
    with constant bounds; None for anything else."""
    if rank is None:
        return None
    if reader.op == "Gather" and int(reader.attrs.get("axis", 0)) == 0:
        index = constant_value(reader.inputs[1])
        return None if index is None else [int(i) % rank for i in np.ravel(index)]
    if reader.op != "Slice":
        return None
    bounds = [constant_value(t) if t.name else None for t in reader.inputs[1:5]]
    if len(bounds) < 2 or any(b is None or np.size(b) != 1 for b in bounds[:2]):
        return None
    if any(b is not None and int(np.ravel(b)[0]) not in (0, -1) for b in bounds[2:3]):
        return None  # axes: a shape has only axis 0
    step = int(np.ravel(bounds[3])[0]) if len(bounds) > 3 and bounds[3] is not None else 1
    start, end = (int(np.ravel(b)[0]) for b in bounds[:2])
    return list(range(rank))[slice(start, end, step)]


_IGNORED = ()
_Step = tuple[gs.Tensor | None, int | None, int]


def _scalar_step(user: gs.Node, count: gs.Tensor, factor: int) -> _Step | None:
    """Where ``user`` takes a count held in a one-element tensor: (its output, the position
    in a shape vector or None, the new factor); None where the count is used otherwise."""
    if element_count(count) != 1:
        return None
    if user.op in ("Unsqueeze", "Squeeze", "Cast") and user.inputs[0] is count:
        return user.outputs[0], None, factor
    if user.op == "Mul" and len(user.inputs) == 2:
        other = user.inputs[1] if user.inputs[0] is count else user.inputs[0]
        scale = constant_value(other)
        if scale is not None and scale.size == 1 and scale.dtype.kind in "iu":
            multiple = int(np.ravel(scale)[0])
            return (user.outputs[0], None, factor * multiple) if multiple > 0 else None
        return None
    if user.op == "Concat" and int(user.attrs.get("axis", 0)) == 0:
        sizes = [element_count(p) for p in user.inputs]
        position = [i for i, p in enumerate(user.inputs) if p is count][0]
        if None in sizes[:position]:
            return None
        return user.outputs[0], sum(sizes[:position]), factor
    return None


def _shape_step(user: gs.Node, shape: gs.Tensor, position: int, factor: int) -> _Step | None:
    """Where ``user`` takes a shape vector whose entry ``position`` holds a count: (None,
    position, factor) for a Reshape or Expand that reads it as its shape, the next tensor to
    follow, ``_IGNORED`` for the Equal of the expand idiom, or None."""
    if user.op in ("Reshape", "Expand") and user.inputs[1] is shape and user.inputs[0] is not shape:
        return None, position, factor
    if user.op == "Cast" and user.inputs[0] is shape:
        return user.outputs[0], position, factor
    if user.op == "Equal" and _expand_mask(user, shape, position):
        return _IGNORED
    if user.op == "Where" and user.inputs[2] is shape and user.inputs[0] is not shape:
        condition = user.inputs[0].inputs[0] if user.inputs[0].inputs else None
        if (
            condition is not None
            and condition.op == "Equal"
            and _expand_mask(condition, shape, position)
        ):
            return user.outputs[0], position, factor
    return None


def _expand_mask(equal: gs.Node, shape: gs.Tensor, position: int) -> bool:
    """Whether ``equal`` compares ``shape`` with a constant that is below 1 at ``position``
    (the -1 entries of ``expand``), only for Where nodes that then take ``shape`` itself:
    a count, which is at least 1, is never replaced."""
    if len(equal.inputs) != 2 or shape not in equal.inputs:
        return False
    other = equal.inputs[1] if equal.inputs[0] is shape else equal.inputs[0]
    value = constant_value(other)
    length = element_count(shape)
    if value is None or length is None or value.size not in (1, length):
        return False
    if np.broadcast_to(np.ravel(value), (length,))[position] >= 1:
        return False
    readers = equal.outputs[0].outputs
    return all(
        r.op == "Where" and r.inputs[0] is equal.outputs[0] and r.inputs[2] is shape
        for r in readers
    )


class _Walk(ReshapeRules):
    """Builds layouts node by node; see the module docstring."""

    def run(self) -> None:
        outer_reads = self._subgraph_reads()
        for node in self.graph.nodes:
            for tensor in node.inputs:
                if tensor.name in outer_reads:
                    self.block(self.layout(tensor), f"'{tensor.name}' is read inside a subgraph")
            handler = getattr(self, f"_op_{node.op}", None)
            if node.domain not in STANDARD_DOMAINS:
                handler = None
            if handler is None:
                handler = self._elementwise if node.op in _ELEMENTWISE else handler
                handler = self._unary if node.op in POINTWISE else handler
                handler = self._pool if node.op in _POOLS else handler
                handler = self._reduce if node.op in _REDUCE else handler
            if handler is None or not handler(node):
                self._unknown(node)
        for tensor in self.graph.outputs:
            self.block(self.layout(tensor), f"reaches graph output '{tensor.name}'")

    def _subgraph_reads(self) -> set[str]:
        reads: set[str] = set()
        for graph in list(iter_graphs(self.graph))[1:]:
            for node in graph.nodes:
                reads.update(t.name for t in node.inputs)
        return reads

    def _unknown(self, node: gs.Node) -> None:
        for tensor in node.inputs:
            self.block(self.layout(tensor), f"{node.op} '{node.name}' is not understood")

    # ---------------------------------------------------------------- sources and consumers

    def _op_Conv(self, node: gs.Node) -> bool:
        weights = node.inputs[1] if len(node.inputs) > 1 else None
        if not isinstance(weights, gs.Constant) or len(weights.shape) < 3:
            return False
        layout = self._only_first(node)
        if layout is not None and layout.axis != 1:
            self.block(layout, f"Conv '{node.name}' reads channels off axis 1")
            layout = None
        groups = int(node.attrs.get("group", 1))
        out_channels = weights.shape[0]
        if groups == 1:
            if layout is not None:
                self.edit("slice", node, index=1, axis=1, layout=layout)
            out = self.source(node, 1, out_channels)
        elif weights.shape[1] == 1 and layout is not None and layout.length == groups:
            out = layout.moved(1, out_channels // groups)
            self.set(node.outputs[0], out)
            self.edit("group", node, layout=layout)
        else:
            self.block(layout, f"grouped Conv '{node.name}' ({groups} groups)")
            return True
        self.edit("slice", node, index=1, axis=0, layout=out, producer="weight")
        if len(node.inputs) > 2 and node.inputs[2].name:
            self.edit("slice", node, index=2, axis=0, layout=out)
        return True

    def _op_Gemm(self, node: gs.Node) -> bool:
        weights = node.inputs[1]
        if not isinstance(weights, gs.Constant) or len(weights.shape) != 2:
            return False
        if node.attrs.get("transA", 0):
            return False
        trans_b = int(node.attrs.get("transB", 0))
        layout = self._only_first(node)
        if layout is not None:
            if layout.axis != 1:
                self.block(layout, f"Gemm '{node.name}' reads channels off axis 1")
            else:
                self.edit("slice", node, index=1, axis=1 if trans_b else 0, layout=layout)
        units = weights.shape[0 if trans_b else 1]
        out = self.source(node, 1, units)
        self.edit("slice", node, index=1, axis=0 if trans_b else 1, layout=out, producer="weight")
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias = node.inputs[2]
            shape = tensor_shape(bias) or []
            if shape and shape[-1] == units and isinstance(bias, gs.Constant):
                self.edit("slice", node, index=2, axis=len(shape) - 1, layout=out)
            elif shape and shape[-1] != 1:
                self.block(out, f"Gemm '{node.name}' has a bias that is not a constant per unit")
        return True

    def _op_MatMul(self, node: gs.Node) -> bool:
        weight = node.inputs[1]
        rank = tensor_rank(node.inputs[0])
        if not isinstance(weight, gs.Constant):
            return self._batched_matmul(node)
        if len(weight.shape) != 2 or not rank or rank < 2:
            return False
        layout = self._only_first(node)
        if layout is not None:
            if layout.axis != rank - 1:
                self.block(layout, f"MatMul '{node.name}' reads channels off its last axis")
            else:
                self.edit("slice", node, index=1, axis=0, layout=layout)
        out = self.source(node, rank - 1, weight.shape[1])
        self.edit("slice", node, index=1, axis=1, layout=out, producer="weight")
        return True

    def _batched_matmul(self, node: gs.Node) -> bool:
        """A product of two activations (attention scores, attention times values): channels
        may ride along the batch axes, as attention heads do, never the matrix axes."""
        ranks = [tensor_rank(t) for t in node.inputs]
        layouts = [self.layout(t) for t in node.inputs]
        if None in ranks or min(ranks) < 2:
            return False
        out_rank = max(ranks)
        moved = []
        for layout, rank in zip(layouts, ranks, strict=True):
            if layout is not None and layout.axis >= rank - 2:
                return False
            if layout is not None:
                moved.append(layout.moved(layout.axis + out_rank - rank))
        if not moved:
            return self._pass_through(node, None)
        out = moved[0]
        for layout in moved[1:]:
            out = self.unify(out, layout, self._why(node))
        for tensor, layout in zip(node.inputs, layouts, strict=True):
            if layout is None and not self._broadcasts(tensor, out.axis - out_rank):
                self.block(out, f"MatMul '{node.name}' mixes in '{tensor.name}' per channel")
        self.touch(node, out)
        return self._pass_through(node, out)

    def _op_Shape(self, node: gs.Node) -> bool:
        """Reading a shape is harmless while the channel count read out of it only becomes
        entries of Reshape targets and Expand shapes for tensors of the same channels."""
        layout = self._only_first(node)
        if layout is None:
            return True
        rank = tensor_rank(node.inputs[0])
        partial = "start" in node.attrs or "end" in node.attrs
        for reader in node.outputs[0].outputs:
            read = None if partial else _dims_read(reader, rank)
            if read is not None and layout.axis in read:
                counted = len(read) == 1 and self._count_into_shapes(reader.outputs[0], layout)
                read = read if counted else None
            if read is None:
                self.block(layout, f"the channel count is read through Shape '{node.name}'")
        return True

    def _count_into_shapes(self, count: gs.Tensor, layout: Layout) -> bool:
        """Whether the channel count ``count`` only becomes entries of Reshape targets and
        Expand shapes; records those entries in ``self.counts``.

        On the way it may pass Unsqueeze, Squeeze and Cast, a Mul by a constant (the copies
        of a key/value head in grouped-query attention), Concat into a shape, and the
        ``Where(Equal(shape, -1), 1, shape)`` that TorchScript writes for ``expand``."""
        found: dict[tuple[int, int], CountRead] = {}
        pending: list[tuple[gs.Tensor, int | None, int]] = [(count, None, 1)]
        while pending:
            current, position, factor = pending.pop()
            if current in self.graph.outputs:
                return False
            for user in current.outputs:
                step = (
                    _scalar_step(user, current, factor)
                    if position is None
                    else _shape_step(user, current, position, factor)
                )
                if step is None:
                    return False
                if step is _IGNORED:
                    continue
                if step[0] is None:  # a Reshape or Expand reads the shape
                    found[(id(user), position)] = CountRead(layout, factor)
                else:
                    pending.append(step)
        self.counts.update(found)
        return True

    def _op_BatchNormalization(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        if layout is not None and (layout.axis != 1 or len(node.outputs) > 1):
            self.block(layout, f"BatchNormalization '{node.name}' is not in inference form")
            return True
        if layout is not None:
            for index in range(1, 5):
                producer = "bn" if index == 1 else None
                self.edit("slice", node, index=index, axis=0, layout=layout, producer=producer)
        return self._pass_through(node, layout)

    def _op_InstanceNormalization(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        if layout is not None and layout.axis != 1:
            return False
        if layout is not None:
            for index in (1, 2):
                self.edit("slice", node, index=index, axis=0, layout=layout)
        return self._pass_through(node, layout)

    def _unary(self, node: gs.Node) -> bool:
        return self._pass_through(node, self._only_first(node))

    def _pool(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        if layout is not None and layout.axis != 1:
            self.block(layout, f"{node.op} '{node.name}' pools the channel axis")
            return True
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            self.block(layout, f"{node.op} '{node.name}' returns indices")
            return True
        return self._pass_through(node, layout)

    def _elementwise(self, node: gs.Node) -> bool:
        ranks = [tensor_rank(t) for t in node.inputs]
        present = [(t, r) for t, r in zip(node.inputs, ranks, strict=True) if t.name]
        with_layout = [(t, self.layout(t)) for t, _ in present if self.layout(t) is not None]
        if not with_layout:
            return self._pass_through(node, None)
        if any(r is None for _, r in present):
            for _, layout in with_layout:
                self.block(layout, f"{node.op} '{node.name}' has inputs of unknown rank")
            return True
        out_rank = max(r for _, r in present)
        first_tensor, first = with_layout[0]
        out = first.moved(first.axis + out_rank - tensor_rank(first_tensor))
        for tensor, _ in with_layout[1:]:
            layout = self.layout(tensor)  # as an earlier unify may have left it
            out = self.unify(
                out, layout.moved(layout.axis + out_rank - tensor_rank(tensor)), self._why(node)
            )
        for index, tensor in enumerate(node.inputs):
            if not tensor.name or self.layout(tensor) is not None:
                continue
            axis = out.axis - (out_rank - tensor_rank(tensor))
            dim = tensor_shape(tensor)[axis] if axis >= 0 else 1
            if dim == 1:
                continue
            if isinstance(tensor, gs.Constant) and dim == out.length:
                self.edit("slice", node, index=index, axis=axis, layout=out)
            elif dim != out.length or not self._resize_filler(node, tensor, axis, out):
                self.block(out, f"{node.op} '{node.name}' mixes in '{tensor.name}' per channel")
        self.touch(node, out)
        return self._pass_through(node, out)

    def _resize_filler(self, reader: gs.Node, tensor: gs.Tensor, axis: int, out: Layout) -> bool:
        """Whether ``tensor`` is a filler that only ``reader`` reads, made by ConstantOfShape or
        Expand from a constant shape whose entry ``axis`` can follow the channel count."""
        node = tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs else None
        index = {"ConstantOfShape": 0, "Expand": 1}.get(node.op if node else "")
        readers = list(tensor.outputs)
        only_reader = len(readers) == 1 and readers[0] is reader
        if index is None or not only_reader or index >= len(node.inputs) or not tensor_rank(tensor):
            return False
        shape = constant_value(node.inputs[index])
        position = axis - (tensor_rank(tensor) - len(shape)) if shape is not None else -1
        if position < 0 or shape[position] != out.length or self.layout(node.inputs[0]):
            return False
        if index == 1 and not self._broadcasts(node.inputs[0], axis - tensor_rank(tensor)):
            return False
        self.edit("entry", node, index=index, axis=position, layout=out)
        self.touch(node, out)
        return True

    def _op_Resize(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        if layout is None:
            return self._pass_through(node, None)
        for index, kind in ((1, "roi"), (2, "scales"), (3, "sizes")):
            if index >= len(node.inputs) or not node.inputs[index].name:
                continue
            values = constant_value(node.inputs[index])
            if values is None or (kind == "scales" and values.size and values[layout.axis] != 1):
                return False
            if kind == "sizes" and values.size:
                self.edit("entry", node, index=index, axis=layout.axis, layout=layout)
        return self._pass_through(node, layout)

    _op_Upsample = _op_Resize

    def _op_Pad(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        if layout is None:
            return self._pass_through(node, None)
        pads = node.attrs.get("pads")
        if len(node.inputs) > 1:
            pads = constant_value(node.inputs[1])
            axes = constant_value(node.inputs[3]) if len(node.inputs) > 3 else None
            if pads is None or (axes is not None and axes.size):
                return False
        rank = tensor_rank(node.inputs[0])
        if pads is None or rank is None or pads[layout.axis] or pads[layout.axis + rank]:
            return False
        return self._pass_through(node, layout)

    def _reduce(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        if layout is None:
            return self._pass_through(node, None)
        axes = node.attrs.get("axes")
        if len(node.inputs) > 1 and node.inputs[1].name:
            axes = constant_value(node.inputs[1])
        rank = tensor_rank(node.inputs[0])
        if axes is None or rank is None or not np.size(axes):
            return False
        axes = [int(a) % rank for a in np.ravel(axes)]
        if layout.axis in axes:
            return False
        if node.attrs.get("keepdims", 1):
            return self._pass_through(node, layout)
        return self._pass_through(
            node, layout.moved(layout.axis - sum(a < layout.axis for a in axes))
        )

    def _op_Softmax(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        rank = tensor_rank(node.inputs[0])
        if layout is None:
            return self._pass_through(node, None)
        if rank is None:
            return False
        # Before opset 13 the op flattens every axis from ``axis`` on (default 1) into one.
        legacy = int(self.graph.opset) < 13
        axis = int(node.attrs.get("axis", 1 if legacy else -1)) % rank
        if layout.axis == axis or (legacy and layout.axis > axis):
            return False
        return self._pass_through(node, layout)

    _op_LogSoftmax = _op_Softmax

    def _op_LayerNormalization(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        rank = tensor_rank(node.inputs[0])
        if layout is None:
            return self._pass_through(node, None)
        if rank is None or layout.axis >= int(node.attrs.get("axis", -1)) % rank:
            return False
        return self._pass_through(node, layout)


def analyze(graph: gs.Graph) -> GroupAnalysis:
    """Walk ``graph`` (topologically sorted, shapes inferred) and return its channel groups."""
    walk = _Walk(graph)
    walk.run()
    groups: dict[int, ChannelGroup] = {}
    for group in walk.parent:
        root = walk.find(group)
        if root not in groups and root not in walk.retired:
            groups[root] = ChannelGroup(
                id=root,
                size=walk.sizes[root],
                sources=walk.sources.get(root, []),
                members=walk.members.get(root, []),
                blocked=walk.reasons.get(root, []),
                unit=walk.units.get(root, 1),
            )
    for group in groups.values():
        if not group.sources and not group.blocked:
            group.blocked.append("no layer produces these channels")
    return GroupAnalysis(groups, walk.edits, walk.layouts, walk.find)
