"""fold-constants: nodes whose inputs are all known become the constants they compute.

Per graph (the main graph first, then If/Loop/Scan bodies, which see the outer graph's new
constants), the pass

1. marks the foldable nodes: standard ops whose inputs are constants or outputs of foldable
   nodes, plus Shape and Size of tensors whose shape is fully static and Constant nodes, which
   are folded without evaluating anything;
2. decides which folded tensors to materialise: the *frontier*, folded tensors that an unfolded
   node or a graph output reads. A frontier tensor that would make the file grow (larger than
   1 KiB and than the inputs of its producer, by more than ``max_growth_bytes``) is not
   materialised: its producer stays and its inputs become the frontier;
3. evaluates only the nodes the frontier needs, all in one onnxruntime session (node by node
   when that fails, skipping the nodes that onnxruntime cannot run);
4. replaces the frontier tensors by constants and removes the folded nodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import external_data_helper, helper, numpy_helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxslim.errors import PipelineSpecError
from onnxslim.model import Model, constant_nbytes, iter_graphs, read_constant
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass
from onnxslim.runtime import require_onnxruntime

__all__ = ["FoldConstants"]

# Folded tensors up to this size are always materialised: they are mostly shape arithmetic
# that later passes build on, and their bytes are noise next to the nodes they replace.
SMALL_TENSOR_BYTES = 1024

_STANDARD_DOMAINS = ("", "ai.onnx")
# Folding these would freeze one random draw (Dropout too, in training mode).
_NONDETERMINISTIC = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
)
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
    sequences and QuantizeLinear/DequantizeLinear are left alone. By default folding never
    makes the file grow (tensors of at most 1 KiB aside); ``max_growth_bytes`` allows that
    much growth, e.g. to materialise an Expand of a scalar.
    """

    max_growth_bytes: int = 0

    def __post_init__(self) -> None:
        if self.max_growth_bytes < 0:
            raise PipelineSpecError(
                f"fold-constants(max_growth_bytes={self.max_growth_bytes}): must be 0 or more"
            )

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        graphs = list(iter_graphs(graph))
        graph_outputs = {id(t) for g in graphs for t in g.outputs}
        changed = False
        for g in graphs:
            plan = _Plan.of(g, graph_outputs)
            if not plan.folded:
                continue
            plan.keep_growing_unfolded(self.max_growth_bytes)
            plan.evaluate(ctx.model)
            plan.keep_growing_unfolded(self.max_growth_bytes)
            plan.enforce_budget(self.max_growth_bytes)
            for note in plan.notes(self.max_growth_bytes):
                ctx.log(note)
            changed |= plan.apply()
        return changed


