"""cse: compute each distinct value once."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from onnxslim.model import is_graph_attribute, read_constant, read_constant_bytes
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass
from onnxslim.rewrite import (
    NONDETERMINISTIC_OPS,
    STANDARD_DOMAINS,
    Scope,
    element_type,
    replace_uses,
)

__all__ = ["EliminateCommonSubexpressions"]

_PREFIX_BYTES = 4096
# Domains whose ops are pure functions of their inputs and attributes (but see below).
_DETERMINISTIC_DOMAINS = (*STANDARD_DOMAINS, "ai.onnx.ml")


@register_pass("cse")
class EliminateCommonSubexpressions(Pass):
    """Merge nodes that compute the same thing: same op, attributes and inputs.

    Inputs are the same when they are the same tensor, or initializers of equal type, shape and
    bytes. Nodes are visited in topological order, so once two nodes merge, their readers can
    merge in turn: whole duplicated chains (the position ids or attention masks that exporters
    compute once per layer) collapse into one. Graph outputs keep their names. Random ops,
    Dropout, custom domains and nodes whose subgraphs differ in any byte are never merged;
    If/Loop/Scan bodies are processed too.
    """

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        scope = Scope(graph, opset=ctx.model.opset)
        pure = _PureNodes()
        changed = False
        for g in scope.graphs:
            changed |= _merge_duplicates(g, scope, pure)
        return changed


def _merge_duplicates(graph: gs.Graph, scope: Scope, pure: _PureNodes) -> bool:
    """Merge every node of ``graph`` into the first earlier node that computes the same."""
    subgraphs = _SubgraphBytes()
    candidates: dict[tuple, list[gs.Node]] = defaultdict(list)
    merged: set[int] = set()
    for node in graph.nodes:
        signature = _signature(node, pure)
        if signature is None:
            continue
        same = candidates[signature]
        keeper = next(
            (k for k in same if _same_constants(k, node) and subgraphs.same(k, node)), None
        )
        if keeper is not None and _merge(keeper, node, scope):
            merged.add(id(node))
        else:
            same.append(node)
    if merged:
        graph.nodes = [n for n in graph.nodes if id(n) not in merged]
    return bool(merged)


def _signature(node: gs.Node, pure: _PureNodes) -> tuple | None:
    """Everything that decides what ``node`` computes, except the bytes of its constant inputs
    (compared only between nodes that agree on the rest); None for nodes never merged."""
    if not pure(node) or not any(t.name for t in node.outputs):
        return None
    plain = {name: value for name, value in node.attrs.items() if not is_graph_attribute(value)}
    try:
        attributes = OnnxExporter.export_attributes(plain)
    except Exception:  # gs raises bare exceptions on attributes it cannot export
        return None
    return (
        node.op,
        node.domain or "",
        tuple(sorted((a.name, _attribute_bytes(a)) for a in attributes)),
        tuple(sorted(name for name, value in node.attrs.items() if is_graph_attribute(value))),
        tuple(_input_key(t) for t in node.inputs),
        tuple(bool(t.name) for t in node.outputs),
    )


class _PureNodes:
    """Whether a node and every node of its subgraphs are pure functions, each node decided
    once: asking each If of a nested chain about all it contains would take time exponential
    in the depth."""

    def __init__(self) -> None:
        self._known: dict[int, bool] = {}

    def __call__(self, node: gs.Node) -> bool:
        key = id(node)
        if key not in self._known:
            own = (
                node.domain or ""
            ) in _DETERMINISTIC_DOMAINS and node.op not in NONDETERMINISTIC_OPS
            self._known[key] = own and all(
                self(inner) for sub in _subgraphs(node) for inner in sub.nodes
            )
        return self._known[key]


class _SubgraphBytes:
    """The serialized subgraphs of nodes, made only for nodes that agree on everything else:
    serializing every If of a nested chain would cost the square of the depth."""

    def __init__(self) -> None:
        self._bytes: dict[int, bytes | None] = {}

    def same(self, a: gs.Node, b: gs.Node) -> bool:
        first, second = self._of(a), self._of(b)
        return first is not None and first == second

    def _of(self, node: gs.Node) -> bytes | None:
        key = id(node)
        if key not in self._bytes:
            graphs = {
                name: value for name, value in node.attrs.items() if is_graph_attribute(value)
            }
            try:
                attributes = OnnxExporter.export_attributes(graphs)
            except Exception:  # gs raises bare exceptions on graphs it cannot export
                self._bytes[key] = None
            else:
                self._bytes[key] = b"".join(
                    a.SerializeToString(deterministic=True)
                    for a in sorted(attributes, key=lambda a: a.name)
                )
        return self._bytes[key]


def _subgraphs(node: gs.Node) -> list[gs.Graph]:
    return [
        sub
        for value in node.attrs.values()
        for sub in (value if isinstance(value, list) else [value])
        if isinstance(sub, gs.Graph)
    ]


def _attribute_bytes(attribute: onnx.AttributeProto) -> bytes:
    """The attribute serialized, without the names of tensor values (a Constant node's value
    is the same whatever its initializer was called)."""
    if attribute.type == onnx.AttributeProto.TENSOR:
        attribute = onnx.AttributeProto.FromString(attribute.SerializeToString())
        attribute.t.ClearField("name")
    return attribute.SerializeToString(deterministic=True)


def _input_key(tensor: gs.Tensor) -> Any:
    if isinstance(tensor, gs.Constant):
        return ("constant", element_type(tensor), tuple(tensor.shape))
    if not tensor.name:
        return ("absent",)
    return id(tensor)


def _same_constants(keeper: gs.Node, node: gs.Node) -> bool:
    """Whether the constant inputs of two nodes with one signature hold the same values."""
    return all(
        a is b or _equal_values(a, b)
        for a, b in zip(keeper.inputs, node.inputs, strict=True)
        if isinstance(a, gs.Constant)
    )


def _equal_values(a: gs.Constant, b: gs.Constant) -> bool:
    """Equal bytes (so NaNs of one bit pattern match, 0.0 and -0.0 do not); strings, which
    have no bytes in numpy, compare element by element.

    Weights of one shape read by one input (a layer's query, key and value projections) differ
    early: their first bytes are compared before the rest is read.
    """
    if element_type(a) == onnx.TensorProto.STRING:
        return bool(np.array_equal(read_constant(a), read_constant(b)))
    if read_constant_bytes(a, _PREFIX_BYTES) != read_constant_bytes(b, _PREFIX_BYTES):
        return False
    return read_constant_bytes(a) == read_constant_bytes(b)


def _merge(keeper: gs.Node, duplicate: gs.Node, scope: Scope) -> bool:
    """Let ``keeper``'s outputs stand for ``duplicate``'s and disconnect ``duplicate``.

    Where ``duplicate`` writes a graph output, ``keeper`` writes that tensor instead, so the
    name stays; when both write graph outputs, the two stay apart.
    """
    pairs = list(zip(keeper.outputs, duplicate.outputs, strict=True))
    if any(scope.is_protected(k) and scope.is_protected(d) for k, d in pairs):
        return False
    scope.detach(duplicate)
    for index, (kept, dropped) in enumerate(pairs):
        if not dropped.name:
            continue
        if scope.is_protected(dropped):
            replace_uses(kept, dropped)
            keeper.outputs[index] = dropped
        else:
            replace_uses(dropped, kept)
    return True
