"""Where quantize puts QuantizeLinear/DequantizeLinear, and the rewrite that puts them there.

Placement follows the patterns onnxruntime's CPU execution provider turns into integer
kernels, so that the Q/DQ pairs cost nothing and the integer math pays:

* ``DQ(x), DQ(w), DQ(b int32) -> Conv -> Q`` becomes QLinearConv; ``Gemm`` the same becomes
  QGemm; ``DQ, DQ -> MatMul -> Q`` becomes QLinearMatMul; ``DQ, DQ -> Add -> Q`` QLinearAdd;
  ``DQ... -> Concat -> Q`` QLinearConcat. A Concat input that nothing else reads takes the
  Concat output's scale and zero point, so the concatenation is a plain copy of integers
  (no requantization; TensorRT requires it to fuse).
* A ReLU right after a layer is not given its own Q/DQ: the Q goes after the ReLU, whose
  clipping the Q's zero point then performs (onnxruntime removes the ReLU).
* Add and Mul with a constant operand (a MatMul's bias, GELU's ``* 0.5``) store the constant
  in the activations' integer type, per tensor, so that they too become QLinearAdd and
  QLinearMul instead of a DequantizeLinear, a float op and a QuantizeLinear.
* Data-movement ops (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, MaxPool) after a
  quantized tensor get a Q/DQ with *the same* scale and zero point, which lets onnxruntime run
  them on the integers (it drops ``DQ -> op -> Q`` pairs whose parameters agree).
* Gather on a constant table stores the table as integers and, with activations quantized,
  puts a Q with the table's parameters on its output, so that only the rows read are
  dequantized.
* int4 weights of MatMul are block-wise along K (opset-21 DequantizeLinear with
  ``block_size``), the pattern onnxruntime fuses into MatMulNBits.
* A weight that reaches its layer through view ops (``Transpose(W)``, ``Cast(W_fp16)``...; see
  ``layers.WeightSource``) is stored as the layer sees it, so the DequantizeLinear feeds the
  layer directly and the views go with the float weight.

A tensor read by several nodes gets one Q/DQ pair that all of them share. Names of the
model's tensors are kept: the DequantizeLinear writes the original name, so a layer's output
can be compared with the float model's by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnxslim.passes.quantize.gptq import gptq
from onnxslim.passes.quantize.layers import Layer, WeightSource, is_float_variable
from onnxslim.passes.quantize.numerics import (
    PackedInt4,
    QuantParams,
    QuantType,
    bias_params,
    blockwise_params,
    quantization_sqnr,
    quantize,
    weight_params,
)

from onnxslim.model import DerivedValues, read_constant
from onnxslim.rewrite import STANDARD_DOMAINS, fresh_name

__all__ = [
    "WeightConfig",
    "gather_before_dequantize",
    "mark_activations",
    "resolve_params",
    "QuantizedWeight",
    "WeightCache",
    "insert_qdq",
    "layer_weight",
    "blockwise",
    "GraphBuilder",
    "LayerResult",
]

_MOVEMENT_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "MaxPool")
# Ops whose quantized output keeps its input's scale and zero point.
_SAME_SCALE_OUTPUT = ("MaxPool",)
_FLOAT32 = np.dtype(np.float32)
# Ops whose integer kernels in onnxruntime can write float outputs directly.
_FLOAT_OUTPUT_KERNELS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class WeightConfig:
    """How weights are stored: integer type, per channel or not, block size for int4.

    ``blockwise``: int8/uint8 MatMul weights block-wise too (weight-only: onnxruntime fuses
    them into MatMulNBits with 8 bits); int4 is always block-wise. ``rounding``: how
    block-wise weights are rounded (``nearest``, ``mse``: the clipping search of
    ``numerics.block_params``; ``gptq``: error compensation, see ``gptq``). ``zero_points``:
    block-wise weights asymmetric, with a zero point per block.
    """

    qtype: QuantType
    per_channel: bool = True
    block_size: int = 32
    blockwise: bool = False
    rounding: str = "nearest"
    zero_points: bool = False


def _sole_relu(tensor: gs.Tensor, graph_outputs: set[int]) -> gs.Node | None:
    if id(tensor) in graph_outputs or len(tensor.outputs) != 1:
        return None
    reader = tensor.outputs[0]
    return reader if reader.op == "Relu" and reader.domain in STANDARD_DOMAINS else None


def mark_activations(graph: gs.Graph, layers: list[Layer]) -> dict[str, str | None]:
    """The activation tensors that get a Q/DQ pair, in graph order, each mapped to the tensor
    (or Gather table) whose parameters it must share, or None when it is calibrated itself.

    A graph output is quantized only where its producer needs the Q to become an integer
    kernel: MatMul and Gemm have integer kernels with float outputs (MatMulIntegerToFloat,
    QGemm), so their outputs (final logits, typically) keep full precision.
    """
    by_node = {id(layer.node): layer for layer in layers}
    outputs = {id(t) for t in graph.outputs}
    marks: dict[str, str | None] = {}

    def mark(tensor: gs.Tensor, alias: str | None = None) -> None:
        if not is_float_variable(tensor):
            return
        producer = tensor.inputs[0] if tensor.inputs else None
        if id(tensor) in outputs and producer is not None and producer.op in _FLOAT_OUTPUT_KERNELS:
            return
        marks.setdefault(tensor.name, alias)

    for node in graph.nodes:
        layer = by_node.get(id(node))
        if layer is None:
            source = node.inputs[0] if node.inputs else None
            if node.op in _MOVEMENT_OPS and source is not None and source.name in marks:
                mark(node.outputs[0], source.name)
            continue
        for index in layer.activations:
            mark(node.inputs[index])
        result = node.outputs[0]
        if node.op == "Gather":
            mark(result, node.inputs[0].name)
        elif node.op in _SAME_SCALE_OUTPUT:
            if node.inputs[0].name in marks:
                mark(result, node.inputs[0].name)
        else:
            relu = _sole_relu(result, outputs)
            mark(relu.outputs[0] if relu is not None else result)
        if node.op == "Concat" and marks.get(result.name, "") is None:
            _share_concat_parameters(node, marks)
    return marks


def _share_concat_parameters(concat: gs.Node, marks: dict[str, str | None]) -> None:
    """Give Concat inputs that only the Concat reads the output's parameters.

    Such an input is re-inserted after the output, because aliases resolve in order.
    """
    for tensor in concat.inputs:
        if marks.get(tensor.name, "") is None and tensor.outputs == [concat]:
            del marks[tensor.name]
            marks[tensor.name] = concat.outputs[0].name


# ------------------------------------------------------------------------------- weights


@dataclass
class QuantizedWeight:
    """A weight's integers and parameters, and how close they come to the float values."""

    values: np.ndarray | PackedInt4
    params: QuantParams
    sqnr: float


