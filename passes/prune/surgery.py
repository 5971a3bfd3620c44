"""Removing channels: apply the edits of a group analysis for the channels each group keeps.

Producers lose output rows, consumers lose input columns, and everything that states a channel
count (BatchNormalization statistics, per-channel constants, a depthwise Conv's ``group``,
Reshape targets and Resize sizes, Split sizes, Slice bounds) is rewritten from the kept
indices. Constants that other nodes also read are copied rather than changed. Shapes of the
tensors that lost channels are then forgotten, for shape inference to derive again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.prune.layout import Edit, GroupAnalysis, Layout

from onnxslim.rewrite import Scope, constant_value

__all__ = ["SurgeryError", "kept_indices", "remove_channels"]


class SurgeryError(ValueError):
    """A constant does not have the size the analysis expected: the graph is left as it was."""


def kept_indices(
    layout: Layout, keep: Mapping[int, np.ndarray], find: Callable[[int], int]
) -> np.ndarray:
    """Indices along ``layout.axis`` that survive when each group keeps ``keep[group]``."""
    parts, offset = [], 0
    for segment in layout.segments:
        kept = keep.get(find(segment.group))
        kept = np.arange(segment.size) if kept is None else kept
        blocks = kept[:, None] * segment.block + np.arange(segment.block)[None, :]
        parts.append(offset + blocks.ravel())
        offset += segment.length
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


class _Surgeon:
    def __init__(self, graph: gs.Graph, analysis: GroupAnalysis, keep: Mapping[int, np.ndarray]):
        self.graph = graph
        self.analysis = analysis
        self.keep = keep
        self.scope = Scope(graph)

    def kept(self, layout: Layout) -> np.ndarray:
        return kept_indices(layout, self.keep, self.analysis.find)

    def touches(self, layout: Layout) -> bool:
        return any(self.analysis.find(s.group) in self.keep for s in layout.segments)

    def set_constant(self, node: gs.Node, index: int, values: np.ndarray) -> None:
        """Give ``node`` new values at input ``index``, copying a constant shared with others."""
        tensor = node.inputs[index]
        shared = len(tensor.outputs) != 1 or self.scope.is_protected(tensor)
        if isinstance(tensor, gs.Constant) and not shared:
            tensor.values = values
            return
        node.inputs[index] = self.scope.new_constant(f"{tensor.name or node.name}_pruned", values)

    def apply(self, edit: Edit) -> None:
        layouts = (edit.layout,) if edit.layout is not None else edit.layouts
        if not any(self.touches(layout) for layout in layouts):
            return
        getattr(self, f"_{edit.kind}")(edit)

    def _slice(self, edit: Edit) -> None:
        values = constant_value(edit.node.inputs[edit.index])
        if values.shape[edit.axis] != edit.layout.length:
            raise SurgeryError(
                f"{edit.node.op} '{edit.node.name}' input {edit.index} has "
                f"{values.shape[edit.axis]} entries along axis {edit.axis}, "
                f"expected {edit.layout.length}"
            )
        self.set_constant(edit.node, edit.index, np.take(values, self.kept(edit.layout), edit.axis))

    def _entry(self, edit: Edit) -> None:
        node = edit.node if edit.reader is None else self.own_shape(edit.reader)
        values = np.array(constant_value(node.inputs[edit.index]))
        if values[edit.axis] in (0, -1):
            return
        values[edit.axis] = len(self.kept(edit.layout))
        self.set_constant(node, edit.index, values)

    def own_shape(self, reader: gs.Node) -> gs.Node:
        """The Concat that makes ``reader``'s shape input, copied for ``reader`` alone when
        other nodes read the same shape."""
        shape = reader.inputs[1]
        concat = shape.inputs[0]
        if len(shape.outputs) == 1:
            return concat
        output = gs.Variable(
            self.scope.fresh_name(f"{shape.name}_pruned"), shape.dtype, shape.shape
        )
        copy = gs.Node(
            "Concat",
            self.scope.fresh_node_name(f"{concat.name}_pruned"),
            dict(concat.attrs),
            list(concat.inputs),
            [output],
        )
        self.graph.nodes.append(copy)
        reader.inputs[1] = output
        return copy

    def _group(self, edit: Edit) -> None:
        edit.node.attrs["group"] = len(self.kept(edit.layout))

    def _split(self, edit: Edit) -> None:
        sizes = np.array([len(self.kept(layout)) for layout in edit.layouts], dtype=np.int64)
        node = edit.node
        if int(self.graph.opset) < 13:
            node.attrs["split"] = sizes.tolist()
            return
        node.attrs.pop("num_outputs", None)
        constant = gs.Constant(self.scope.fresh_name(f"{node.name}_split"), sizes)
        if len(node.inputs) > 1:
            node.inputs[1] = constant
        else:
            node.inputs.append(constant)

    def _bounds(self, edit: Edit) -> None:
        before, taken = edit.layouts
        start = len(self.kept(before))
        for index, value in ((1, start), (2, start + len(self.kept(taken)))):
            values = np.array(constant_value(edit.node.inputs[index]))
            values[edit.axis] = value
            self.set_constant(edit.node, index, values)


def remove_channels(
    graph: gs.Graph, analysis: GroupAnalysis, keep: Mapping[int, np.ndarray]
) -> int:
    """Remove every channel not in ``keep[group]`` (groups not in ``keep`` stay whole).

    Returns how many tensors lost channels; their shapes are reset for inference to refill.
    """
    surgeon = _Surgeon(graph, analysis, keep)
    for edit in analysis.edits:
        surgeon.apply(edit)
    graph.toposort()  # after the Concats copied for one reader
    tensors = graph.tensors()
    changed = 0
    for name, layout in analysis.layouts.items():
        tensor = tensors.get(name)
        if isinstance(tensor, gs.Variable) and surgeon.touches(layout):
            changed += 1
            if not surgeon.scope.is_protected(tensor):
                tensor.shape = None
    return changed
