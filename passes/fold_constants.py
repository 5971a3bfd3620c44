"""fold-constants: nodes whose inputs are all known become the constants they compute.

Per graph (the main graph first, then If/Loop/Scan bodies, which see the outer graph's new
constants), the pass

1. marks the foldable nodes: standard ops whose inputs are constants or outputs of foldable
   nodes, plus Shape and Size of tensors whose shape is fully static and Constant nodes, which
   are folded without evaluating anything;
2. plans to materialise only the *frontier*, the folded tensors that an unfolded node or a
   graph output reads; every folded node disappears;
3. fits the plan into the growth budget: while the file would grow by more than
   ``max_growth_bytes``, frontier producers stay in the graph, worst balance (bytes their
   frontier outputs add minus bytes of the node itself and of the initializers only it
   reads) first, and their inputs join the frontier;
4. evaluates what the frontier needs in one onnxruntime session (node by node when that fails,
   leaving the nodes that onnxruntime cannot run), and fits the plan again with the sizes of
   the values, until nothing is left to evaluate;
5. replaces the frontier tensors by constants and removes the folded nodes.

Growth is counted in serialized protobuf bytes, as the file will change:

* plus each frontier tensor's initializer (name, type, dims and data, framed as a top-level
  initializer record), its typed entry where it is a graph output (minus the entry it had) and,
  below IR version 4, where every initializer is also a graph input, its input entry;
* minus each removed node (a Constant node with its embedded tensor);
* minus the value_info entries of the tensors that disappear with the removed nodes;
* minus each initializer that no node, graph input or graph output reads any more.

The savings it leaves out (a freed top-level initializer's outer record framing, subgraphs'
value_info entries for a tensor that became a constant) only make the real file smaller. So
the guarantee: written by :func:`onnxslim.model.save`, the model after the pass is at most
``max_growth_bytes`` per graph larger than the same model written without it, and with the
default of 0 never larger. (Data in an external file counts as if inline; alignment padding
there is not counted.) Before evaluation, tensors without a static shape count as empty; the
last fit uses the real values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper, helper, numpy_helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxslim.errors import PipelineSpecError
from onnxslim.model import Model, is_graph_attribute, read_constant
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass
from onnxslim.rewrite import (
    NONDETERMINISTIC_OPS,
    NUMPY_NATIVE_TYPES,
    STANDARD_DOMAINS,
    Scope,
    constant_node_value,
    element_type,
    static_shape,
)
from onnxslim.runtime import open_session

__all__ = ["FoldConstants"]

# Quantized models keep their QuantizeLinear/DequantizeLinear pairs: runtimes fuse them into
# integer kernels, and folding DequantizeLinear would store the weights as floats again.
_QUANTIZATION = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Ops whose outputs are sequences or optionals, which cannot be stored as initializers.
_NON_TENSOR_OUTPUTS = frozenset(
    {
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceInsert",
        "SequenceErase",
        "SplitToSequence",
        "Optional",
    }
)
# Output types that onnxruntime hands back as numpy arrays of the same element type.
_NUMPY_RESULT_TYPES = frozenset(
    f"tensor({name})"
    for name in (
        "float",
        "double",
        "float16",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
        "string",
    )
)

_Value = np.ndarray | LazyValues


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Replace nodes whose inputs are all constant by the constants they compute.

    Covers the main graph and If/Loop/Scan bodies, Shape and Size of statically shaped
    tensors (folded without evaluating), Constant nodes, and any standard op on constants
    (evaluated by onnxruntime on the CPU). Random ops, custom domains, ops with subgraphs,
    sequences and QuantizeLinear/DequantizeLinear are left alone.

    Folding is size-aware: counted in serialized bytes (new initializers minus removed nodes,
    their value_info and the initializers nobody reads any more), it makes each graph grow by
    at most ``max_growth_bytes``. With the default of 0 the saved file is never larger than
    without the pass: shape arithmetic still folds, since the nodes it removes outweigh a small
    int64 tensor, while ``Range(0, 100)`` stays a node rather than 800 bytes of data. Allow
    growth to materialise such tensors, e.g. ``fold-constants(max_growth_bytes=1000)``.
    """

    max_growth_bytes: int = 0

    def __post_init__(self) -> None:
        if self.max_growth_bytes < 0:
            raise PipelineSpecError(
                f"fold-constants(max_growth_bytes={self.max_growth_bytes}): must be 0 or more"
            )

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        scope = Scope(graph, opset=ctx.model.opset)
        changed = False
        for g in scope.graphs:
            plan = _Plan.of(g, scope, ctx.model.ir_version)
            if not plan.folded:
                continue
            plan.fit(self.max_growth_bytes)
            while plan.evaluate(ctx.model):
                plan.fit(self.max_growth_bytes)
            plan.leave_notes(self.max_growth_bytes)
            changed |= plan.apply()
        for line in scope.note_lines(self.name):
            ctx.log(line)
        return changed