class WeightCache:
    """Quantized weights by (weight, layout), so that the accuracy guard, which builds the
    model several times, quantizes each weight once. ``hessians`` holds, by weight key, the
    input second moments GPTQ rounds against (see ``gptq.hessians``)."""

    def __init__(self, hessians: dict[tuple, np.ndarray] | None = None) -> None:
        self._entries: dict[tuple, QuantizedWeight] = {}
        self.hessians = hessians or {}

    def get(
        self,
        source: WeightSource,
        config: WeightConfig,
        axis: int | None,
        block: int | None,
        blockwise: bool = False,
    ) -> QuantizedWeight:
        layout = (block, config.block_size) if blockwise else (axis if config.per_channel else None)
        key = (source.key, config, layout)
        if key not in self._entries:
            weights = source.values()
            if blockwise:
                values, params = self._blockwise(source, weights, config, block)
            else:
                params = weight_params(weights, config.qtype, layout)
                values = quantize(weights, params)
            sqnr = quantization_sqnr(weights, values, params)
            if config.qtype.name == "int4":
                values = PackedInt4.of(values)
            self._entries[key] = QuantizedWeight(values, params, sqnr)
        return self._entries[key]

    def _blockwise(
        self, source: WeightSource, weights: np.ndarray, config: WeightConfig, block: int
    ) -> tuple[np.ndarray, QuantParams]:
        hessian = self.hessians.get(source.key)
        if config.rounding == "gptq" and hessian is not None and weights.ndim == 2 and block == 0:
            return gptq(
                weights, hessian, config.qtype, config.block_size, zero_points=config.zero_points
            )
        params = blockwise_params(
            weights,
            config.qtype,
            block,
            config.block_size,
            search=config.rounding != "nearest",
            zero_points=config.zero_points,
        )
        return quantize(weights, params), params