@dataclass
class _Plan:
    """The foldable nodes of one graph and the values known for their outputs.

    Tensors and nodes are keyed by ``id``: gs defines ``__eq__`` on both, not identity.
    """

    graph: gs.Graph
    graph_outputs: set[int]  # outputs of any graph, main or nested
    candidates: list[gs.Node]  # every foldable node, in graph order
    folded: set[int]  # the candidates still planned to be folded
    static: set[int]  # candidates whose values are known without evaluation
    producer: dict[int, gs.Node]  # output tensor -> candidate node
    values: dict[int, _Value] = field(default_factory=dict)
    kept_for_size: list[gs.Node] = field(default_factory=list)
    failed: set[int] = field(default_factory=set)  # candidates that could not be evaluated
    failures: dict[int, str] = field(default_factory=dict)  # why, for those that ran

    @classmethod
    def of(cls, graph: gs.Graph, graph_outputs: set[int]) -> _Plan:
        plan = cls(graph, graph_outputs, candidates=[], folded=set(), static=set(), producer={})
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
                plan.static.add(id(node))
                plan.values.update((id(t), v) for t, v in zip(node.outputs, static, strict=True))
        return plan

    def is_known(self, tensor: gs.Tensor) -> bool:
        if not tensor.name or isinstance(tensor, gs.Constant):  # "": an omitted optional input
            return True
        return id(tensor) in self.producer

    def static_values(self, node: gs.Node) -> list[_Value] | None:
        """Outputs known without evaluation: Shape/Size of static tensors, Constant nodes."""
        if (node.domain or "") not in _STANDARD_DOMAINS or len(node.outputs) != 1:
            return None
        if node.op == "Constant":
            return _constant_attribute(node.attrs)
        if node.op not in ("Shape", "Size") or not node.inputs:
            return None
        source = node.inputs[0]
        shape = _static_shape(source)
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
        """Folded tensors that something outside the folded nodes reads."""
        outputs = {id(t) for t in self.graph.outputs}
        return [
            t
            for node in self.folded_nodes()
            for t in node.outputs
            if t.name and (id(t) in outputs or any(id(c) not in self.folded for c in t.outputs))
        ]

    # ------------------------------------------------------------------------------ sizes

    def nbytes(self, tensor: gs.Tensor) -> int | None:
        """The tensor's size: known, or estimated from a static shape, else None."""
        if id(tensor) in self.values:
            return _nbytes_of(self.values[id(tensor)])
        if isinstance(tensor, gs.Constant):
            return constant_nbytes(tensor)
        shape = _static_shape(tensor)
        if shape is None or tensor.dtype is None:
            return None
        try:
            return math.prod(shape) * np.dtype(tensor.dtype).itemsize
        except TypeError:  # an ONNX type without a numpy twin
            return None

    def source_bytes(self, node: gs.Node) -> int | None:
        """Bytes of what a node reads: what stays in the file if the node is kept."""
        if node.op == "Constant" and id(node) in self.static:
            return sum(_nbytes_of(self.values[id(t)]) for t in node.outputs)
        sizes = [self.nbytes(t) for t in node.inputs if t.name]
        return None if None in sizes else sum(sizes)

    def growth(self) -> int:
        """Bytes of large new constants minus bytes of constants that become unused."""
        new = sum(
            size for t in self.frontier() if (size := self.nbytes(t) or 0) > SMALL_TENSOR_BYTES
        )
        freed: dict[int, int] = {}
        for node in self.folded_nodes():
            if node.op == "Constant" and id(node) in self.static:
                freed[id(node)] = self.source_bytes(node)
            for tensor in node.inputs:
                if isinstance(tensor, gs.Constant) and self._unused_after(tensor):
                    freed[id(tensor)] = constant_nbytes(tensor)
        return new - sum(freed.values())

    def _unused_after(self, constant: gs.Constant) -> bool:
        return id(constant) not in self.graph_outputs and all(
            id(c) in self.folded for c in constant.outputs
        )

    def keep_growing_unfolded(self, budget: int) -> None:
        """Keep the producers of frontier tensors that would grow the file, to a fixpoint."""
        changed = True
        while changed:
            changed = False
            for tensor in self.frontier():
                node = self.producer[id(tensor)]
                if id(node) not in self.folded:
                    continue
                size, source = self.nbytes(tensor), self.source_bytes(node)
                if size is None or source is None or size <= SMALL_TENSOR_BYTES:
                    continue
                if size - source > budget:
                    self.unfold(node)
                    changed = True

    def enforce_budget(self, budget: int) -> None:
        """Unfold the biggest offenders until the total growth fits ``budget``."""
        while (growth := self.growth()) > budget:
            offenders = sorted(
                (
                    t
                    for t in self.frontier()
                    if (self.nbytes(t) or 0) > SMALL_TENSOR_BYTES
                    and id(self.producer[id(t)]) not in self.static  # moving those saves nothing
                ),
                key=lambda t: self.nbytes(t) or 0,
                reverse=True,
            )
            if not offenders:
                return
            # Prefer an unfold that really reduces the growth; else the biggest one, which
            # moves the frontier upstream (and terminates: every round unfolds a node).
            trial = None
            for tensor in offenders:
                candidate = self.copy()
                candidate.unfold(candidate.producer[id(tensor)])
                candidate.keep_growing_unfolded(budget)
                if candidate.growth() < growth:
                    trial = candidate
                    break
            if trial is None:
                self.unfold(self.producer[id(offenders[0])])
                self.keep_growing_unfolded(budget)
            else:
                self.folded, self.kept_for_size = trial.folded, trial.kept_for_size

    def unfold(self, node: gs.Node) -> None:
        self.folded.discard(id(node))
        self.kept_for_size.append(node)

    def copy(self) -> _Plan:
        """A plan to try unfolding on: only the folding decisions are its own."""
        return replace(self, folded=set(self.folded), kept_for_size=list(self.kept_for_size))

    # ------------------------------------------------------------------------- evaluation

    def evaluate(self, model: Model) -> None:
        """Compute the values the frontier needs; drop the nodes onnxruntime cannot run."""
        while needed := self._needed():
            try:
                self.values.update(_run(needed, self.input_proto, model))
            except Exception:  # onnxruntime raises many types; retry node by node
                self._evaluate_one_by_one(needed, model)

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

    def notes(self, budget: int) -> list[str]:
        """One line per reason for leaving nodes unfolded, naming the first few nodes."""
        by_reason: dict[str, list[gs.Node]] = {}
        for node in self.candidates:
            if reason := self.failures.get(id(node)):
                by_reason.setdefault(f"onnxruntime cannot evaluate them ({reason})", []).append(
                    node
                )
        kept = [n for n in self.kept_for_size if id(n) not in self.folded]
        if kept:
            by_reason[f"they would grow the model by more than max_growth_bytes={budget}"] = kept
        return [
            f"fold-constants: left {len(nodes)} node(s) unfolded because {reason}: "
            f"{_list_nodes(nodes)}"
            for reason, nodes in by_reason.items()
        ]

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
        (node.domain or "") in _STANDARD_DOMAINS
        and node.op not in _NONDETERMINISTIC
        and node.op not in _QUANTIZATION
        and node.op not in _NON_TENSOR_OUTPUTS
        and not any(_is_subgraph(v) for v in node.attrs.values())
        and any(t.name for t in node.outputs)
    )