@dataclass
class _Plan:
    """The foldable nodes of one graph, the values known for their outputs, and their sizes.

    Tensors and nodes are keyed by ``id``: gs defines ``__eq__`` on both, not identity.
    """

    graph: gs.Graph
    scope: Scope
    ir_version: int
    candidates: list[gs.Node] = field(default_factory=list)  # every foldable node, in order
    folded: set[int] = field(default_factory=set)  # the candidates still planned to be folded
    producer: dict[int, gs.Node] = field(default_factory=dict)  # output tensor -> candidate
    values: dict[int, _Value] = field(default_factory=dict)
    kept_for_size: list[gs.Node] = field(default_factory=list)
    failed: set[int] = field(default_factory=set)  # candidates that could not be evaluated
    failures: dict[int, str] = field(default_factory=dict)  # why, for those that ran
    _added_bytes: dict[int, int] = field(default_factory=dict)  # by tensor, until evaluated
    _removed_bytes: dict[int, int] = field(default_factory=dict)  # by node, computed once

    @classmethod
    def of(cls, graph: gs.Graph, scope: Scope, ir_version: int) -> _Plan:
        plan = cls(graph, scope, ir_version)
        for node in graph.nodes:
            static = plan.static_values(node)
            if static is None and not (
                _evaluable(node) and all(plan.is_known(t) for t in node.inputs)
            ):
                continue
            plan.candidates.append(node)
            plan.folded.add(id(node))
            for tensor in node.outputs:
                plan.producer[id(tensor)] = node
            if static is not None:
                plan.values.update((id(t), v) for t, v in zip(node.outputs, static, strict=True))
        return plan

    def is_known(self, tensor: gs.Tensor) -> bool:
        if not tensor.name or isinstance(tensor, gs.Constant):  # "": an omitted optional input
            return True
        return id(tensor) in self.producer

    def static_values(self, node: gs.Node) -> list[_Value] | None:
        """Outputs known without evaluation: Shape/Size of static tensors, Constant nodes."""
        if node.domain not in STANDARD_DOMAINS or len(node.outputs) != 1:
            return None
        if node.op == "Constant":
            value = constant_node_value(node)
            if value is None:
                return None  # strings and sparse values: onnxruntime computes them
            return [value._values if isinstance(value, gs.Constant) else value]
        if node.op not in ("Shape", "Size") or not node.inputs:
            return None
        source = node.inputs[0]
        shape = static_shape(source)
        if shape is None:
            return None
        if node.op == "Size":
            return [np.array(math.prod(shape), dtype=np.int64)]
        rank = len(shape)
        start = _clamp_axis(node.attrs.get("start", 0), rank)
        end = _clamp_axis(node.attrs.get("end", rank), rank)
        return [np.array(shape[start:end], dtype=np.int64)]

    def folded_nodes(self) -> Iterator[gs.Node]:
        return (n for n in self.candidates if id(n) in self.folded)

    def frontier(self) -> list[gs.Tensor]:
        """Folded tensors that an unfolded node (of any graph) or a graph output reads."""
        return [
            t
            for node in self.folded_nodes()
            for t in node.outputs
            if t.name
            and (
                self.scope.graph_output_count(t) or any(id(c) not in self.folded for c in t.outputs)
            )
        ]

    # ------------------------------------------------------------------------------ sizes

    def growth(self, frontier: list[gs.Tensor]) -> int:
        """Bytes the file would gain (negative: lose) if the plan were applied now."""
        added = sum(self.added_bytes(t) for t in frontier)
        removed = sum(self.removed_bytes(n) for n in self.folded_nodes())
        return added - removed - self.freed_bytes()

    def added_bytes(self, tensor: gs.Tensor) -> int:
        """Bytes a frontier tensor adds as an initializer; 0 while its size is unknown."""
        if (known := self._added_bytes.get(id(tensor))) is not None:
            return known
        value = self.values.get(id(tensor))
        if value is not None:
            record, (data_type, dims) = _tensor_bytes(tensor.name, value), _type_of(value)
        elif (estimate := _static_type(tensor)) is not None:
            data_type, dims, nbytes = estimate
            record = _raw_tensor_bytes(tensor.name, data_type, dims, nbytes)
        else:
            return 0
        added = _field_bytes(_field_bytes(record))  # graph { initializer { ... } }
        typed = _field_bytes(helper.make_tensor_value_info(tensor.name, data_type, dims).ByteSize())
        if outputs := self.scope.graph_output_count(tensor):
            added += outputs * (typed - _value_info_bytes(tensor))
        if self.ir_version < 4:
            added += typed
        self._added_bytes[id(tensor)] = added
        return added

    def removed_bytes(self, node: gs.Node) -> int:
        """Bytes that leave with a folded node: the node and its outputs' value_info."""
        key = id(node)
        if key not in self._removed_bytes:
            interface = {id(t) for t in self.graph.inputs + self.graph.outputs}
            entries = sum(
                _value_info_bytes(t)
                for t in node.outputs
                if t.name
                and id(t) not in interface
                and isinstance(t, gs.Variable)
                and (t.dtype is not None or t.shape is not None)  # gs writes no entry else
            )
            node_bytes = _field_bytes(OnnxExporter.export_node(node).ByteSize())
            self._removed_bytes[key] = node_bytes + entries
        return self._removed_bytes[key]

    def freed_bytes(self) -> int:
        """Bytes of the initializers that only folded nodes read."""
        freed = {
            id(tensor): self._freed(tensor)
            for node in self.folded_nodes()
            for tensor in node.inputs
        }
        return sum(freed.values())

    def _freed(self, tensor: gs.Tensor) -> int:
        """Bytes of ``tensor`` where it is an initializer that only folded nodes read."""
        if (
            isinstance(tensor, gs.Constant)
            and not isinstance(tensor._values, SparseValues)  # uncounted: errs safe
            and not self.scope.is_protected(tensor)
            and all(id(c) in self.folded for c in tensor.outputs)
        ):
            return _field_bytes(_tensor_bytes(tensor.name, tensor._values))
        return 0

    def fit(self, budget: int) -> None:
        """Keep frontier producers, worst balance first, until the growth fits ``budget``.

        A producer's balance is what its frontier outputs add minus the bytes of the node
        itself. As every folded node counts as removed, the frontier producers' balances add up
        to at least the growth, so keeping the worst until their balances cover the excess is
        enough in one round, unless keeping them moved the frontier onto costlier tensors or
        kept initializers in use: the next round goes on from there.
        """
        while (excess := self.growth(frontier := self.frontier()) - budget) > 0:
            for balance, node in self._producers_by_balance(frontier):
                self.folded.discard(id(node))
                self.kept_for_size.append(node)
                excess -= balance
                if excess <= 0:
                    break

    def _producers_by_balance(self, frontier: list[gs.Tensor]) -> list[tuple[int, gs.Node]]:
        """The frontier producers with their balances, worst (largest) first."""
        in_frontier = {id(t) for t in frontier}
        producers = {id(n): n for n in (self.producer[id(t)] for t in frontier)}
        balances = [(self._balance(n, in_frontier), n) for n in producers.values()]
        return sorted(balances, key=lambda pair: pair[0], reverse=True)

    def _balance(self, node: gs.Node, in_frontier: set[int]) -> int:
        """What folding ``node`` adds: its frontier outputs, less the node itself and the
        initializers that only it reads (``Transpose(W)`` frees ``W``: about even)."""
        added = sum(self.added_bytes(t) for t in node.outputs if id(t) in in_frontier)
        own = {id(t): t for t in node.inputs if all(c is node for c in t.outputs)}
        return added - self.removed_bytes(node) - sum(self._freed(t) for t in own.values())

    # ------------------------------------------------------------------------- evaluation

    def evaluate(self, model: Model) -> bool:
        """Compute the values the frontier lacks; False when it lacks none."""
        needed = self._needed()
        if not needed:
            return False
        self._added_bytes.clear()  # estimates give way to the sizes of the values
        needed = [n for n in needed if not self._transposed_in_numpy(n)]
        if not needed:
            return True
        try:
            self.values.update(_run(needed, self.input_proto, model))
        except Exception:  # onnxruntime raises many types; retry node by node
            self._evaluate_one_by_one(needed, model)
        return True

    def _transposed_in_numpy(self, node: gs.Node) -> bool:
        """Compute ``Transpose(W)`` of a weight with numpy, one weight at a time.

        In the onnxruntime session every weight would be held four times at once (the
        evaluation model, its serialized bytes, the session's copy, the result): swin_t's
        TorchScript export transposes nearly all its weights. A transpose moves values
        without arithmetic, so numpy's is the same result.
        """
        if node.op != "Transpose" or not isinstance(node.inputs[0], gs.Constant):
            return False
        if element_type(node.inputs[0]) not in NUMPY_NATIVE_TYPES:
            return False
        perm = node.attrs.get("perm")
        array = read_constant(node.inputs[0])
        moved = np.transpose(array, None if perm is None else [int(a) for a in perm])
        self.values[id(node.outputs[0])] = np.ascontiguousarray(moved)
        return True

    def _needed(self) -> list[gs.Node]:
        """Candidates, not yet evaluated, whose outputs the frontier depends on.

        A candidate kept unfolded for size is evaluated too when a folded node reads it.
        """
        needed: set[int] = set()
        stack = self.frontier()
        while stack:
            tensor = stack.pop()
            node = self.producer.get(id(tensor))
            if (
                node is None
                or id(tensor) in self.values
                or id(node) in needed
                or id(node) in self.failed
            ):
                continue
            needed.add(id(node))
            stack.extend(t for t in node.inputs if id(t) in self.producer)
        return [n for n in self.candidates if id(n) in needed]

    def _evaluate_one_by_one(self, nodes: list[gs.Node], model: Model) -> None:
        for node in nodes:
            if any(id(t) in self.producer and id(t) not in self.values for t in node.inputs):
                self.failed.add(id(node))  # an input could not be computed
                continue
            try:
                self.values.update(_run([node], self.input_proto, model))
            except Exception as exc:
                self.failures[id(node)] = _first_line(exc)
                self.failed.add(id(node))
        # A node that failed stays, and so does every folded node downstream of it.
        for node in self.candidates:
            if any(self._from_failed(t) for t in node.inputs):
                self.failed.add(id(node))
        self.folded -= self.failed

    def _from_failed(self, tensor: gs.Tensor) -> bool:
        producer = self.producer.get(id(tensor))
        return producer is not None and id(producer) in self.failed

    def input_proto(self, tensor: gs.Tensor) -> onnx.TensorProto:
        """A tensor's value as an initializer of an evaluation model."""
        value = self.values.get(id(tensor))
        if value is None:
            value = tensor._values  # a constant of the graph
        if (
            isinstance(value, LazyValues)
            and not isinstance(value, SparseValues)
            and not external_data_helper.uses_external_data(value.tensor)
        ):
            proto = onnx.TensorProto()
            proto.CopyFrom(value.tensor)  # keeps types numpy lacks (bfloat16, float8, ...)
            proto.name = tensor.name
            return proto
        if isinstance(tensor, gs.Constant):
            array = read_constant(tensor)
        else:
            array = value.load() if isinstance(value, LazyValues) else np.asarray(value)
        return numpy_helper.from_array(array, tensor.name)

    # ------------------------------------------------------------------------------ apply

    def leave_notes(self, budget: int) -> None:
        """Tell, by reason, which candidates stay unfolded."""
        for node in self.candidates:
            if reason := self.failures.get(id(node)):
                self.scope.leave(f"onnxruntime cannot evaluate them ({reason})", node)
        if self.kept_for_size:
            self.scope.leave(
                f"folding them would grow the file by more than max_growth_bytes={budget} bytes",
                self.kept_for_size,
            )

    def apply(self) -> bool:
        """Turn the frontier into constants and remove the folded nodes."""
        if not self.folded:
            return False
        frontier = self.frontier()
        for node in self.folded_nodes():
            node.inputs.clear()
            node.outputs.clear()
        self.graph.nodes = [n for n in self.graph.nodes if id(n) not in self.folded]
        for tensor in frontier:
            tensor.to_constant(self.values[id(tensor)])
        return True