# ------------------------------------------------------------------------------- rewriting


class GraphBuilder:
    """Creates Q/DQ nodes and their constants with names that are free in the graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.taken = set(graph.tensors()) | {n.name for n in graph.nodes if n.name}
        self.nodes: list[gs.Node] = []

    def name(self, base: str) -> str:
        return fresh_name(base, self.taken)

    def constant(self, base: str, values: np.ndarray | PackedInt4, qtype: QuantType | None = None):
        if qtype is not None and qtype.name == "int4":
            packed = values if isinstance(values, PackedInt4) else PackedInt4.of(values)
            header = onnx.TensorProto(
                name=self.name(base), data_type=qtype.onnx_type, dims=list(packed.shape)
            )
            # The cached bytes, written as they are: a packed copy per variant built, held
            # until the model is written, was 354 MB per variant on GPT-2-large.
            return gs.Constant(header.name, DerivedValues(header, lambda: packed.data, packed))
        # No copy: the cached integer weights are shared by every variant built.
        return gs.Constant(self.name(base), np.asarray(values, order="C"))

    def params(self, base: str, params: QuantParams) -> list[gs.Constant]:
        """Scale and zero point constants (no zero point for symmetric int4 and signed
        block-wise weights: it is 0 by default and onnxruntime's MatMulNBits fusion reads it
        that way; int4 zero points are packed like the weights)."""
        scale = self.constant(f"{base}_scale", params.scale.astype(np.float32, copy=False))
        signed_blocks = params.block_size is not None or params.qtype.name == "int4"
        if signed_blocks and params.qtype.qmin < 0 and not params.zero_point.any():
            return [scale]
        zero_point = self.constant(f"{base}_zero_point", params.zero_point, params.qtype)
        return [scale, zero_point]

    def node(
        self, op: str, base: str, inputs, outputs, params: QuantParams | None = None, **attrs
    ) -> gs.Node:
        """A new node named after ``base``; ``params`` sets a Q/DQ's axis and block size."""
        if params is not None and params.axis is not None and params.scale.ndim:
            attrs["axis"] = int(params.axis)
        if params is not None and params.block_size is not None:
            attrs["block_size"] = int(params.block_size)
        node = gs.Node(op, self.name(base), attrs, inputs, outputs)
        self.nodes.append(node)
        return node

    def variable(self, base: str, dtype=_FLOAT32, shape=None) -> gs.Variable:
        return gs.Variable(self.name(base), dtype, shape)

    def dequantized(self, base: str, q: gs.Constant, params: QuantParams, like: gs.Tensor):
        output = gs.Variable(self.name(f"{base}_dequantized"), _FLOAT32, like.shape)
        inputs = [q, *self.params(base, params)]
        self.node("DequantizeLinear", f"{base}_DequantizeLinear", inputs, [output], params)
        return output

    def quantize_activation(self, tensor: gs.Variable, params: QuantParams, shared) -> None:
        """Route ``tensor`` through Q then DQ; ``shared`` holds the scale/zero-point
        constants to reuse (aliases share their source's)."""
        base = tensor.name
        quantized = gs.Variable(self.name(f"{base}_quantized"), params.qtype.storage, tensor.shape)
        if tensor.inputs:
            producer = tensor.inputs[0]
            relu_input = _clipped_by_quantize(producer, params)
            if relu_input is not None:
                # Q's zero point sits at the bottom of the integer range: the Q itself clips
                # at zero, and onnxruntime's integer kernels see no ReLU in their way.
                source = relu_input
                producer.inputs.clear()
                producer.outputs.clear()
            else:
                source = gs.Variable(self.name(f"{base}_float"), tensor.dtype, tensor.shape)
                producer.outputs[producer.outputs.index(tensor)] = source
            result = tensor
        else:  # a graph input: its name belongs to the caller
            source = tensor
            result = gs.Variable(self.name(f"{base}_dequantized"), tensor.dtype, tensor.shape)
            for reader in list(tensor.outputs):
                for index, read in enumerate(reader.inputs):
                    if read is tensor:
                        reader.inputs[index] = result
        self.node(
            "QuantizeLinear", f"{base}_QuantizeLinear", [source, *shared], [quantized], params
        )
        self.node(
            "DequantizeLinear", f"{base}_DequantizeLinear", [quantized, *shared], [result], params
        )


