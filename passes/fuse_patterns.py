"""fuse-layernorm and fuse-gelu: decomposed LayerNormalization and Gelu back into single ops.

Exporters spell LayerNormalization (opset 17) and Gelu (opset 20) as chains of elementwise
nodes when the target opset lacks them, and most transformer models are still exported at lower
opsets. One fused node means fewer kernels and intermediate tensors, and runtimes have tuned
kernels for both.

Matching is structural and conservative: every intermediate of a pattern must be read only
inside the pattern (no other node, no graph output of any graph), so removing the chain removes
nothing that anything else needs. Scalar constants may be initializers or Constant nodes and are
compared with a relative tolerance, because exporters round sqrt(2), 1/sqrt(2) and sqrt(2/pi)
to the tensor's precision. A scalar constant with more dimensions than the tensor it meets would
broadcast the result to a higher rank, so such constants do not match.

When the model's opset is too low the graph is left as it is, with a note saying which
``target_opset`` would enable the fusion; with ``target_opset`` set, the default-domain opset
is raised by :func:`raise_opset` first.
"""

from __future__ import annotations

import math
import os
import weakref
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from onnxslim.errors import PassError
from onnxslim.model import Model, iter_graphs, load, read_constant, stub_proto
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass
from onnxslim.rewrite import fresh_name

__all__ = ["FuseLayerNorm", "FuseGelu", "raise_opset", "LAYERNORM_OPSET", "GELU_OPSET"]

LAYERNORM_OPSET = 17
GELU_OPSET = 20

# Exporters store these constants in the tensor's type; float16 rounds them by more than this,
# so the tolerance is at least the machine epsilon of the constant's own type.
_RTOL = 1e-4
_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715
_DEFAULT_DOMAINS = ("", "ai.onnx", None)


# ------------------------------------------------------------------------------ opset raising


def raise_opset(model: Model, target: int) -> None:
    """Convert the model's default-domain opset to ``target`` in place (onnx.version_converter).

    The converter sees the model without its large weights (:func:`onnxslim.model.stub_proto`),
    so raising the opset of a multi-GB model copies no weights; the original constants are put
    back by name. The IR version is raised to the least the new opsets need. Raises PassError,
    with the model untouched, when the converter fails or its result fails onnx.checker.
    """
    before = model.opset
    proto = stub_proto(model)
    try:
        converted = version_converter.convert_version(proto, target)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PassError(
            f"onnx.version_converter cannot take the model from opset {before} to {target}: "
            f"{reason}"
        ) from exc
    fresh = load(converted).graph
    graph = model.graph
    constants = {
        name: tensor for name, tensor in graph.tensors().items() if isinstance(tensor, gs.Constant)
    }
    # stub_proto turned the large constants into graph inputs: make their readers read the
    # original constants again, whose data may still be on disk.
    for g in iter_graphs(fresh):
        for node in g.nodes:
            for index, tensor in enumerate(node.inputs):
                if isinstance(tensor, gs.Variable) and tensor.name in constants:
                    node.inputs[index] = constants[tensor.name]
    original_inputs = {tensor.name for tensor in graph.inputs}
    graph.inputs = [
        constants.get(tensor.name, tensor)
        for tensor in fresh.inputs
        if tensor.name in original_inputs
    ]
    graph.outputs = [constants.get(tensor.name, tensor) for tensor in fresh.outputs]
    graph.nodes = fresh.nodes
    graph.functions = fresh.functions
    graph.opset = fresh.opset
    graph.import_domains = fresh.import_domains
    needed = onnx.helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
    model.shell.ir_version = max(model.shell.ir_version, converted.ir_version, needed)


# -------------------------------------------------------------------------------- the passes


@dataclass
class _Match:
    """One occurrence of a pattern: the nodes it replaces and the tensor it produces."""

    graph: gs.Graph
    nodes: list[gs.Node]
    x: gs.Tensor
    output: gs.Tensor


