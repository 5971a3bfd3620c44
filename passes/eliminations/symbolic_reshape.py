"""A Reshape target computed from runtime shapes, written as a constant with 0 and -1.

Exporters compute targets like ``Concat(Unsqueeze(Gather(Shape(x), 0)), [3], [16], ...)``
because the batch (or sequence) is symbolic. Most of those entries need no runtime value: an
entry equal to the input's own dim at that position is a 0 (copy), a dim known static is its
size, and the one entry left, if only one is, is a -1 (the element count decides it). The
Shape -> Gather -> Unsqueeze -> Concat chain then has no reader left and goes, and shape
inference sees the Reshape's output dims.

One case a constant target cannot keep: a -1 next to an entry that is 0 at run time (an empty
batch) leaves the -1 undecided, where the computed target had its value; onnxruntime then
refuses the Reshape. Models that run empty batches should keep this rule out of their
pipeline (``--skip symbolic-shapes``).
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

__all__ = ["SymbolicReshapeTarget", "constant_target"]


class SymbolicReshapeTarget(Rule):
    """A Reshape whose target is computed from shapes becomes one with a constant target:
    entries equal to the input's dim at their position as 0 (``allowzero=0``), static dims
    as their size, and at most one other entry as -1."""

    anchors = ("Reshape",)
    min_opset = 5

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        target = scope.present(node, 1)
        if target is None or scope.constant(target) is not None:
            return fail("its target is constant already")
        entries = shape_entries(target)
        if entries is None:
            return fail("its target is not read from shapes and constants")
        resolved = constant_target(entries, node.inputs[0], bool(node.attrs.get("allowzero", 0)))
        if resolved is None:
            return fail(
                "its target has more than one entry that is neither a dim of its input nor static",
                tell=True,
            )
        return Match(node, target=resolved)

    def rewrite(self, match: Match) -> None:
        node = match.node
        name = f"{node.name or node.outputs[0].name}_target"
        node.inputs[1] = match.scope.new_constant(name, np.array(match.target, dtype=np.int64))


def constant_target(entries: list, data: gs.Tensor, allowzero: bool) -> list[int] | None:
    """The constant equivalent of a Reshape target of ``data`` read as ``entries``
    (:func:`onnxslim.rewrite.shape_entries`), or None where two entries stay unknown."""
    size = len(data.shape) if data.shape is not None else 0
    resolved: list[int | None] = []
    for position, entry in enumerate(entries):
        if isinstance(entry, int):
            resolved.append(entry)
        elif not isinstance(entry, DimOf):
            resolved.append(None)
        elif not allowzero and position < size and same_dim(entry, DimOf(data, position)):
            resolved.append(0)
        else:
            known = static_size(entry.tensor, entry.axis)
            # A static 0 would read as a copy unless allowzero says otherwise.
            resolved.append(known if known is not None and (known > 0 or allowzero) else None)
    unknown = [i for i, value in enumerate(resolved) if value is None or value == -1]
    if len(unknown) > 1:
        return None
    return [-1 if value is None else value for value in resolved]
