"""float16: run a model's float32 compute and store its float32 weights in half precision.

Each node is either converted (its float tensors become float16, or bfloat16) or kept in
float32. Only ops known to compute the same thing in every float type are converted; ops in
the block list (Resize, Range, TopK, ...) and ops whose values would overflow float16 stay in
float32. The overflow guard runs the float32 model on calibration data (``calib=``) or on
synthesized inputs and keeps in float32 every node that reads or writes a value above
``overflow_limit``.

Casts are inserted only on edges between a converted and a float32 node, and a tensor that
several nodes read in the other type is cast once for all of them; weights are converted
ahead of time (a weight that both kinds of node read is stored in both types). Graph inputs
and outputs stay float32 unless ``keep_io_types=false``. A node that only moves values or
does cheap elementwise math (Reshape, Transpose, Add, Relu, ...) and reads no weight stays
float32 where converting it would cost more casts than it saves. ``block`` replaces the
default block list (``onnxslim float16 --block OP`` adds to it); a name that is not an ONNX
operator is an error.

A model onnxruntime cannot load is never the result: each op is tried in onnxruntime (a
one-node model, in the low type, on ``provider``) and stays float32 where there is no kernel,
which on the CPU provider is most bfloat16 math; the converted model is loaded once more
before it is kept.
"""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxslim.checking import onnxruntime_verdict
from onnxslim.errors import PipelineSpecError
from onnxslim.inputs import input_specs, load_inputs, synthesize_inputs
from onnxslim.model import DerivedValues, Model, iter_graphs, read_constant, stub_proto
from onnxslim.pipeline import Pass, PassContext, keep_if_valid
from onnxslim.registry import DEFAULT_PIPELINE, register_pass
from onnxslim.rewrite import STANDARD_DOMAINS, describe_nodes, element_type, fresh_name
from onnxslim.runtime import check_provider, open_session

__all__ = ["Float16", "DEFAULT_BLOCK_LIST", "CONVERTIBLE_OPS", "FLOAT16_MAX"]

FLOAT16_MAX = 65504.0
FLOAT = TensorProto.FLOAT

# Ops whose float inputs and outputs all share one type, so that converting the node means
# converting all of them (Cast is handled apart: its input may be of any type).
CONVERTIBLE_OPS = frozenset(
    [
        "Abs",
        "Add",
        "ArgMax",
        "ArgMin",
        "AveragePool",
        "BatchNormalization",
        "Ceil",
        "Clip",
        "Concat",
        "Constant",
        "Conv",
        "ConvTranspose",
        "Cos",
        "DepthToSpace",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "InstanceNormalization",
        "IsInf",
        "IsNaN",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "Min",
        "Mish",
        "Mul",
        "Neg",
        "Pad",
        "Pow",
        "PRelu",
        "Reciprocal",
        "ReduceL2",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Round",
        "Selu",
        "Sigmoid",
        "Sign",
        "Sin",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tanh",
        "Tile",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Where",
    ]
)
# Kept in float32 by default: index and coordinate arithmetic that float16 rounds wrongly,
# and reductions that overflow float16 as a matter of course.
DEFAULT_BLOCK_LIST = (
    "Resize",
    "Upsample",
    "Range",
    "CumSum",
    "TopK",
    "NonMaxSuppression",
    "RoiAlign",
    "ReduceProd",
    "ReduceSumSquare",
    "ReduceLogSumExp",
)
# Ops that read a tensor of any type: reading a float16 tensor needs no cast in front.
_ANY_TYPE_INPUT = frozenset({"Cast", "Shape", "Size"})
# Ops that move values or do cheap elementwise math: converting them gains little, so those
# that read no weights stay float32 where that saves casts (between float32 neighbours, say).
_CHEAP_OPS = frozenset(
    [
        "Abs",
        "Add",
        "Clip",
        "Concat",
        "DepthToSpace",
        "Div",
        "Expand",
        "Flatten",
        "Gather",
        "Identity",
        "LeakyRelu",
        "Max",
        "Min",
        "Mul",
        "Neg",
        "Relu",
        "Reshape",
        "Slice",
        "SpaceToDepth",
        "Split",
        "Squeeze",
        "Sub",
        "Tile",
        "Transpose",
        "Unsqueeze",
    ]
)