def _is_subgraph(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(isinstance(v, gs.Graph) for v in value)
    return isinstance(value, gs.Graph)


def _clamp_axis(axis: int, rank: int) -> int:
    return min(max(axis + rank if axis < 0 else axis, 0), rank)


def _constant_attribute(attrs: dict[str, Any]) -> list[_Value] | None:
    """The value of a Constant node, for the numeric attribute forms (others go to ORT)."""
    if isinstance(attrs.get("value"), gs.Constant):
        return [attrs["value"]._values]
    forms = {
        "value_float": np.float32,
        "value_floats": np.float32,
        "value_int": np.int64,
        "value_ints": np.int64,
    }
    for name, dtype in forms.items():
        if name in attrs:
            return [np.array(attrs[name], dtype=dtype)]
    return None


def _static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    shape = tensor.shape
    if shape is None or (isinstance(tensor, gs.Variable) and tensor.type != "tensor_type"):
        return None
    dims = tuple(shape)
    if all(isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 0 for d in dims):
        return tuple(int(d) for d in dims)
    return None


def _nbytes_of(value: _Value) -> int:
    return int(value.nbytes)


# --------------------------------------------------------------------------- evaluation


def _run(
    nodes: list[gs.Node], input_proto: Callable[[gs.Tensor], onnx.TensorProto], model: Model
) -> dict[int, np.ndarray]:
    """Evaluate ``nodes`` (in order) in one onnxruntime session; values by tensor id."""
    ort = require_onnxruntime()
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
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    results = session.run(None, {})
    for info, value in zip(session.get_outputs(), results, strict=True):
        if info.type not in _NUMPY_RESULT_TYPES or not isinstance(value, np.ndarray):
            raise TypeError(f"output '{info.name}' has type {info.type}, not kept as a constant")
    return {id(t): value for t, value in zip(outputs, results, strict=True)}


def _list_nodes(nodes: list[gs.Node], shown: int = 5) -> str:
    names = [f"{n.op} '{n.name or next((t.name for t in n.outputs if t.name), '')}'" for n in nodes]
    more = f" and {len(nodes) - shown} more" if len(nodes) > shown else ""
    return ", ".join(names[:shown]) + more


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__