# ------------------------------------------------------------------------ what can fold


def _evaluable(node: gs.Node) -> bool:
    """Whether onnxruntime may compute this node once, for good, at optimization time."""
    return (
        node.domain in STANDARD_DOMAINS
        and node.op not in NONDETERMINISTIC_OPS
        and node.op not in _QUANTIZATION
        and node.op not in _NON_TENSOR_OUTPUTS
        and not any(is_graph_attribute(v) for v in node.attrs.values())
        and any(t.name for t in node.outputs)
    )


def _clamp_axis(axis: int, rank: int) -> int:
    return min(max(axis + rank if axis < 0 else axis, 0), rank)


# ---------------------------------------------------------------------------------- sizes


def _field_bytes(size: int) -> int:
    """Bytes of a length-delimited protobuf field of ``size`` bytes (field numbers below 16,
    as for nodes, initializers and value infos in a graph, or raw data in a tensor)."""
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


def _tensor_bytes(name: str, value: _Value) -> int:
    """Serialized size of the TensorProto that saving writes for ``value`` named ``name``."""
    if isinstance(value, LazyValues):
        proto = value.tensor
        if external_data_helper.uses_external_data(proto):  # counted as if inline
            return _raw_tensor_bytes(name, proto.data_type, list(proto.dims), int(value.nbytes))
        old_name = _field_bytes(len(proto.name.encode())) if proto.HasField("name") else 0
        return proto.ByteSize() - old_name + _field_bytes(len(name.encode()))
    array = np.asarray(value)
    if array.dtype.kind in "OSU":  # strings are stored one by one, not as raw bytes
        return numpy_helper.from_array(array, name).ByteSize()
    data_type, dims = _type_of(array)
    return _raw_tensor_bytes(name, data_type, dims, array.nbytes)