@register_pass("float16")
@dataclass
class Float16(Pass):
    """Convert float32 weights and compute to float16 (or ``dtype=bfloat16``), keeping graph
    inputs and outputs float32, the ops of ``block``, ops that would overflow float16 on
    the calibration data (``calib=``, else synthesized inputs) and ops that onnxruntime has no
    kernel for in that type on ``provider`` in float32.
    """

    lossless = False
    prepare = DEFAULT_PIPELINE

    dtype: Literal["float16", "bfloat16"] = "float16"
    """The half-precision type."""
    keep_io_types: bool = True
    """Keep graph inputs and outputs float32."""
    block: list[str] = field(default_factory=lambda: list(DEFAULT_BLOCK_LIST))
    """Op types kept float32."""
    guard: bool = True
    """Keep float32 the nodes that would overflow float16 on sample data."""
    overflow_limit: float = FLOAT16_MAX / 2
    """The overflow guard's limit on absolute values."""
    calib: Path | None = None
    """Sample inputs (.npz) for the overflow guard; else synthesized."""
    samples: int = 2
    """Samples the overflow guard runs."""
    provider: str = "cpu"
    """The execution provider whose kernels decide which ops may run in half precision."""

    def __post_init__(self) -> None:
        unknown = [op for op in self.block if not onnx.defs.has(op)]
        if unknown:
            raise PipelineSpecError(
                f"float16: block names {', '.join(repr(op) for op in unknown)}, not ONNX "
                "operators (op types such as Resize or TopK)"
            )

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        if self.samples < 1 or self.overflow_limit <= 0:
            raise PipelineSpecError("float16: samples and overflow_limit must be positive")
        check_provider(self.provider)  # an unavailable provider is the user's error, not a note
        return keep_if_valid(ctx, lambda: self._convert(graph, ctx), self.dtype)

    def _convert(self, graph: gs.Graph, ctx: PassContext) -> bool:
        low_type = TensorProto.FLOAT16 if self.dtype == "float16" else TensorProto.BFLOAT16
        types = _value_types(ctx.model)
        plan = _Plan(graph, types, low_type)
        plan.keep_float(_nodes_with_subgraph_reads(graph))
        plan.keep_float(n for n in graph.nodes if n.op in set(self.block))
        missing = _without_kernels(plan, ctx.model, self.provider)
        if missing:
            ops = ", ".join(sorted({n.op for n in missing}))
            ctx.log(
                f"kept in float32, since onnxruntime's {self.provider} provider has no "
                f"{self.dtype} kernel for them: {ops}"
            )
        if self.dtype == "float16":
            # Weights beyond float16's range would become infinities: never convert those.
            # Each weight is read once for both checks (GPT-2-large: 3.2 GB read once, not twice).
            weights: dict[int, float] = {}
            hot = _overflowing(plan, {}, FLOAT16_MAX, weights)
            peaks = self._peaks(ctx, plan) if self.guard else {}
            if peaks is None:
                ctx.log("overflow guard skipped (model over 2 GiB): only weights were checked")
            else:
                hot += _overflowing(plan, peaks, self.overflow_limit, weights)
            if hot:
                ctx.log(f"kept in float32 to avoid float16 overflow: {describe_nodes(hot)}")
        plan.choose()
        if not plan.low:
            ctx.log("no node could be converted")
            return False
        kept = sum(1 for n in graph.nodes if plan.is_float_node(n) and id(n) not in plan.low)
        casts = plan.rewrite(self.keep_io_types)
        verdict = onnxruntime_verdict(ctx.model, provider=self.provider)
        if verdict is not None and not verdict.loads:
            raise RuntimeError(f"onnxruntime cannot load the converted model: {verdict.problem}")
        ctx.log(
            f"{len(plan.low)} nodes in {self.dtype}, {kept} kept in float32, "
            f"{casts} Cast nodes inserted"
        )
        return True

    def _peaks(self, ctx: PassContext, plan: _Plan) -> dict[str, float] | None:
        """Peak magnitudes on the calibration data. Synthesized inputs that the model cannot
        run on (strings, sizes it rejects) make the guard impossible, not the user wrong."""
        try:
            return _peak_magnitudes(ctx.model, plan, self.calib, self.samples)
        except Exception as exc:
            if self.calib is not None:
                raise
            raise _GuardFailed(
                f"the overflow guard cannot run the model on synthesized inputs ({exc}); "
                "give calib= data, or guard=false"
            ) from exc


class _GuardFailed(RuntimeError):
    """The overflow guard could not run the model on synthesized inputs."""