@dataclass
class _OpsetGatedFusion(Pass):
    """Find, then fuse when the opset allows it, raising the opset first when asked to."""

    target_opset: int | None = None
    # The kinds of note already given in a context: a note that every fixed-point round would
    # repeat is given once per pipeline run.
    _noted: tuple[weakref.ref, set[str]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    required_opset: ClassVar[int]
    fused_op: ClassVar[str]

    def find(self, graph: gs.Graph) -> list[_Match]:
        raise NotImplementedError

    def fuse(self, graph: gs.Graph, matches: list[_Match], ctx: PassContext) -> bool:
        raise NotImplementedError

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        matches = self.find(graph)
        if not matches:
            return False
        opset = ctx.model.opset
        if opset >= self.required_opset:
            return self.fuse(graph, matches, ctx)
        target = self.target_opset if self.target_opset is not None else ctx.target_opset
        found = f"{len(matches)} decomposed {self.fused_op}"
        if target is None or target < self.required_opset or ctx.model.graph is not graph:
            self._note_once(
                ctx,
                "opset too low",
                f"{found} left unfused: {self.fused_op} needs opset {self.required_opset}, the "
                f"model has {opset}; --target-opset {self.required_opset} (or "
                f"{self.name}(target_opset={self.required_opset})) would fuse them",
            )
            return False
        try:
            raise_opset(ctx.model, target)
        except PassError as exc:
            self._note_once(ctx, "conversion failed", f"{found} left unfused: {exc}")
            return False
        ctx.log(f"raised the opset from {opset} to {target} to fuse {self.fused_op}")
        self.fuse(graph, self.find(graph), ctx)
        return True

    def _note_once(self, ctx: PassContext, kind: str, message: str) -> None:
        if self._noted is None or self._noted[0]() is not ctx:
            self._noted = (weakref.ref(ctx), set())
        if kind not in self._noted[1]:
            self._noted[1].add(kind)
            ctx.log(message)


@register_pass("fuse-layernorm")
class FuseLayerNorm(_OpsetGatedFusion):
    """Fuse decomposed layer normalization into LayerNormalization (opset >= 17).

    Matches ReduceMean(x) -> Sub(x, mean) -> Pow(d, 2) or Mul(d, d) -> ReduceMean -> Add(eps)
    -> Sqrt -> Div(d, std) or Reciprocal + Mul, then an optional Mul by a scale and Add of a
    bias whose shape is the normalized shape, as PyTorch (below opset 17) and TensorFlow
    exporters write it. Both means run over the same trailing axes, kept (keepdims=1), given
    as an attribute (opset < 18) or a constant input (opset >= 18). The normalized dims must be
    static. Without a scale, LayerNormalization needs a ones tensor; it is added (once per shape
    and type) only when the nodes it replaces outweigh it in the file.
    """

    required_opset: ClassVar[int] = LAYERNORM_OPSET
    fused_op: ClassVar[str] = "LayerNormalization"

    def find(self, graph: gs.Graph) -> list[_Match]:
        readers = _Readers(graph)
        return _disjoint(
            match
            for g in iter_graphs(graph)
            for node in g.nodes
            if _is_op(node, "ReduceMean")
            and (match := _match_layernorm(g, node, readers)) is not None
        )

    def fuse(self, graph: gs.Graph, matches: list[_Match], ctx: PassContext) -> bool:
        names = _Names(graph)
        changed = False
        unscaled: dict[tuple[str, tuple[int, ...]], list[_LayerNormMatch]] = defaultdict(list)
        for match in matches:
            if match.scale is None:
                unscaled[(match.dtype.str, match.norm_shape)].append(match)
            else:
                _replace_layernorm(match, _shaped(match.scale, match.norm_shape), names)
                changed = True
        for (dtype, shape), group in unscaled.items():
            ones = np.ones(shape, np.dtype(dtype))
            scale = gs.Constant(names.tensor("layernorm_unit_scale"), ones)
            saved = sum(_bytes_saved(match, scale) for match in group)
            if saved < ones.nbytes:
                self._note_once(
                    ctx,
                    f"unit scale {shape}",
                    f"{len(group)} LayerNormalization without scale left unfused: the "
                    f"{ones.nbytes}-byte ones scale it needs outweighs the {saved} bytes of "
                    "nodes it would replace",
                )
                continue
            for match in group:
                _replace_layernorm(match, scale, names)
            changed = True
        return changed


@register_pass("fuse-gelu")
class FuseGelu(_OpsetGatedFusion):
    """Fuse decomposed GELU into Gelu (opset >= 20), exact (erf) and tanh approximations.

    Matches 0.5 * x * (1 + erf(x / sqrt(2))), with Div by sqrt(2) or Mul by 1/sqrt(2), and
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))), with x^3 as Pow(x, 3) or two Muls,
    multiplying by x and 0.5 in whichever order and grouping the exporters write (PyTorch,
    Hugging Face, TensorFlow). Constants match within a relative 1e-4 (or the precision of
    their type, for float16).
    """

    required_opset: ClassVar[int] = GELU_OPSET
    fused_op: ClassVar[str] = "Gelu"

    def find(self, graph: gs.Graph) -> list[_Match]:
        readers = _Readers(graph)
        matchers = {"Erf": _match_erf_gelu, "Tanh": _match_tanh_gelu}
        return _disjoint(
            match
            for g in iter_graphs(graph)
            for node in g.nodes
            if node.op in matchers
            and node.domain in _DEFAULT_DOMAINS
            and (match := matchers[node.op](g, node, readers)) is not None
        )

    def fuse(self, graph: gs.Graph, matches: list[_Match], ctx: PassContext) -> bool:
        names = _Names(graph)
        for match in matches:
            _replace(match, "Gelu", [match.x], {"approximate": match.approximate}, names)
        return bool(matches)


# ----------------------------------------------------------------------- pattern vocabulary


class _Readers:
    """Who reads a tensor: nodes of any graph (gs lists those) and graph outputs of any graph.

    A subgraph output may name an outer tensor without any node reading it, so the outputs of
    every graph are gathered once.
    """

    def __init__(self, graph: gs.Graph) -> None:
        self._outputs = {id(t) for g in iter_graphs(graph) for t in g.outputs}

    def is_output(self, tensor: gs.Tensor) -> bool:
        return id(tensor) in self._outputs

    def sole(self, tensor: gs.Tensor | None, op: str) -> gs.Node | None:
        """The only reader of ``tensor``, read once, when it is an ``op`` node."""
        if tensor is None or self.is_output(tensor) or len(tensor.outputs) != 1:
            return None
        node = tensor.outputs[0]
        return node if _is_op(node, op) else None

    def feeding(self, tensor: gs.Tensor | None, op: str, into: gs.Node) -> gs.Node | None:
        """The ``op`` node that produces ``tensor``, when ``into`` is its only reader."""
        producer = _producer(tensor, op)
        return producer if producer is not None and self.sole(tensor, into.op) is into else None


def _is_op(node: gs.Node | None, op: str) -> bool:
    return node is not None and node.op == op and node.domain in _DEFAULT_DOMAINS


def _producer(tensor: gs.Tensor | None, op: str) -> gs.Node | None:
    if not isinstance(tensor, gs.Variable) or len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    return node if _is_op(node, op) else None


def _other_input(node: gs.Node | None, tensor: gs.Tensor) -> gs.Tensor | None:
    """The second operand of a binary ``node`` of which ``tensor`` is one."""
    if node is None or len(node.inputs) != 2:
        return None
    first, second = node.inputs
    if first is tensor:
        return second
    return first if second is tensor else None


def _small_constant(tensor: gs.Tensor | None, max_size: int) -> np.ndarray | None:
    """The values of an initializer or Constant-node output of at most ``max_size`` elements."""
    producer = _producer(tensor, "Constant")
    if producer is not None:
        attrs = producer.attrs
        tensor = attrs.get("value")
        if not isinstance(tensor, gs.Constant):
            kinds = {"value_float": np.float32, "value_floats": np.float32}
            kinds.update(value_int=np.int64, value_ints=np.int64)
            for key, dtype in kinds.items():
                if key in attrs:
                    values = np.asarray(attrs[key], dtype)
                    return values if values.size <= max_size else None
            return None
    if not isinstance(tensor, gs.Constant) or math.prod(tensor.shape) > max_size:
        return None
    return read_constant(tensor)


def _scalar(tensor: gs.Tensor | None, rank: int | None) -> tuple[float, float] | None:
    """(value, relative tolerance) of a one-element constant that keeps the operand's rank."""
    values = _small_constant(tensor, max_size=1)
    if values is None or values.ndim > (1 if rank is None else rank):
        return None
    tolerance = _RTOL
    if np.issubdtype(values.dtype, np.floating):
        tolerance = max(_RTOL, float(np.finfo(values.dtype).eps))
    return float(values.reshape(())), tolerance


def _is_scalar(tensor: gs.Tensor | None, target: float, rank: int | None) -> bool:
    found = _scalar(tensor, rank)
    return found is not None and abs(found[0] - target) <= found[1] * abs(target)


def _rank(*tensors: gs.Tensor | None) -> int | None:
    for tensor in tensors:
        if tensor is not None and tensor.shape is not None:
            return len(tensor.shape)
    return None


def _disjoint(matches: Iterable[_Match]) -> list[_Match]:
    """Matches that share no node (each intermediate has one reader, but be sure)."""
    taken: set[int] = set()
    kept = []
    for match in matches:
        ids = {id(node) for node in match.nodes}
        if not ids & taken:
            taken |= ids
            kept.append(match)
    return kept


class _Names:
    """Fresh node and tensor names, unique across the whole model."""

    def __init__(self, graph: gs.Graph) -> None:
        graphs = list(iter_graphs(graph))
        self.nodes = {node.name for g in graphs for node in g.nodes}
        self.tensors = {name for g in graphs for name in g.tensors()}

    def node(self, nodes: Sequence[gs.Node], op: str) -> str:
        return fresh_name(_scoped(nodes, op), self.nodes)

    def tensor(self, base: str) -> str:
        return fresh_name(base, self.tensors)


def _scoped(nodes: Sequence[gs.Node], op: str) -> str:
    """``op`` under the scope the replaced nodes share, e.g. ``/layer.0/ln/`` + ``op``."""
    prefix = os.path.commonprefix([node.name or "" for node in nodes])
    return prefix[: prefix.rfind("/") + 1] + op


def _replace(match: _Match, op: str, inputs: list[gs.Tensor], attrs: dict, names: _Names) -> None:
    """Detach the pattern's nodes (the manager removes them) and let one ``op`` node write its
    output tensor, which keeps its name, readers and graph-output place."""
    name = names.node(match.nodes, op)
    for node in match.nodes:
        node.inputs.clear()
        node.outputs.clear()
    fused = gs.Node(op, name=name, attrs=attrs, inputs=inputs, outputs=[match.output])
    match.graph.nodes.append(fused)


# ------------------------------------------------------------------------------- LayerNorm


@dataclass
class _LayerNormMatch(_Match):
    axis: int
    epsilon: float
    norm_shape: tuple[int, ...]
    dtype: np.dtype | None
    scale: gs.Constant | None
    bias: gs.Constant | None


def _match_layernorm(
    graph: gs.Graph, mean_node: gs.Node, readers: _Readers
) -> _LayerNormMatch | None:
    x, mean = mean_node.inputs[0], mean_node.outputs[0]
    sub = readers.sole(mean, "Sub")
    if sub is None or sub.inputs[0] is not x or sub.inputs[1] is not mean:
        return None
    centered = sub.outputs[0]
    rank = _rank(x, centered)
    axes = _reduced_axes(mean_node, rank)
    if axes is None or axes != tuple(range(-len(axes), 0)):
        return None
    square, divide = _square_and_divide(centered, rank, readers)
    if square is None:
        return None
    variance_node = readers.sole(square.outputs[0], "ReduceMean")
    if variance_node is None or _reduced_axes(variance_node, rank) != axes:
        return None
    variance = variance_node.outputs[0]
    add_epsilon = readers.sole(variance, "Add")
    epsilon = _scalar(_other_input(add_epsilon, variance), rank)
    sqrt = readers.sole(add_epsilon.outputs[0], "Sqrt") if epsilon is not None else None
    if sqrt is None:
        return None
    normalizing = _normalizing_nodes(sqrt.outputs[0], centered, readers)
    if normalizing is None or normalizing[-1] is not divide:
        return None
    nodes = [mean_node, sub, square, variance_node, add_epsilon, sqrt, *normalizing]
    normalized = divide.outputs[0]
    shape = _static_tail((x, centered, normalized), len(axes))
    if shape is None:
        return None
    norm_shape, rank = shape
    scale, bias, output = None, None, normalized
    for op in ("Mul", "Add"):
        node = readers.sole(output, op)
        weight = _other_input(node, output)
        if not _fits_normalized_shape(weight, norm_shape, rank):
            continue
        if op == "Mul":
            scale = weight
        else:
            bias = weight
        nodes.append(node)
        output = node.outputs[0]
    dtype = _float_dtype(x, centered, normalized, bias)
    if scale is None and dtype is None:
        return None  # the ones scale it would need has no known type
    return _LayerNormMatch(
        graph=graph,
        nodes=nodes,
        x=x,
        output=output,
        axis=axes[0],
        epsilon=epsilon[0],
        norm_shape=norm_shape,
        dtype=dtype,
        scale=scale,
        bias=bias,
    )


def _reduced_axes(node: gs.Node, rank: int | None) -> tuple[int, ...] | None:
    """The axes a keepdims ReduceMean averages over, counted from the end (negative)."""
    if node.attrs.get("keepdims", 1) != 1:
        return None
    if "axes" in node.attrs:
        axes = [int(a) for a in node.attrs["axes"]]
    else:
        given = node.inputs[1] if len(node.inputs) > 1 else None
        values = _small_constant(given, max_size=64)
        if values is None:
            return None
        axes = [int(a) for a in values.reshape(-1)]
    if not axes or (rank is None and any(a >= 0 for a in axes)):
        return None
    negative = sorted({a - rank if a >= 0 else a for a in axes})
    return tuple(negative) if len(negative) == len(axes) else None


def _square_and_divide(
    centered: gs.Tensor, rank: int | None, readers: _Readers
) -> tuple[gs.Node | None, gs.Node | None]:
    """The two readers of x - mean: the node that squares it and the one that divides it."""
    if readers.is_output(centered):
        return None, None
    distinct = list({id(node): node for node in centered.outputs}.values())
    if len(distinct) != 2:
        return None, None
    for square, divide in (distinct, distinct[::-1]):
        by_mul = _is_op(square, "Mul") and all(t is centered for t in square.inputs)
        by_pow = (
            _is_op(square, "Pow")
            and square.inputs[0] is centered
            and _is_scalar(square.inputs[1], 2.0, rank)
        )
        if (by_mul or by_pow) and len(centered.outputs) == (3 if by_mul else 2):
            return square, divide
    return None, None


def _normalizing_nodes(
    std: gs.Tensor, centered: gs.Tensor, readers: _Readers
) -> list[gs.Node] | None:
    """Div(centered, std), or Reciprocal(std) then Mul with centered; the divide comes last."""
    divide = readers.sole(std, "Div")
    if divide is not None:
        return [divide] if divide.inputs[0] is centered and divide.inputs[1] is std else None
    reciprocal = readers.sole(std, "Reciprocal")
    if reciprocal is None:
        return None
    multiply = readers.sole(reciprocal.outputs[0], "Mul")
    if _other_input(multiply, reciprocal.outputs[0]) is not centered:
        return None
    return [reciprocal, multiply]


def _static_tail(tensors: Iterable[gs.Tensor], count: int) -> tuple[tuple[int, ...], int] | None:
    """(the last ``count`` dims, the rank) of the first of ``tensors`` where those are static."""
    for tensor in tensors:
        shape = tensor.shape
        if shape is None or len(shape) < count:
            continue
        tail = shape[len(shape) - count :]
        if all(isinstance(d, int | np.integer) and d >= 0 for d in tail):
            return tuple(int(d) for d in tail), len(shape)
    return None


def _without_leading_ones(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _fits_normalized_shape(
    weight: gs.Tensor | None, norm_shape: tuple[int, ...], rank: int
) -> bool:
    """A scale or bias LayerNormalization can take: an initializer that broadcasts exactly
    like the normalized shape. One that needs reshaping must have no other reader, or its
    reshaped copy would add its bytes to the file."""
    if not isinstance(weight, gs.Constant):
        return False
    shape = tuple(weight.shape)
    if len(shape) > rank or _without_leading_ones(shape) != _without_leading_ones(norm_shape):
        return False
    return shape == norm_shape or len(weight.outputs) == 1


def _shaped(weight: gs.Constant, shape: tuple[int, ...]) -> gs.Constant:
    """``weight`` with the normalized shape itself: ONNX Runtime 1.19 takes nothing else."""
    if tuple(weight.shape) == shape:
        return weight
    return gs.Constant(weight.name, read_constant(weight).reshape(shape))


def _float_dtype(*tensors: gs.Tensor | None) -> np.dtype | None:
    for tensor in tensors:
        dtype = getattr(tensor, "dtype", None)
        if dtype is None:
            continue
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            continue
        if np.issubdtype(dtype, np.floating):
            return dtype
    return None


def _replace_layernorm(match: _LayerNormMatch, scale: gs.Constant, names: _Names) -> None:
    bias = [_shaped(match.bias, match.norm_shape)] if match.bias is not None else []
    attrs = {"axis": match.axis, "epsilon": match.epsilon}
    _replace(match, "LayerNormalization", [match.x, scale, *bias], attrs, names)


def _node_bytes(
    op: str, inputs: Iterable[gs.Tensor], outputs: Iterable[gs.Tensor], name: str, **attrs
) -> int:
    names_in = [t.name for t in inputs]
    names_out = [t.name for t in outputs]
    return onnx.helper.make_node(op, names_in, names_out, name=name, **attrs).ByteSize()


def _bytes_saved(match: _LayerNormMatch, scale: gs.Constant) -> int:
    """Bytes the fusion takes out of the file, besides its scale: the replaced nodes (without
    their attributes, so an underestimate) minus the LayerNormalization node."""
    removed = sum(
        _node_bytes(node.op, node.inputs, node.outputs, node.name) for node in match.nodes
    )
    inputs = [match.x, scale] + ([match.bias] if match.bias is not None else [])
    added = _node_bytes(
        "LayerNormalization",
        inputs,
        [match.output],
        _scoped(match.nodes, "LayerNormalization"),
        axis=match.axis,
        epsilon=match.epsilon,
    )
    return removed - added


# ------------------------------------------------------------------------------------ Gelu


@dataclass
class _GeluMatch(_Match):
    approximate: str


def _match_erf_gelu(graph: gs.Graph, erf: gs.Node, readers: _Readers) -> _GeluMatch | None:
    scaled = erf.inputs[0]
    rank = _rank(scaled)
    scaling = readers.feeding(scaled, "Div", erf)
    if scaling is not None:
        x = scaling.inputs[0] if _is_scalar(scaling.inputs[1], _SQRT2, rank) else None
    else:
        scaling = readers.feeding(scaled, "Mul", erf)
        x = _scaled_operand(scaling, 1 / _SQRT2, rank)
    tail = _one_plus_times_half_x(erf.outputs[0], x, rank, readers) if x is not None else None
    if tail is None:
        return None
    output, tail_nodes = tail
    return _GeluMatch(graph, [scaling, erf, *tail_nodes], x, output, approximate="none")


def _match_tanh_gelu(graph: gs.Graph, tanh: gs.Node, readers: _Readers) -> _GeluMatch | None:
    scaled = tanh.inputs[0]
    rank = _rank(scaled)
    scaling = readers.feeding(scaled, "Mul", tanh)
    add = readers.feeding(_scaled_operand(scaling, _SQRT_2_OVER_PI, rank), "Add", scaling)
    if add is None:
        return None
    for x, cubic in (add.inputs, add.inputs[::-1]):
        cubic_nodes = _cubic_term(cubic, x, add, rank, readers)
        if cubic_nodes is not None:
            break
    else:
        return None
    tail = _one_plus_times_half_x(tanh.outputs[0], x, rank, readers)
    if tail is None:
        return None
    output, tail_nodes = tail
    nodes = [*cubic_nodes, add, scaling, tanh, *tail_nodes]
    return _GeluMatch(graph, nodes, x, output, approximate="tanh")


def _scaled_operand(multiply: gs.Node | None, factor: float, rank: int | None) -> gs.Tensor | None:
    """The operand that Mul node ``multiply`` multiplies by the scalar constant ``factor``."""
    if not _is_op(multiply, "Mul") or len(multiply.inputs) != 2:
        return None
    for operand, other in (multiply.inputs, multiply.inputs[::-1]):
        if _is_scalar(other, factor, rank):
            return operand
    return None


def _cubic_term(
    term: gs.Tensor, x: gs.Tensor, into: gs.Node, rank: int | None, readers: _Readers
) -> list[gs.Node] | None:
    """The nodes of 0.044715 * x^3, x^3 as Pow(x, 3) or x * (x * x) in either order."""
    scaling = readers.feeding(term, "Mul", into)
    cube = _scaled_operand(scaling, _TANH_CUBIC, rank)
    power = readers.feeding(cube, "Pow", scaling)
    if power is not None:
        if power.inputs[0] is x and _is_scalar(power.inputs[1], 3.0, rank):
            return [power, scaling]
        return None
    product = readers.feeding(cube, "Mul", scaling)
    squaring = readers.feeding(_other_input(product, x), "Mul", product)
    if squaring is None or not all(t is x for t in squaring.inputs):
        return None
    return [squaring, product, scaling]


def _one_plus_times_half_x(
    tensor: gs.Tensor, x: gs.Tensor, rank: int | None, readers: _Readers
) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """Add(tensor, 1) multiplied by x and by 0.5: (x * a) * 0.5, (a * 0.5) * x, (0.5 * x) * a,
    in any operand order. Returns the result and the nodes from the Add on."""
    add = readers.sole(tensor, "Add")
    if add is None or not _is_scalar(_other_input(add, tensor), 1.0, rank):
        return None
    nodes, current = [add], add.outputs[0]
    need_x = need_half = True
    while need_x or need_half:
        multiply = readers.sole(current, "Mul")
        other = _other_input(multiply, current)
        if other is None:
            return None
        half_x = readers.feeding(other, "Mul", multiply) if need_x and need_half else None
        if need_x and other is x:
            need_x = False
        elif need_half and _is_scalar(other, 0.5, rank):
            need_half = False
        elif half_x is not None and _scaled_operand(half_x, 0.5, rank) is x:
            need_x = need_half = False
            nodes.append(half_x)
        else:
            return None
        nodes.append(multiply)
        current = multiply.outputs[0]
    return current, nodes
