"""Scope: what every rewrite asks of a model's graphs, gathered once per pass run.

A rewrite must not touch a tensor that is part of some graph's interface (an input or output of
the main graph or of any If/Loop/Scan body, where an output may name a tensor of an outer
graph), must not reach across graph boundaries, and needs fresh names that no graph uses. A
``Scope`` answers those questions for the whole model, and the small queries rules are made of:
who writes a tensor, who alone reads it, what constant it holds.

>>> import onnx_graphsurgeon as gs, numpy as np
>>> x = gs.Variable("x", np.float32, [2])
>>> y = gs.Variable("y", np.float32, [2])
>>> one = gs.Constant("one", np.ones(1, np.float32))
>>> graph = gs.Graph(nodes=[gs.Node("Mul", inputs=[x, one], outputs=[y])], inputs=[x],
...                  outputs=[y], opset=17)
>>> scope = Scope(graph)
>>> scope.is_scalar(scope.other_input(graph.nodes[0], x), 1.0)
True
>>> scope.is_protected(y), scope.sole_reader(x) is graph.nodes[0]
(True, False)
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Iterable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.model import iter_graphs
from onnxslim.rewrite import edits, tensors
from onnxslim.rewrite.nodes import STANDARD_DOMAINS, describe_nodes, is_op

__all__ = ["Scope"]


class Scope:
    """Facts about every graph of a model and the edits that keep them true.

    Built once per pass run from the main graph (``Scope(graph, opset=ctx.model.opset)``).
    Queries are about the graph as it is now (gs keeps readers and producers current), except
    the interface, which rewrites never change. Nodes a rewrite creates should be added with
    :meth:`add_node` or :meth:`replace`, so that queries see which graph they belong to.
    Tensors and nodes are keyed by ``id``: gs defines ``__eq__`` on both, not identity.
    """

    def __init__(self, root: gs.Graph, opset: int | None = None) -> None:
        self.root = root
        self.opset = int(root.opset) if opset is None else int(opset)
        self.graphs = list(iter_graphs(root))
        self._inputs = {id(t) for g in self.graphs for t in g.inputs}
        self._outputs = Counter(id(t) for g in self.graphs for t in g.outputs)
        self._graph_of = {id(n): g for g in self.graphs for n in g.nodes}
        self._tensor_names: set[str] | None = None
        self._node_names: set[str] | None = None
        self.notes: dict[str, list[gs.Node]] = {}

    # ------------------------------------------------------------------------ the interface

    def is_protected(self, tensor: gs.Tensor) -> bool:
        """Whether ``tensor`` is an input or output of some graph: its name and identity are
        part of the model's interface (or a subgraph's), so no rewrite may remove it."""
        return id(tensor) in self._inputs or id(tensor) in self._outputs

    def is_graph_input(self, tensor: gs.Tensor) -> bool:
        return id(tensor) in self._inputs

    def graph_output_count(self, tensor: gs.Tensor) -> int:
        """How many graphs give ``tensor`` out (a body may pass on an outer tensor)."""
        return self._outputs[id(tensor)]

    def graph_of(self, node: gs.Node) -> gs.Graph | None:
        """The graph ``node`` belongs to (None for a node the scope has not seen)."""
        return self._graph_of.get(id(node))

    # ------------------------------------------------------------------------- structure

    is_op = staticmethod(is_op)

    def producer(self, tensor: gs.Tensor | None, op: str | Collection[str] | None = None):
        """The node that writes ``tensor``, when it is ``op`` (any standard op if None)."""
        if not isinstance(tensor, gs.Variable) or len(tensor.inputs) != 1:
            return None
        node = tensor.inputs[0]
        if op is None:
            return node if node.domain in STANDARD_DOMAINS else None
        return node if is_op(node, op) else None

    def readers(self, tensor: gs.Tensor) -> list[gs.Node]:
        """The distinct nodes that read ``tensor``, in subgraphs too."""
        return list({id(n): n for n in tensor.outputs}.values())

    def sole_reader(self, tensor: gs.Tensor | None, op: str | Collection[str] | None = None):
        """The one node that reads ``tensor`` (perhaps more than once), when nothing else sees
        it (no graph output, no reader elsewhere), it is ``op`` if given, and it lives in the
        graph where ``tensor`` is made; else None."""
        if tensor is None or self.is_protected(tensor) or not tensor.outputs:
            return None
        reader = tensor.outputs[0]
        if any(other is not reader for other in tensor.outputs):
            return None
        if op is not None and not is_op(reader, op):
            return None
        producer = tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs else None
        if producer is not None and self.graph_of(producer) is not self.graph_of(reader):
            return None
        return reader

    def read_once(self, tensor: gs.Tensor | None, op: str | Collection[str] | None = None):
        """Like :meth:`sole_reader`, and the reader takes ``tensor`` as one input only."""
        reader = self.sole_reader(tensor, op)
        return reader if reader is not None and len(tensor.outputs) == 1 else None

    def only_reader(self, tensor: gs.Tensor, node: gs.Node) -> bool:
        """Whether ``node`` alone reads ``tensor`` and nothing outside the graph sees it."""
        return self.sole_reader(tensor) is node

    def feeder(
        self,
        node: gs.Node | None,
        tensor: gs.Tensor | None,
        op: str | Collection[str] | None = None,
        *,
        once: bool = False,
    ):
        """The ``op`` node that writes ``tensor`` for ``node`` alone (``once``: which reads
        it as one input only): removing ``node`` would leave it unread. The usual step of a
        chain, walked backwards."""
        producer = self.producer(tensor, op)
        if producer is None or node is None:
            return None
        reader = self.read_once(tensor) if once else self.sole_reader(tensor)
        return producer if reader is node else None

    def only_feeds(self, tensor: gs.Tensor, nodes: Collection[gs.Node], depth: int = 8) -> bool:
        """Whether removing ``nodes`` leaves ``tensor`` unneeded: no graph sees it, and every
        reader is one of ``nodes`` or only feeds them in turn (the Shape -> Gather -> Concat
        chains that compute a removed Reshape's target, say), within ``depth`` steps."""
        inside = {id(node) for node in nodes}

        def unneeded(current: gs.Tensor, steps: int) -> bool:
            if self.is_protected(current):
                return False
            for reader in current.outputs:
                if id(reader) in inside:
                    continue
                if steps == 0 or not all(unneeded(t, steps - 1) for t in reader.outputs):
                    return False
            return True

        return unneeded(tensor, depth)

    @staticmethod
    def other_input(node: gs.Node | None, tensor: gs.Tensor) -> gs.Tensor | None:
        """The second operand of a binary ``node`` of which ``tensor`` is one."""
        if node is None or len(node.inputs) != 2:
            return None
        first, second = node.inputs
        if first is tensor:
            return second
        return first if second is tensor else None

    @staticmethod
    def present(node: gs.Node, index: int) -> gs.Tensor | None:
        """Input ``index`` of ``node``, or None where it is absent or left empty."""
        if index < len(node.inputs) and node.inputs[index].name:
            return node.inputs[index]
        return None

    # ------------------------------------------------------------------ tensors and values

    element_type = staticmethod(tensors.element_type)
    dims = staticmethod(tensors.dims)
    rank = staticmethod(tensors.rank)
    static_shape = staticmethod(tensors.static_shape)
    constant = staticmethod(tensors.constant_value)
    constant_ints = staticmethod(tensors.constant_ints)
    scalar = staticmethod(tensors.scalar_value)
    is_scalar = staticmethod(tensors.is_scalar)

    def ints_param(
        self, node: gs.Node, name: str, index: int, input_since: int
    ) -> tuple[bool, list[int] | None]:
        """(given, values) of an int-list parameter that is attribute ``name`` before opset
        ``input_since`` and input ``index`` from then on (Squeeze's axes, Slice's starts,
        Reshape's shape...); values None when given but not constant."""
        if self.opset < input_since:
            value = node.attrs.get(name)
            return value is not None, None if value is None else [int(v) for v in value]
        tensor = self.present(node, index)
        return tensor is not None, tensors.constant_ints(tensor)

    # --------------------------------------------------------------------------- editing

    def set_ints_param(
        self, node: gs.Node, name: str, index: int, input_since: int, values: list[int]
    ) -> None:
        """Write an int-list parameter in the form of the model's opset (see
        :meth:`ints_param`): an attribute, or a new int64 constant at input ``index``."""
        if self.opset < input_since:
            node.attrs[name] = list(values)
            return
        while len(node.inputs) <= index:
            node.inputs.append(gs.Variable.empty())
        base = f"{node.name or node.outputs[0].name}_{name}"
        node.inputs[index] = self.new_constant(base, np.array(values, dtype=np.int64))

    def fresh_name(self, base: str) -> str:
        """A tensor name no graph of the model uses (``base`` itself when free)."""
        if self._tensor_names is None:
            self._tensor_names = {name for g in self.graphs for name in g.tensors()}
        return edits.fresh_name(base, self._tensor_names)

    def fresh_node_name(self, base: str) -> str:
        """A node name no graph of the model uses."""
        if self._node_names is None:
            self._node_names = {n.name for g in self.graphs for n in g.nodes}
        return edits.fresh_name(base, self._node_names)

    def new_constant(self, base: str, values: np.ndarray) -> gs.Constant:
        """An initializer holding ``values`` under a fresh name."""
        return gs.Constant(self.fresh_name(base), np.asarray(values))

    def add_node(self, graph: gs.Graph, node: gs.Node) -> gs.Node:
        graph.nodes.append(node)
        self._graph_of[id(node)] = graph
        return node

    def replace(
        self,
        nodes: Sequence[gs.Node],
        op: str,
        inputs: Sequence[gs.Tensor],
        outputs: Sequence[gs.Tensor],
        attrs: dict | None = None,
        domain: str | None = None,
    ) -> gs.Node:
        """Detach ``nodes`` and let one new ``op`` node write ``outputs``, which keep their
        names, readers and graph-output places. The node is named under the scope the old
        nodes share (``/layer.0/ln/`` + ``op``) and joins the graph of the first of them."""
        graph = self.graph_of(nodes[0])
        prefix = os.path.commonprefix([node.name or "" for node in nodes])
        name = self.fresh_node_name(prefix[: prefix.rfind("/") + 1] + op)
        for node in nodes:
            edits.detach(node)
        fused = gs.Node(
            op, name=name, attrs=dict(attrs or {}), inputs=list(inputs), outputs=list(outputs)
        )
        if domain:
            fused.domain = domain
        return self.add_node(graph, fused)

    def can_bypass(self, node: gs.Node, source: gs.Tensor | None = None) -> bool:
        """Whether :meth:`bypass` would succeed."""
        graph = self.graph_of(node)
        return graph is not None and edits.can_bypass(graph, node, source)

    def bypass(self, node: gs.Node, source: gs.Tensor | None = None) -> bool:
        """:func:`onnxslim.rewrite.bypass` in the graph of ``node``."""
        graph = self.graph_of(node)
        return graph is not None and edits.bypass(graph, node, source)

    detach = staticmethod(edits.detach)
    replace_input = staticmethod(edits.replace_input)
    replace_uses = staticmethod(edits.replace_uses)

    # ----------------------------------------------------------------------------- notes

    def leave(self, reason: str, nodes: gs.Node | Iterable[gs.Node]) -> None:
        """Record that ``nodes`` stay as they are because of ``reason``: a rule set's record
        says ``left N node(s) because REASON: Op 'name', ...``."""
        group = self.notes.setdefault(reason, [])
        group.extend([nodes] if isinstance(nodes, gs.Node) else nodes)

    def note_lines(self, prefix: str) -> list[str]:
        """The recorded reasons as note lines, the first nodes of each named."""
        return [
            f"{prefix}: left {len(nodes)} node(s) because {reason}: {describe_nodes(nodes)}"
            for reason, nodes in self.notes.items()
        ]