@functools.cache
def _schema_accepts(
    op: str, opset: int, elem_type: int, inputs: tuple[int, ...], outputs: tuple[int, ...]
) -> bool:
    """Whether the op's schema allows ``elem_type`` at the given input and output positions
    (Conv has no bfloat16 form, LayerNormalization's statistics no float16 one)."""
    try:
        schema = onnx.defs.get_schema(op, opset)
    except onnx.defs.SchemaError:
        return False
    wanted = f"tensor({onnx.helper.tensor_dtype_to_string(elem_type).split('.')[-1].lower()})"
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    params = [schema.inputs[min(i, len(schema.inputs) - 1)] for i in inputs]
    params += [schema.outputs[min(i, len(schema.outputs) - 1)] for i in outputs]
    return all(wanted in allowed.get(p.type_str, {p.type_str}) for p in params)


def _value_types(model: Model) -> dict[str, int]:
    """Element types of every tensor that onnx's shape inference can type."""
    proto = stub_proto(model)
    # A model that shape inference chokes on is still typed where the file says so.
    with contextlib.suppress(Exception):
        proto = onnx.shape_inference.infer_shapes(proto)
    graph = proto.graph
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*graph.input, *graph.output, *graph.value_info)
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type
    }
    types.update({t.name: t.data_type for t in graph.initializer})
    for constant in (t for t in model.graph.tensors().values() if isinstance(t, gs.Constant)):
        types.setdefault(constant.name, element_type(constant))
    return types


def _nodes_with_subgraph_reads(graph: gs.Graph) -> list[gs.Node]:
    """Nodes with subgraphs, and producers of the tensors subgraphs read from outside:
    both keep their float32 types, which the subgraphs were written for."""
    outer_reads = {
        t.name
        for node in graph.nodes
        for sub in _subgraphs(node)
        for g in iter_graphs(sub)
        for n in g.nodes
        for t in n.inputs
    }
    return [
        node
        for node in graph.nodes
        if any(True for _ in _subgraphs(node)) or any(t.name in outer_reads for t in node.outputs)
    ]


def _subgraphs(node: gs.Node) -> Iterable[gs.Graph]:
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, gs.Graph))


