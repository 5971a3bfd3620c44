"""Shape arithmetic that reads only static dims, as a constant.

Exported transformers ask for dims at run time even where the dim is fixed: ViT computes
``Gather(Shape(x), 1)`` on ``[batch, 197, 768]``, GPT-2 ``Slice(Shape(x), -1:)`` on
``[batch, sequence, 768]``. fold-constants cannot fold them, since the whole shape is not
static; the selected dims are, and those are all the result needs.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.eliminations.slices import SliceSpec

from onnxslim.rewrite import Dims, Match, MatchResult, Rule, Scope, fail, static_size

__all__ = ["StaticShapeValues"]


class StaticShapeValues(Rule):
    """``Gather(Shape(x), i)`` (constant indices, negative ones counted from the end, axis 0),
    ``Slice(Shape(x), ...)`` with constant parameters and ``Shape(x, start, end)`` where every
    dim they select is static: their readers read an int64 constant instead. A tensor that is
    a graph output keeps its node, so that its name survives."""

    anchors = ("Shape", "Gather", "Slice")

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        if len(node.outputs) != 1:
            return fail("it has several outputs")
        result = node.outputs[0]
        if scope.graph_output_count(result) or not result.outputs:
            return fail("its output is a graph output or unread")
        value = _static_value(node, scope)
        if value is None:
            return fail("it reads a dim that is not static")
        return Match(node, value=value)

    def rewrite(self, match: Match) -> None:
        result = match.node.outputs[0]
        constant = match.scope.new_constant(f"{result.name}_static", match.value)
        match.scope.replace_uses(result, constant)


def _static_value(node: gs.Node, scope: Scope) -> np.ndarray | None:
    """The int64 value of a Shape, or of a Gather or Slice of one, where it reads only static
    dims; None otherwise."""
    if node.op == "Shape":
        return _only_static(_shape_dims(node, scope))
    if not node.inputs:
        return None
    producer = scope.producer(node.inputs[0], "Shape")
    dims = _shape_dims(producer, scope) if producer is not None else None
    if dims is None:
        return None
    if node.op == "Gather":
        return _gathered(node, dims, scope)
    return _sliced(node, dims, scope)


def _shape_dims(node: gs.Node, scope: Scope) -> Dims | None:
    """The dims a Shape node gives out (its start/end applied), static where shape inference
    or the ops writing the tensor say so; None where the rank is unknown."""
    dims = scope.dims(node.inputs[0]) if node.inputs else None
    if dims is None:
        return None
    dims = [
        d if isinstance(d, int) else static_size(node.inputs[0], axis) or d
        for axis, d in enumerate(dims)
    ]
    rank = len(dims)
    # Shape clamps start and end like Python slicing does.
    return dims[slice(node.attrs.get("start", 0), node.attrs.get("end", rank))]


def _gathered(node: gs.Node, dims: Dims, scope: Scope) -> np.ndarray | None:
    if node.attrs.get("axis", 0) not in (0, -1) or len(node.inputs) < 2:
        return None
    indices = scope.constant(node.inputs[1])
    rank = len(dims)
    if indices is None or indices.dtype.kind not in "iu":
        return None
    if np.any(indices < -rank) or np.any(indices >= rank):
        return None
    values = _only_static([dims[int(i)] for i in indices.reshape(-1)])
    return None if values is None else values.reshape(indices.shape)


def _sliced(node: gs.Node, dims: Dims, scope: Scope) -> np.ndarray | None:
    spec = SliceSpec.of(node, scope)
    if spec is None or len(spec.starts) != 1 or spec.axes[0] not in (0, -1) or not spec.steps[0]:
        return None
    picked = range(len(dims))[slice(spec.starts[0], spec.ends[0], spec.steps[0])]
    return _only_static([dims[i] for i in picked])


def _only_static(dims: Dims | None) -> np.ndarray | None:
    if dims is None or any(not isinstance(d, int) for d in dims):
        return None
    return np.array(dims, dtype=np.int64)