def _raw_tensor_bytes(name: str, data_type: int, dims: list[int], nbytes: int) -> int:
    """Size of a TensorProto with ``nbytes`` of raw data, without building the data."""
    header = onnx.TensorProto(name=name, data_type=data_type, dims=dims)
    return header.ByteSize() + _field_bytes(nbytes)


def _type_of(value: _Value) -> tuple[int, list[int]]:
    """ONNX element type and dims of a value."""
    if isinstance(value, LazyValues):
        return value.tensor.data_type, list(value.tensor.dims)
    array = np.asarray(value)
    return helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)


def _static_type(tensor: gs.Tensor) -> tuple[int, list[int], int] | None:
    """ONNX element type, dims and data bytes of a tensor not yet computed, if all known."""
    shape = static_shape(tensor)
    if shape is None or tensor.dtype is None:
        return None
    try:
        data_type, itemsize = dtype_to_onnx(tensor.dtype), np.dtype(tensor.dtype).itemsize
    except (TypeError, KeyError, ValueError, RuntimeError):  # a type numpy lacks
        return None
    if data_type == onnx.TensorProto.STRING:
        return None
    return data_type, list(shape), math.prod(shape) * itemsize


def _value_info_bytes(tensor: gs.Tensor) -> int:
    """Bytes of the typed entry gs writes for a tensor in a graph's inputs, outputs or
    value_info."""
    return _field_bytes(OnnxExporter.export_value_info_proto(tensor, False).ByteSize())