class _Plan:
    """Which nodes of the main graph compute in the low type, and the rewrite that follows."""

    def __init__(self, graph: gs.Graph, types: dict[str, int], low_type: int) -> None:
        self.graph = graph
        self.types = types
        self.low_type = low_type
        # Nodes by id: gs nodes compare by value and do not hash.
        self.forced: set[int] = set()
        self.low: set[int] = set()
        self.positions: dict[int, tuple[list[int], list[int]]] = {}

    def is_float(self, tensor: gs.Tensor) -> bool:
        return bool(tensor.name) and self.types.get(tensor.name) == FLOAT

    def typed_tensors(self, node: gs.Node) -> tuple[list[int], list[int]]:
        """Positions of the float inputs and outputs that follow the node's compute type."""
        if node.op == "Cast":
            to_float = node.attrs.get("to") == FLOAT
            return [], [0] if to_float else []
        inputs = [i for i, t in enumerate(node.inputs) if self.is_float(t)]
        outputs = [i for i, t in enumerate(node.outputs) if self.is_float(t)]
        return inputs, outputs

    def is_float_node(self, node: gs.Node) -> bool:
        inputs, outputs = self.typed_tensors(node)
        return bool(inputs or outputs)

    def convertible(self, node: gs.Node) -> bool:
        if id(node) in self.forced or node.domain not in STANDARD_DOMAINS:
            return False
        if node.op == "Cast":
            return node.attrs.get("to") == FLOAT
        if node.op not in CONVERTIBLE_OPS or not self.is_float_node(node):
            return False
        if node.op == "Constant" and not isinstance(node.attrs.get("value"), gs.Constant):
            return False  # value_float and the like: left as they are
        inputs, outputs = self.typed_tensors(node)
        opset = int(self.graph.opset)
        if not _schema_accepts(node.op, opset, self.low_type, tuple(inputs), tuple(outputs)):
            return False
        if node.op in ("LayerNormalization", "MaxPool", "Dropout") and len(node.outputs) > 1:
            return False  # their extra outputs have types of their own
        # A float-looking input or output of unknown type could be anything: leave the node.
        tensors = [*node.inputs, *node.outputs]
        return all(not t.name or t.name in self.types for t in tensors)

    def keep_float(self, nodes: Iterable[gs.Node]) -> None:
        self.forced.update(id(n) for n in nodes)

    def choose(self) -> None:
        # Typed positions are fixed now: the rewrite changes the types they are read from.
        self.positions = {id(n): self.typed_tensors(n) for n in self.graph.nodes}
        self.low = {id(n) for n in self.graph.nodes if self.convertible(n)}
        # Cheap ops between float32 neighbours only cost casts; give them back.
        changed = True
        while changed:
            changed = False
            for node in [n for n in self.graph.nodes if id(n) in self.low]:
                if node.op not in _CHEAP_OPS or self._reads_weights(node):
                    continue
                if self._casts_for(node, low=False) < self._casts_for(node, low=True):
                    self.low.discard(id(node))
                    changed = True

    def _reads_weights(self, node: gs.Node) -> bool:
        """Whether the node reads float constants, which converting it stores at half size."""
        return any(isinstance(node.inputs[i], gs.Constant) for i in self.positions[id(node)][0])

    def _casts_for(self, node: gs.Node, low: bool) -> int:
        """Casts on the node's own edges if it were (or were not) converted."""
        inputs, outputs = self.positions[id(node)]
        count = 0
        for i in inputs:
            tensor = node.inputs[i]
            if not isinstance(tensor, gs.Constant) and self._made_low(tensor) != low:
                count += 1
        for i in outputs:
            tensor = node.outputs[i]
            readers = [self._reads_low(reader, tensor) for reader in tensor.outputs]
            count += int(any(r is not None and r != low for r in readers))
            count += int(low and tensor in self.graph.outputs)
        return count

    def _made_low(self, tensor: gs.Tensor) -> bool:
        producer = tensor.inputs[0] if tensor.inputs else None
        return producer is not None and id(producer) in self.low

    def _reads_low(self, node: gs.Node, tensor: gs.Tensor) -> bool | None:
        """Whether ``node`` needs ``tensor`` in the low type (None: it takes either)."""
        if node.op in _ANY_TYPE_INPUT:
            return None
        return id(node) in self.low

    # ------------------------------------------------------------------------- rewrite

    def rewrite(self, keep_io_types: bool) -> int:
        """Retype tensors, convert weights and insert casts; the number of casts inserted."""
        graph = self.graph
        names = {name for g in iter_graphs(graph) for name in g.tensors()}
        if not keep_io_types:
            for tensor in graph.inputs:
                if self.is_float(tensor):
                    self._retype(tensor, self.low_type)
        casts: list[gs.Node] = []
        for node in [n for n in graph.nodes if id(n) in self.low]:
            if node.op == "Cast":
                node.attrs["to"] = self.low_type
            elif node.op == "Constant":
                node.attrs["value"] = _converted_constant(
                    node.attrs["value"], self.low_type, names, attribute=True
                )
            for i in self.positions[id(node)][1]:
                tensor = node.outputs[i]
                if tensor in graph.outputs and keep_io_types:
                    # The graph output keeps its name and type, written by a cast at the end.
                    low = self._variable(tensor, self.low_type, names)
                    for reader in list(tensor.outputs):
                        _replace_input(reader, tensor, low)
                    node.outputs[i] = low
                    casts.append(_cast_node(low, tensor, FLOAT, names))
                else:
                    self._retype(tensor, self.low_type)
        casts += self._fix_edges(names)
        graph.nodes.extend(casts)
        return len(casts)

    def _retype(self, tensor: gs.Tensor, elem_type: int) -> None:
        tensor.dtype = _gs_dtype(elem_type)
        self.types[tensor.name] = elem_type

    def _variable(self, like: gs.Tensor, elem_type: int, names: set[str]) -> gs.Variable:
        name = fresh_name(f"{like.name}_{_suffix(elem_type)}", names)
        self.types[name] = elem_type
        return gs.Variable(name, _gs_dtype(elem_type), like.shape)

    def _wanted(self, node: gs.Node, index: int, have: int | None) -> int | None:
        """The type ``node`` must read input ``index`` in, where that differs from ``have``."""
        if node.op in _ANY_TYPE_INPUT or have not in (FLOAT, self.low_type):
            return None
        if id(node) in self.low:
            wanted = self.low_type if index in self.positions[id(node)][0] else have
        else:
            wanted = FLOAT  # every tensor now in the low type was float32 before
        return wanted if wanted != have else None

    def _fix_edges(self, names: set[str]) -> list[gs.Node]:
        """Make every node read its inputs in its own type: weights converted ahead of time,
        variables through one shared cast per tensor and type."""
        converted: dict[tuple[int, int], gs.Tensor] = {}
        casts: list[gs.Node] = []
        for node in list(self.graph.nodes):
            for index, tensor in enumerate(node.inputs):
                wanted = self._wanted(node, index, self.types.get(tensor.name))
                if wanted is None or not tensor.name:
                    continue
                key = (id(tensor), wanted)
                if key not in converted:
                    if isinstance(tensor, gs.Constant):
                        converted[key] = _converted_constant(tensor, wanted, names)
                        self.types[converted[key].name] = wanted
                    else:
                        converted[key] = self._variable(tensor, wanted, names)
                        casts.append(_cast_node(tensor, converted[key], wanted, names))
                node.inputs[index] = converted[key]
        return casts