def _clipped_by_quantize(producer: gs.Node, params: QuantParams) -> gs.Tensor | None:
    """The input of a ReLU whose output Q already clips at zero (zero point = qmin), when the
    ReLU can go: nothing else reads its input."""
    if producer.op != "Relu" or producer.domain not in STANDARD_DOMAINS:
        return None
    if params.scale.ndim or int(params.zero_point) != params.qtype.qmin:
        return None
    source = producer.inputs[0]
    if not isinstance(source, gs.Variable) or not source.inputs or len(source.outputs) != 1:
        return None
    return source


@dataclass
class LayerResult:
    """What happened to one layer's weight (for the per-layer report)."""

    key: str
    op: str
    weight_sqnr: float | None


def insert_qdq(
    graph: gs.Graph,
    layers: list[Layer],
    marks: dict[str, str | None],
    activation_params: dict[str, QuantParams],
    config: WeightConfig,
    cache: WeightCache,
) -> list[LayerResult]:
    """Quantize the weights of ``layers`` and put Q/DQ on the ``marks`` tensors, in place."""
    builder = GraphBuilder(graph)
    tensors = graph.tensors()
    weight_params: dict[str, QuantParams] = {}
    dequantized: dict[tuple, gs.Variable] = {}
    results, with_weights = [], []
    static = bool(marks)
    for layer in layers:
        node = layer.node
        sqnr = None
        weight = layer_weight(layer, config, activation_params, static, cache)
        if weight is not None:
            source = layer.source
            key = (source.key, id(weight))
            if key not in dequantized:
                q = builder.constant(f"{source.name}_quantized", weight.values, weight.params.qtype)
                dequantized[key] = builder.dequantized(source.name, q, weight.params, source.tensor)
            node.inputs[layer.weight] = dequantized[key]
            weight_params[source.tensor.name] = weight.params
            with_weights.append((layer, weight.params))
            sqnr = weight.sqnr
        results.append(LayerResult(layer.key, node.op, sqnr))

    resolved = resolve_params(marks, activation_params, weight_params)
    for layer, params in with_weights:
        _quantize_bias(builder, layer, params, resolved)

    shared: dict[str, list[gs.Constant]] = {}
    for name, alias in marks.items():
        if name not in resolved:
            continue
        source = alias if alias in shared else name
        if source not in shared:
            shared[source] = builder.params(source, resolved[name])
        shared.setdefault(name, shared[source])
        builder.quantize_activation(tensors[name], resolved[name], shared[name])
    graph.nodes.extend(builder.nodes)
    graph.toposort()
    return results


def gather_before_dequantize(graph: gs.Graph) -> int:
    """Move the DequantizeLinear of a quantized table after the Gathers that read it:
    ``Gather(DQ(table), ids)`` becomes ``DQ(Gather(table, ids))``, which dequantizes the rows
    read instead of the whole table on every run (a 30,522-row vocabulary at batch 1).
    The two orders give the same values when the table has one scale and zero point, or one
    per column (its last axis) that the Gather does not index: the rows read keep their
    columns last, so the moved DequantizeLinear takes them along axis -1. The Gather's output
    keeps its name, now written by the DequantizeLinear. Returns how many Gathers moved."""
    taken = set(graph.tensors())
    moved = 0
    for table_dq in list(graph.nodes):
        if table_dq.op != "DequantizeLinear" or table_dq.domain not in STANDARD_DOMAINS:
            continue
        table, result = table_dq.inputs[0], table_dq.outputs[0]
        readers = list(result.outputs)
        if (
            not isinstance(table, gs.Constant)
            or not readers
            or result in graph.outputs
            or any(
                r.op != "Gather" or r.domain not in STANDARD_DOMAINS or r.inputs[0] is not result
                for r in readers
            )
        ):
            continue
        attrs = _rows_dequantize_attrs(table_dq, readers)
        if attrs is None:
            continue
        for gather in readers:
            rows = gather.outputs[0]
            integers = gs.Variable(fresh_name(f"{rows.name}_quantized", taken), table.dtype)
            gather.inputs[0] = table
            gather.outputs[0] = integers
            graph.nodes.append(
                gs.Node(
                    "DequantizeLinear",
                    fresh_name(f"{rows.name}_DequantizeLinear", taken),
                    attrs=attrs,
                    inputs=[integers, *table_dq.inputs[1:]],
                    outputs=[rows],
                )
            )
            moved += 1
        table_dq.inputs.clear()
        table_dq.outputs.clear()
    if moved:  # the detached DequantizeLinears go with the caller's cleanup
        graph.toposort()
    return moved


