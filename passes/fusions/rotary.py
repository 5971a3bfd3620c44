"""Rotary position embedding into RotaryEmbedding (opset 23).

``x * cos + rotate(x) * sin`` on 4-D heads ``[B, H, S, D]``, with ``cos`` and ``sin`` of shape
``[B or 1, S, D]`` unsqueezed at axis 1. Two rotations: rotate-half (Llama, GPT-NeoX:
``concat(-x[..., D/2:], x[..., :D/2])``) and interleaved (GPT-J: ``stack(-x[..., 1::2],
x[..., ::2], -1)`` flattened). RotaryEmbedding takes the cos and sin of each pair once
(``[B, S, D/2]``), so the rule needs them to repeat: rotate-half tables made as
``Cos(Concat(f, f))`` become ``Cos(f)``, and constant tables are checked and sliced. onnxruntime
wants the tables' batch to be the input's: a table whose batch is not provably so is expanded.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.eliminations.slices import INT64_MAX, SliceSpec
from onnxslim.passes.fusions.broadcast import dim_extent, expand_to

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

__all__ = ["RotaryFusion"]


class RotaryFusion(Rule):
    """``x * cos + rotate(x) * sin`` on 4-D heads into one RotaryEmbedding node."""

    anchors = ("Add",)
    commute = True
    min_opset = 23
    produces = "RotaryEmbedding"

    def __init__(self) -> None:
        # One half-table per table tensor and rotation, shared by every layer that reads it.
        self.halves: dict[tuple[int, bool], gs.Tensor] = {}

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        straight = scope.feeder(node, node.inputs[0], "Mul", once=True)
        rotated = scope.feeder(node, node.inputs[1], "Mul", once=True)
        if straight is None or rotated is None:
            return fail("it does not add two products")
        for x, cos in (straight.inputs, straight.inputs[::-1]):
            for turned, sin in (rotated.inputs, rotated.inputs[::-1]):
                found = _rotation(turned, x, scope) if scope.rank(x) == 4 else None
                if found is None:
                    continue
                interleaved, nodes = found
                tables = [_table(t, scope) for t in (cos, sin)]
                if any(t is None for t in tables):
                    return fail("cos and sin are not [B, S, D] tables unsqueezed at axis 1")
                halves = [_half_source(t, interleaved, scope) for t in tables]
                if any(h is None for h in halves):
                    return fail("the halves of the cos and sin tables are not known to repeat")
                return Match(
                    [*nodes, straight, rotated, node],
                    x=x,
                    tables=tables,
                    halves=halves,
                    interleaved=interleaved,
                )
        return fail("no operand is x rotated by half or pairwise")

    def rewrite(self, match: Match) -> None:
        scope = match.scope
        graph = scope.graph_of(match.node)
        halves = []
        for table, source in zip(match.tables, match.halves, strict=True):
            key = (id(table), match.interleaved)
            if key not in self.halves:
                self.halves[key] = _build_half(table, source, graph, scope)
            halves.append(_batched(self.halves[key], match.x, graph, scope))
        attrs = {"interleaved": int(match.interleaved)}
        inputs = [match.x, *halves]
        scope.replace(match.nodes, "RotaryEmbedding", inputs, [match.node.outputs[0]], attrs)


def _rotation(turned: gs.Tensor, x: gs.Tensor, scope: Scope):
    """(interleaved, nodes) where ``turned`` is x rotated by half or pairwise, else None."""
    width = static_size(x, 3)
    if width is None or width % 2:
        return None
    reshape = scope.producer(turned, "Reshape")
    if reshape is not None:
        return _pairwise(reshape, x, width, scope)
    concat = scope.producer(turned, "Concat")
    if concat is None or len(concat.inputs) != 2 or concat.attrs.get("axis") not in (-1, 3):
        return None
    negated, kept = concat.inputs
    neg = scope.feeder(concat, negated, "Neg", once=True)
    second = scope.feeder(neg, neg.inputs[0], "Slice", once=True) if neg else None
    first = scope.feeder(concat, kept, "Slice", once=True)
    half = width // 2
    if (
        second is not None
        and first is not None
        and _sliced(second, x, half, INT_END, 1, width, scope)
        and _sliced(first, x, 0, half, 1, width, scope)
    ):
        return False, [second, neg, first, concat]
    return None


INT_END = INT64_MAX


def _sliced(
    node: gs.Node, x: gs.Tensor, start: int, end: int, step: int, width: int, scope: Scope
) -> bool:
    """Whether ``node`` is ``x[..., start:end:step]`` on the last axis (any end at or past
    the dim counts as the end)."""
    if node.inputs[0] is not x:
        return False
    spec = SliceSpec.of(node, scope)
    by_axis = spec.by_axis(4) if spec is not None else None
    if by_axis is None or list(by_axis) != [3]:
        return False
    got_start, got_end, got_step = by_axis[3]
    ends = {end} if end != INT_END else None
    end_ok = got_end in ends if ends is not None else got_end >= width
    return got_start == start and got_step == step and end_ok


def _pairwise(reshape: gs.Node, x: gs.Tensor, width: int, scope: Scope):
    """``Reshape(Concat(Unsqueeze(-x[..., 1::2], -1), Unsqueeze(x[..., ::2], -1), -1),
    [B, H, S, D])``: (True, nodes), or None."""
    concat = scope.feeder(reshape, reshape.inputs[0], "Concat", once=True)
    if concat is None or len(concat.inputs) != 2 or concat.attrs.get("axis") not in (-1, 4):
        return None
    unsqueezes = [scope.feeder(concat, t, "Unsqueeze", once=True) for t in concat.inputs]
    if any(u is None for u in unsqueezes):
        return None
    if any(scope.ints_param(u, "axes", 1, 13)[1] not in ([-1], [4]) for u in unsqueezes):
        return None
    negated, kept = (u.inputs[0] for u in unsqueezes)
    neg = scope.feeder(unsqueezes[0], negated, "Neg", once=True)
    odd = scope.feeder(neg, neg.inputs[0], "Slice", once=True) if neg else None
    even = scope.feeder(unsqueezes[1], kept, "Slice", once=True)
    if odd is None or even is None:
        return None
    if not (
        _sliced(odd, x, 1, INT_END, 2, width, scope)
        and _sliced(even, x, 0, INT_END, 2, width, scope)
    ):
        return None
    entries = shape_entries(reshape.inputs[1])
    if entries is None or len(entries) != 4 or entries[3] not in (-1, width):
        return None
    if not all(
        entry is not None and entry != 0 and same_dim(entry, DimOf(x, axis))
        for axis, entry in enumerate(entries[:3])
    ):
        return None
    return True, [odd, neg, even, *unsqueezes, concat, reshape]


def _table(tensor: gs.Tensor, scope: Scope) -> gs.Tensor | None:
    """The ``[B or 1, S, D]`` table that ``tensor`` unsqueezes at axis 1."""
    unsqueeze = scope.producer(tensor, "Unsqueeze")
    if unsqueeze is None or scope.ints_param(unsqueeze, "axes", 1, 13)[1] != [1]:
        return None
    table = unsqueeze.inputs[0]
    return table if scope.rank(table) == 3 else None


def _half_source(table: gs.Tensor, interleaved: bool, scope: Scope):
    """Where the repeating half of a table comes from: its values, for a constant whose halves
    are equal; ``(f, [ops from f to the table])`` for ``op(...op(Concat(f, f)))`` made of Cos,
    Sin, Cast and Muls by scalars (rotate-half only); None where not provable."""
    values = scope.constant(table)
    if values is not None:
        half = values[..., ::2] if interleaved else values[..., : values.shape[-1] // 2]
        other = values[..., 1::2] if interleaved else values[..., values.shape[-1] // 2 :]
        return np.ascontiguousarray(half) if np.array_equal(half, other) else None
    if interleaved:
        return None
    chain, current = [], table
    while True:
        node = scope.producer(current)
        if scope.is_op(node, "Concat"):
            first, second = node.inputs if len(node.inputs) == 2 else (None, None)
            if first is None or first is not second or node.attrs.get("axis") not in (-1, 2):
                return None
            return first, chain[::-1]
        if scope.is_op(node, ("Cos", "Sin", "Cast")):
            current = node.inputs[0]
        elif scope.is_op(node, "Mul") and len(node.inputs) == 2:
            current = next((t for t in node.inputs if scope.scalar(t) is None), None)
            if current is None or sum(scope.scalar(t) is None for t in node.inputs) != 1:
                return None
        else:
            return None
        chain.append(node)


def _build_half(table: gs.Tensor, source, graph: gs.Graph, scope: Scope) -> gs.Tensor:
    """The half-table from :func:`_half_source`: a constant, or the chain made again on f."""
    if isinstance(source, np.ndarray):
        return scope.new_constant(f"{table.name}_half", source)
    result, chain = source
    for node in chain:
        inputs = [t if scope.scalar(t) is not None else result for t in node.inputs]
        output = gs.Variable(
            scope.fresh_name(f"{node.outputs[0].name}_half"), node.outputs[0].dtype
        )
        scope.add_node(
            graph,
            gs.Node(
                node.op,
                name=scope.fresh_node_name(f"{node.name}_half"),
                attrs=dict(node.attrs),
                inputs=inputs,
                outputs=[output],
            ),
        )
        result = output
    return result


def _batched(half: gs.Tensor, x: gs.Tensor, graph: gs.Graph, scope: Scope) -> gs.Tensor:
    """``half`` with x's batch: itself where provably so, else expanded to it."""
    if same_dim(DimOf(half, 0), DimOf(x, 0)):
        return half
    ones = scope.new_constant("rotary_ones", np.ones(2, np.int64))
    return expand_to(half, [dim_extent(DimOf(x, 0), graph, scope), ones], graph, scope, "batched")