# --------------------------------------------------------------------------- evaluation


def _run(
    nodes: list[gs.Node], input_proto: Callable[[gs.Tensor], onnx.TensorProto], model: Model
) -> dict[int, np.ndarray]:
    """Evaluate ``nodes`` (in order) in one onnxruntime session; values by tensor id."""
    produced = {id(t) for n in nodes for t in n.outputs}
    initializers: dict[str, onnx.TensorProto] = {}
    for node in nodes:
        for tensor in node.inputs:
            if tensor.name and id(tensor) not in produced and tensor.name not in initializers:
                initializers[tensor.name] = input_proto(tensor)
    outputs = [t for n in nodes for t in n.outputs if t.name]
    graph = helper.make_graph(
        [OnnxExporter.export_node(n) for n in nodes],
        "fold_constants",
        [],
        [onnx.ValueInfoProto(name=t.name) for t in outputs],
        list(initializers.values()),
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", model.opset)], ir_version=model.ir_version
    )
    with open_session(proto, optimize=False) as session:
        results = session.run(None, {})
    for info, value in zip(session.get_outputs(), results, strict=True):
        if info.type not in _NUMPY_RESULT_TYPES or not isinstance(value, np.ndarray):
            raise TypeError(f"output '{info.name}' has type {info.type}, not kept as a constant")
    return {id(t): value for t, value in zip(outputs, results, strict=True)}


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__
