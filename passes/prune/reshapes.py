"""Rules for ops that move channels between axes or lay them side by side.

Transpose, Flatten, Reshape (keeping channels, flattening them, or splitting them into units
such as attention heads), Squeeze, Unsqueeze and Expand move the channel axis; Concat lays
groups side by side, and Split or Slice take such runs apart again where they cut between
groups.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.prune.layout import (
    CountRead,
    GroupBook,
    Layout,
    Segment,
    element_count,
    static_size,
    tensor_rank,
    tensor_shape,
)

from onnxslim.rewrite import constant_value, static_dim

__all__ = ["ReshapeRules"]


_Place = tuple[gs.Node, int, int]  # (node, its constant input, element): where an entry lives


def _shape_entries(node: gs.Node) -> list[tuple[int | None, _Place | None]] | None:
    """A Reshape's target or an Expand's shape, entry by entry: the value where it is known and
    where it can be rewritten. The shape is constant, or concatenated from pieces of which only
    the constant ones are known (exporters compute batch and sequence entries from Shape)."""
    values = constant_value(node.inputs[1])
    if values is not None:
        return [(int(v), (node, 1, i)) for i, v in enumerate(np.ravel(values))]
    target = node.inputs[1]
    concat = target.inputs[0] if isinstance(target, gs.Variable) and target.inputs else None
    if concat is None or concat.op != "Concat":
        return None
    entries: list[tuple[int | None, _Place | None]] = []
    for index, piece in enumerate(concat.inputs):
        values, shape = constant_value(piece), tensor_shape(piece)
        if values is not None:
            entries.extend((int(v), (concat, index, i)) for i, v in enumerate(np.ravel(values)))
        elif shape is not None and len(shape) == 1 and isinstance(shape[0], int):
            entries.extend([(None, None)] * shape[0])
        else:
            return None
    return entries


def _merged_block(dim, length: int, tail: list, rest: list) -> int | None:
    """Elements per channel when an output axis of size ``dim`` holds the ``length`` channels
    merged with the first axes of ``tail`` (what follows them in the input), ``rest`` being
    what follows that output axis; None where it does not. 1: the channels alone; a
    Flatten-like merge of everything; or only the next axes (the copies of a key/value head
    folded into the head axis, in grouped-query attention)."""
    for count in range(len(tail) + 1):
        block = static_size(tail[:count])
        if block is not None and dim == length * block and _same_size(rest, tail[count:]):
            return block
    return None


def _same_size(a: list, b: list) -> bool:
    """Whether two runs of dims hold the same number of elements, symbolic names included."""
    size_a, size_b = static_size(a), static_size(b)
    if size_a is not None and size_b is not None:
        return size_a == size_b
    return a == b and all(isinstance(d, int | str) for d in a)


class ReshapeRules(GroupBook):
    """Handlers ``_op_<Op>`` for the ops named in the module docstring."""

    # -------------------------------------------------------------------- moving the axis

    def _op_Transpose(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        rank = tensor_rank(node.inputs[0])
        if layout is None:
            return self._pass_through(node, None)
        perm = list(node.attrs.get("perm", range(rank - 1, -1, -1) if rank else []))
        if layout.axis not in perm:
            return False
        return self._pass_through(node, layout.moved(perm.index(layout.axis)))

    def _op_Flatten(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        if layout is None:
            return self._pass_through(node, None)
        shape = tensor_shape(node.inputs[0])
        axis = int(node.attrs.get("axis", 1))
        axis = axis + len(shape) if shape is not None and axis < 0 else axis
        inner = static_size(shape[layout.axis + 1 :]) if shape is not None else None
        if axis != layout.axis or inner is None:
            return False
        return self._pass_through(node, layout.moved(1, inner))

    def _op_Reshape(self, node: gs.Node) -> bool:
        """Channels kept on one axis, merged with the axes that follow them, or split into
        units (attention heads: ``[B, S, H*D]`` to ``[B, S, H, D]``), which then go whole."""
        return self._reading_counts(node, self._reshape)

    def _reading_counts(
        self, node: gs.Node, handler: Callable[[gs.Node, dict[int, CountRead]], bool]
    ) -> bool:
        """Run ``handler`` with the entries of the node's shape input that read channel counts
        through Shape; those it does not accept block their groups."""
        counts = {
            entry: self.counts.pop((owner, entry))
            for owner, entry in list(self.counts)
            if owner == id(node)
        }
        handled = handler(node, counts)
        for count in counts.values():
            self.block(count.layout, f"the channel count is read through Shape into '{node.name}'")
        return handled

    def _reads_count(self, counted: CountRead | None, out: Layout) -> bool:
        """Whether a shape entry that reads ``counted`` fits ``out``."""
        return (
            counted is not None
            and len(counted.layout.segments) == len(out.segments) == 1
            and self.find(counted.layout.segments[0].group) == self.find(out.segments[0].group)
            and counted.layout.length * counted.factor == out.length
        )

    def _reshape(self, node: gs.Node, counts: dict[int, CountRead]) -> bool:
        layout = self._only_first(node)
        if layout is None:
            return self._pass_through(node, None)
        source, result = tensor_shape(node.inputs[0]), tensor_shape(node.outputs[0])
        target = _shape_entries(node)
        if source is None or result is None or target is None or len(target) != len(result):
            return False
        axis, tail = layout.axis, source[layout.axis + 1 :]
        for position, dim in enumerate(result):
            rest = result[position + 1 :]
            unit = rest[0] if rest and isinstance(rest[0], int) else 0
            block = _merged_block(dim, layout.length, tail, rest)
            if block is not None:
                out = layout.moved(position, block)
            elif unit and dim * unit == layout.length and _same_size(rest[1:], tail):
                out = self.split_units(layout, position, unit)
            else:
                continue
            copies_channels = axis < len(target) and target[axis][0] == 0
            if out is None or (copies_channels and (position != axis or out.length != dim)):
                break
            value, place = target[position]
            if value is None:
                if not self._reads_count(counts.pop(position, None), out):
                    break
            elif value != -1:
                if place is None:
                    break
                self._edit_entry(node, place, out)
            return self._pass_through(node, out)
        self.block(layout, f"Reshape '{node.name}' splits or mixes the channel axis")
        return True

    def _edit_entry(self, reader: gs.Node, place: _Place, layout: Layout) -> None:
        """Record that the shape entry at ``place`` follows the channel count of ``layout``.
        Where the shape is concatenated once for several readers (CSE shares the keys' and
        values' repeat shapes across layers), the surgery gives ``reader`` its own copy."""
        owner, index, element = place
        shared = owner is not reader and len(reader.inputs[1].outputs) > 1
        edit = {"reader": reader} if shared else {}
        self.edit("entry", owner, index=index, axis=element, layout=layout, **edit)

    def _op_Squeeze(self, node: gs.Node) -> bool:
        return self._reshape_axes(node, unsqueeze=False)

    def _op_Unsqueeze(self, node: gs.Node) -> bool:
        return self._reshape_axes(node, unsqueeze=True)

    def _reshape_axes(self, node: gs.Node, unsqueeze: bool) -> bool:
        layout = self._only_first(node)
        if layout is None:
            return self._pass_through(node, None)
        axes = node.attrs.get("axes")
        if len(node.inputs) > 1:
            axes = constant_value(node.inputs[1])
        rank, out_rank = tensor_rank(node.inputs[0]), tensor_rank(node.outputs[0])
        if axes is None or rank is None or out_rank is None:
            return False
        axes = sorted(int(a) % (out_rank if unsqueeze else rank) for a in np.ravel(axes))
        if unsqueeze:
            kept = [i for i in range(out_rank) if i not in axes]
            return self._pass_through(node, layout.moved(kept[layout.axis]))
        if layout.axis in axes:
            return False
        return self._pass_through(
            node, layout.moved(layout.axis - sum(a < layout.axis for a in axes))
        )

    def _op_Expand(self, node: gs.Node) -> bool:
        return self._reading_counts(node, self._expand)

    def _expand(self, node: gs.Node, counts: dict[int, CountRead]) -> bool:
        """Channels kept on their axis, which the shape leaves at 1 or states as the channel
        count: a constant (rewritten) or the count read through Shape (which follows)."""
        layout = self._only_first(node)
        if layout is None:
            return self._pass_through(node, None)
        shape, rank, entries = _shape_entries(node), tensor_rank(node.inputs[0]), None
        if shape is None and (entries := element_count(node.inputs[1])) is not None:
            shape = [(None, None)] * entries  # computed whole: counts read through Shape
        if rank is None or shape is None:
            return False
        out_rank = max(rank, len(shape))
        out = layout.moved(layout.axis + out_rank - rank)
        position = out.axis - (out_rank - len(shape))
        if position < 0:
            return self._pass_through(node, out)
        value, place = shape[position]
        if value is None:
            if not self._reads_count(counts.pop(position, None), out):
                return False
        elif value == layout.length and place is not None:
            self._edit_entry(node, place, out)
        elif value != 1:
            return False
        return self._pass_through(node, out)

    # ------------------------------------------------------------------- side by side

    def _op_Concat(self, node: gs.Node) -> bool:
        rank = tensor_rank(node.outputs[0]) or tensor_rank(node.inputs[0])
        layouts = [self.layout(t) for t in node.inputs]
        if rank is None or all(layout is None for layout in layouts):
            return self._pass_through(node, None)
        axis = int(node.attrs.get("axis", 0)) % rank
        known = [layout for layout in layouts if layout is not None]
        if any(layout.axis != axis for layout in known):
            if None in layouts:
                return False
            out = known[0]
            for tensor in node.inputs:  # as earlier unifies may have left them
                out = self.unify(out, self.layout(tensor), self._why(node))
            self.touch(node, out)
            return self._pass_through(node, out)
        segments: list[Segment] = []
        for tensor, layout in zip(node.inputs, layouts, strict=True):
            if layout is None:
                size = static_dim((tensor_shape(tensor) or [None] * (axis + 1))[axis])
                if size is None:
                    return False
                reason = f"'{tensor.name}' enters Concat '{node.name}' from an unprunable layer"
                layout = Layout(axis, (Segment(self.new_group(size, reason), size),))
            segments.extend(layout.segments)
        out = Layout(axis, tuple(segments))
        self.touch(node, out)
        return self._pass_through(node, out)

    def _pieces(self, layout: Layout, bounds: list[tuple[int, int]]) -> list[Layout] | None:
        """The segments between each (start, end), cutting groups where bounds fall inside
        them; None where that is impossible."""
        layout = self.cut(layout, {bound for pair in bounds for bound in pair})
        if layout is None:
            return None
        starts, offset = [], 0
        for segment in layout.segments:
            starts.append(offset)
            offset += segment.length
        edges = {*starts, offset}
        pieces = []
        for start, end in bounds:
            if start not in edges or end not in edges or start > end:
                return None
            taken = [s for s, at in zip(layout.segments, starts, strict=True) if start <= at < end]
            pieces.append(Layout(layout.axis, tuple(taken)))
        return pieces

    def _op_Split(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        rank = tensor_rank(node.inputs[0])
        if layout is None:
            return self._pass_through(node, None)
        if rank is None or int(node.attrs.get("axis", 0)) % rank != layout.axis:
            return self._pass_through(node, layout)
        sizes = node.attrs.get("split")
        if len(node.inputs) > 1 and node.inputs[1].name:
            sizes = constant_value(node.inputs[1])
        if sizes is None:
            # Equal parts: written out after pruning, so only where no block of features
            # (whose size may come from a stand-in dimension) is involved.
            count = len(node.outputs)
            even = layout.length % count == 0 and all(s.block == 1 for s in layout.segments)
            sizes = [layout.length // count] * count if even else None
        if sizes is None:
            return False
        ends = np.cumsum([int(s) for s in sizes]).tolist()
        pieces = self._pieces(layout, list(zip([0, *ends[:-1]], ends, strict=True)))
        if pieces is None or any(not piece.segments for piece in pieces):
            return False
        for output, piece in zip(node.outputs, pieces, strict=True):
            self.set(output, piece)
        self.edit("split", node, layouts=tuple(pieces))
        return True

    def _op_Slice(self, node: gs.Node) -> bool:
        layout = self._only_first(node)
        if layout is None:
            return self._pass_through(node, None)
        values = [constant_value(t) if t.name else None for t in node.inputs[1:5]]
        rank = tensor_rank(node.inputs[0])
        if rank is None or len(values) < 2:
            return False
        axes = values[2] if len(values) > 2 and values[2] is not None else None
        if axes is None and len(values) > 2 and node.inputs[3].name:
            return False  # computed axes
        if axes is None and values[0] is None:
            return False
        axes = [int(a) % rank for a in (range(len(values[0])) if axes is None else axes)]
        if layout.axis not in axes:
            # Bounds computed from shapes (the rotary embedding's halves of a head) do not
            # matter along other axes.
            return self._pass_through(node, layout)
        if values[0] is None or values[1] is None:
            return False
        position = axes.index(layout.axis)
        steps = values[3] if len(values) > 3 and values[3] is not None else None
        if steps is not None and steps[position] != 1:
            return False
        length = layout.length
        start, end = (int(v[position]) for v in values[:2])
        start, end = (min(max(v + length if v < 0 else v, 0), length) for v in (start, end))
        pieces = self._pieces(layout, [(0, start), (start, end)])
        if pieces is None or not pieces[1].segments:
            return False
        self.set(node.outputs[0], pieces[1])
        self.edit("bounds", node, axis=position, layouts=tuple(pieces))
        return True