def _replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    for index, tensor in enumerate(node.inputs):
        if tensor is old:
            node.inputs[index] = new


def _suffix(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def _gs_dtype(elem_type: int):
    if elem_type == TensorProto.FLOAT16:
        return np.float16
    if elem_type == FLOAT:
        return np.float32
    return elem_type  # gs writes a type number as it is (bfloat16 has no numpy type)


def _cast_node(source: gs.Tensor, target: gs.Tensor, to: int, names: set[str]) -> gs.Node:
    name = fresh_name(f"{target.name}_cast", names)
    return gs.Node("Cast", name, attrs={"to": to}, inputs=[source], outputs=[target])


def _converted_constant(
    tensor: gs.Constant, to: int, names: set[str], *, attribute: bool = False
) -> gs.Constant:
    """``tensor`` in type ``to``. Weights still in a file (or in the loaded proto) are
    converted when read or written, one at a time, so that a converted copy of every weight
    is never held beside the model: float16 on a 3 GB model would otherwise hold 1.6 GB.
    A Constant node's ``attribute`` is converted now: graph exporters write attribute
    tensors as they are, and only the model writers compute DerivedValues."""
    name = fresh_name(f"{tensor.name}_{_suffix(to)}", names)
    values = tensor._values
    lazy = isinstance(values, LazyValues) and not isinstance(values, SparseValues)
    if lazy and not attribute:
        header = onnx.TensorProto(name=name, data_type=to, dims=list(values.shape))
        source = gs.Constant(tensor.name, values)  # not ``tensor``, whose values may change
        return gs.Constant(
            name, DerivedValues(header, lambda: _converted_bits(read_constant(source), to), values)
        )
    converted = _converted_bits(read_constant(tensor), to)
    if to == TensorProto.BFLOAT16:  # numpy has no bfloat16: its bits go into a proto
        proto = onnx.TensorProto(name=name, data_type=to, dims=list(converted.shape))
        proto.raw_data = converted.tobytes()
        return gs.Constant(name, LazyValues(proto))
    return gs.Constant(name, converted)


def _converted_bits(values: np.ndarray, to: int) -> np.ndarray:
    """``values`` in type ``to``, as an array holding its raw bytes (bfloat16 as uint16)."""
    if to == TensorProto.FLOAT16:
        return values.astype(np.float16)
    if to == FLOAT:
        return values.astype(np.float32)
    return _bfloat16_bits(values)


def _bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 to bfloat16 bit patterns, rounding to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


# ------------------------------------------------------------------------- kernels


def _without_kernels(plan: _Plan, model: Model, provider: str) -> list[gs.Node]:
    """Convertible nodes for which onnxruntime has no kernel in the low type on ``provider``
    (its CPU provider has almost no bfloat16 compute), now kept in float32.

    onnxruntime has no call that lists its kernels, so each node's op is tried: a session for
    a one-node model of it, with its attributes and the types it would have once converted.
    """
    opsets = tuple((entry.domain, entry.version) for entry in model.graph.import_domains or []) or (
        ("", plan.graph.opset),
    )
    missing = []
    for node in plan.graph.nodes:
        if node.op == "Constant" or not plan.convertible(node):
            continue
        probe = _probe(node, plan, opsets, model.ir_version)
        if probe is not None and not _has_kernel(probe, provider):
            missing.append(node)
    plan.keep_float(missing)
    return missing


def _probe(
    node: gs.Node, plan: _Plan, opsets: tuple[tuple[str, int], ...], ir_version: int
) -> bytes | None:
    """A serialized model of ``node`` alone, its tensors typed as after conversion; None
    where a tensor's type is unknown."""
    inputs, outputs = plan.typed_tensors(node)
    proto = OnnxExporter.export_node(node)
    del proto.input[:], proto.output[:]
    if node.op == "Cast":
        next(a for a in proto.attribute if a.name == "to").i = plan.low_type
    values = ([], [])
    for side, (tensors, low_positions, names) in enumerate(
        ((node.inputs, inputs, proto.input), (node.outputs, outputs, proto.output))
    ):
        for index, tensor in enumerate(tensors):
            if not tensor.name:
                names.append("")
                continue
            name = f"{'io'[side]}{index}"
            elem_type = plan.low_type if index in low_positions else plan.types.get(tensor.name)
            if elem_type is None:
                return None
            names.append(name)
            values[side].append(onnx.helper.make_tensor_value_info(name, elem_type, None))
    graph = onnx.helper.make_graph([proto], "probe", values[0], values[1])
    opset_ids = [onnx.helper.make_opsetid(domain or "", version) for domain, version in opsets]
    probe = onnx.helper.make_model(graph, opset_imports=opset_ids, ir_version=ir_version)
    return probe.SerializeToString()


@functools.lru_cache(maxsize=4096)
def _has_kernel(probe: bytes, provider: str) -> bool:
    verdict = onnxruntime_verdict(onnx.ModelProto.FromString(probe), provider=provider)
    return verdict is None or verdict.loads


# ------------------------------------------------------------------------- overflow guard


def _overflowing(
    plan: _Plan, peaks: dict[str, float], limit: float, weights: dict[int, float]
) -> list[gs.Node]:
    """Convertible nodes that read or write values above ``limit`` (weights are read once,
    their peaks kept in ``weights`` for the next call; other tensors are looked up in
    ``peaks``), now kept in float32."""
    hot = []
    for node in [n for n in plan.graph.nodes if plan.convertible(n)]:
        inputs, outputs = plan.typed_tensors(node)
        tensors = [node.inputs[i] for i in inputs] + [node.outputs[i] for i in outputs]
        if node.op == "Constant":
            tensors.append(node.attrs["value"])
        if any(_peak(t, peaks, weights) > limit for t in tensors):
            hot.append(node)
    plan.keep_float(hot)
    return hot


def _peak(tensor: gs.Tensor, peaks: dict[str, float], weights: dict[int, float]) -> float:
    if isinstance(tensor, gs.Constant):
        # By identity: a Constant node's value may share its name with other tensors.
        if id(tensor) not in weights:
            weights[id(tensor)] = _finite_peak(read_constant(tensor))
        return weights[id(tensor)]
    return peaks.get(tensor.name, 0.0)


def _finite_peak(values: np.ndarray) -> float:
    """The largest finite magnitude: infinities (attention masks of -inf) and NaN are the same
    in float16, so only finite values can overflow."""
    if not values.size:
        return 0.0
    # Most tensors are all finite: their extremes say it without a masked copy (GPT-2-large's
    # 3.2 GB of weights: 11 s of the pass otherwise).
    low, high = float(values.min()), float(values.max())
    if np.isfinite(low) and np.isfinite(high):
        return max(abs(low), abs(high))
    magnitudes = np.abs(values[np.isfinite(values)])
    return float(magnitudes.max()) if magnitudes.size else 0.0


def _peak_magnitudes(
    model: Model, plan: _Plan, calib: Path | None, samples: int
) -> dict[str, float] | None:
    """The largest finite magnitude of every float32 variable over the samples (the session
    is built from ``model`` whatever its size: see ``runtime.open_session``)."""
    specs = input_specs(model)
    if calib is not None:
        feeds = load_inputs(calib, specs)[:samples]
    else:
        feeds = [synthesize_inputs(specs, sample_index=i) for i in range(samples)]
    watched = [
        t.name
        for t in plan.graph.tensors().values()
        if isinstance(t, gs.Variable) and plan.is_float(t) and t not in plan.graph.inputs
    ]
    peaks: dict[str, float] = defaultdict(float)
    # Run once or a few times: repacking 3 GB of weights for the kernels would take longer.
    with open_session(model, expose=watched, optimize=False, prepack=False) as session:
        names = [o.name for o in session.get_outputs()]
        for feed in feeds:
            for name, value in zip(names, session.run(None, feed), strict=True):
                if np.issubdtype(value.dtype, np.floating):
                    peaks[name] = max(peaks[name], _finite_peak(value))
    return peaks