def _rows_dequantize_attrs(table_dq: gs.Node, gathers: list[gs.Node]) -> dict | None:
    """The attributes of a DequantizeLinear of the rows ``gathers`` read, that dequantizes
    them as ``table_dq`` dequantizes the table; None when that order would differ."""
    parameters = table_dq.inputs[1:]
    if any(not isinstance(p, gs.Constant) for p in parameters):
        return None
    if all(p.shape in ((), [], None) for p in parameters):
        return dict(table_dq.attrs)
    rank = len(table_dq.inputs[0].shape)
    axis = int(table_dq.attrs.get("axis", 1)) % rank
    per_column = (
        axis == rank - 1
        and "block_size" not in table_dq.attrs
        and all(len(p.shape) == 1 for p in parameters)
    )
    if not per_column or any(int(g.attrs.get("axis", 0)) % rank == axis for g in gathers):
        return None
    return {**table_dq.attrs, "axis": -1}


def resolve_params(
    marks: dict[str, str | None],
    activation_params: dict[str, QuantParams],
    weight_params: dict[str, QuantParams] | None = None,
) -> dict[str, QuantParams]:
    """The parameters each marked tensor is quantized with: its own calibrated ones, or those
    of the tensor (or Gather table) it is an alias of. Tensors without any stay float."""
    weight_params = weight_params or {}
    resolved: dict[str, QuantParams] = {}
    for name, alias in marks.items():  # in graph order: an alias's source comes first
        params = activation_params.get(name) if alias is None else None
        if alias is not None:
            params = resolved.get(alias) or weight_params.get(alias)
        if params is not None:
            resolved[name] = params
    return resolved


def layer_weight(
    layer: Layer,
    config: WeightConfig,
    activation_params: dict[str, QuantParams],
    static: bool,
    cache: WeightCache,
) -> QuantizedWeight | None:
    """``layer``'s quantized weight as ``insert_qdq`` stores it: ``config`` for weights,
    the activations' type per tensor for Add/Mul operands (and Gather tables when activations
    are quantized, so that the Gather output can keep the table's parameters)."""
    if layer.source is None:
        return None
    layer_config = _operand_config(activation_params) if layer.operand else config
    if layer_config is None:
        return None
    axis = layer.axis if not (static and layer.op == "Gather") else None
    return cache.get(
        layer.source, layer_config, axis, layer.block_axis, blockwise(layer, layer_config)
    )


def blockwise(layer: Layer, config: WeightConfig) -> bool:
    """Whether ``layer``'s weight is stored block-wise: int4 always, int8/uint8 MatMul weights
    when ``config.blockwise`` asks (MatMulNBits with 8 bits)."""
    if layer.block_axis is None or layer.operand:
        return False
    return config.qtype.name == "int4" or (config.blockwise and layer.op == "MatMul")


def _operand_config(activation_params: dict[str, QuantParams]) -> WeightConfig | None:
    """Constant operands of Add/Mul take the activations' type (integer kernels want both
    inputs alike), per tensor; None when no activation is quantized."""
    qtype = next((params.qtype for params in activation_params.values()), None)
    return WeightConfig(qtype, per_channel=False) if qtype is not None else None


def _quantize_bias(
    builder: GraphBuilder,
    layer: Layer,
    weight: QuantParams,
    activation_params: dict[str, QuantParams],
) -> None:
    """int32 bias with scale input scale x weight scale, when the input is quantized with
    per-tensor parameters and the weight per channel or per tensor (not block-wise)."""
    if layer.bias is None or weight.block_size is not None or weight.qtype.qmin >= 0:
        return
    node = layer.node
    source = activation_params.get(node.inputs[0].name)
    if source is None:
        return
    bias = node.inputs[layer.bias]
    channels = bias.shape[0]
    weight_scale = np.broadcast_to(weight.scale, (channels,)).astype(np.float32)
    params = bias_params(source.scale, weight_scale)
    values = quantize(read_constant(bias), params)
    q = builder.constant(f"{bias.name}_quantized", values)
    node.inputs[layer.bias] = builder.dequantized(bias.name, q, params, bias)
