"""An Expand shape computed from runtime shapes, written as a constant with 1s.

``Expand(x, Concat(Gather(Shape(x), 0), [12], ...))`` asks for the batch of ``x`` at run time,
but broadcasting keeps a dim of ``x`` wherever the shape says 1: an entry equal to the dim of
``x`` it lines up with can be 1, a static entry its size. When every entry resolves, the shape
is a constant and its Shape chain goes.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.rewrite import (
    DimOf,
    Match,
    MatchResult,
    Rule,
    Scope,
    fail,
    same_dim,
    shape_entries,
    static_size,
)

__all__ = ["SymbolicExpandShape"]


class SymbolicExpandShape(Rule):
    """An Expand whose shape is computed from shapes becomes one with a constant shape:
    static entries as their size, entries equal to the input's dim they line up with as 1."""

    anchors = ("Expand",)
    min_opset = 8

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        shape = scope.present(node, 1)
        if shape is None or scope.constant(shape) is not None:
            return fail("its shape is constant already")
        entries = shape_entries(shape)
        data_rank = scope.rank(node.inputs[0])
        if entries is None or data_rank is None:
            return fail("its shape is not read from shapes and constants, or its rank is unknown")
        offset = len(entries) - data_rank
        resolved = []
        for position, entry in enumerate(entries):
            if isinstance(entry, int):
                resolved.append(entry)
                continue
            known = static_size(entry.tensor, entry.axis) if isinstance(entry, DimOf) else None
            lined_up = position - offset
            if known is not None:
                resolved.append(known)
            elif (
                isinstance(entry, DimOf)
                and lined_up >= 0
                and same_dim(entry, DimOf(node.inputs[0], lined_up))
            ):
                resolved.append(1)
            else:
                return fail("an entry of its shape is neither static nor a dim of its input")
        return Match(node, shape=resolved)

    def rewrite(self, match: Match) -> None:
        node = match.node
        name = f"{node.name or node.outputs[0].name}_shape"
        node.inputs[1] = match.scope.new_constant(name, np.array(match.shape, dtype=np.int64))
