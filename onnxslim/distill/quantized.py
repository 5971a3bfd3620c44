"""Quantization-aware distillation: QDQ students train float master weights.

A QDQ model (``onnxslim quantize``) stores each weight as integers read by a
DequantizeLinear. For training, each such weight becomes a float **master** parameter (its
dequantized values) followed by a QuantizeLinear with the same scale, zero point, axis and
block size: the forward pass still sees exactly the quantized values, and the gradient reaches
the master through the straight-through estimator (the QuantizeLinear → DequantizeLinear
rule). Activations' Q/DQ pairs stay as they are, so training also sees the activations'
rounding. int32 biases, whose quantization step is the product of two scales and negligible,
train as plain floats. Afterwards :meth:`QuantizedWeights.write_back` quantizes the trained
masters with the original scales into the original integer initializers: the model keeps its
structure, scales and types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxslim.distill.autodiff.rules.quantization import INTEGER_RANGES, broadcastable
from onnxslim.distill.errors import QuantizedStudentError
from onnxslim.model import Model

__all__ = ["QuantizedWeight", "QuantizedWeights", "UNTRAINABLE_QUANTIZED_OPS", "lower_quantized"]

# Ops whose integer arithmetic has no float form to train through.
UNTRAINABLE_QUANTIZED_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
        "MatMulNBits",
        "DynamicQuantizeMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QGemm",
    }
)
_INT4_TYPES = (getattr(TensorProto, "INT4", -1), getattr(TensorProto, "UINT4", -2))


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight trained as float ``master`` and stored as integers ``quantized``."""

    master: str
    quantized: str
    elem_type: int
    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int | None
    block_size: int | None
    fake_quantized: bool  # False: an int32 bias, trained as a plain float

    def requantize(self, values: np.ndarray) -> np.ndarray:
        """``values`` rounded to integers with this weight's scale and zero point."""
        rank = values.ndim
        dims = list(values.shape)
        attrs = {"axis": self.axis, "block_size": self.block_size}
        scale = broadcastable(self.scale.astype(np.float64), rank, dims, **attrs)
        zero = 0.0
        if self.zero_point is not None:
            zero = broadcastable(self.zero_point.astype(np.float64), rank, dims, **attrs)
        low, high = INTEGER_RANGES[self.elem_type]
        return np.clip(np.rint(values / scale + zero), low, high)


@dataclass
class QuantizedWeights:
    """The masters of a lowered QDQ student, for writing the trained values back."""

    weights: list[QuantizedWeight] = field(default_factory=list)

    @property
    def masters(self) -> set[str]:
        return {w.master for w in self.weights}

    @property
    def fake_quantized(self) -> set[str]:
        """The masters that train through fake quantization (all but int32 biases)."""
        return {w.master for w in self.weights if w.fake_quantized}

    def stored_name(self, parameter: str) -> str:
        """The student's initializer that ``parameter`` ends up in."""
        return next((w.quantized for w in self.weights if w.master == parameter), parameter)

    def write_back(self, model: Model, parameters: Mapping[str, np.ndarray]) -> int:
        """Quantize the trained ``parameters`` that are masters into ``model``'s integer
        initializers; how many changed."""
        tensors = model.graph.tensors()
        changed = 0
        for weight in self.weights:
            if weight.master not in parameters:
                continue
            constant = tensors[weight.quantized]
            integers = weight.requantize(np.asarray(parameters[weight.master], np.float64))
            constant.values = _integer_values(weight, integers)
            changed += 1
        return changed


def _integer_values(weight: QuantizedWeight, integers: np.ndarray):
    if weight.elem_type in _INT4_TYPES:
        nibbles = integers.astype(np.int8).ravel().view(np.uint8) & 0x0F
        if nibbles.size % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        tensor = TensorProto(name=weight.quantized, data_type=weight.elem_type, dims=integers.shape)
        tensor.raw_data = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()
        return LazyValues(tensor)
    return integers.astype(helper.tensor_dtype_to_np_dtype(weight.elem_type))


def _refuse_untrainable(proto: onnx.ModelProto) -> None:
    for node in proto.graph.node:
        if node.op_type in UNTRAINABLE_QUANTIZED_OPS:
            raise QuantizedStudentError(
                f"the student runs integer arithmetic ({node.op_type} node '{node.name}'), which "
                "cannot be trained: distill a QDQ model (QuantizeLinear/DequantizeLinear around "
                "float ops, as `onnxslim quantize --activations uint8` or `--activations none` "
                "writes; the default for transformers, dynamic, is integer arithmetic), or "
                "distill before quantizing"
            )


def _fresh(name: str, taken: set[str]) -> str:
    candidate, count = f"{name}/master", 0
    while candidate in taken:
        count += 1
        candidate = f"{name}/master_{count}"
    taken.add(candidate)
    return candidate


def lower_quantized(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, QuantizedWeights]:
    """``proto`` (not modified) with each DequantizeLinear of an integer initializer fed by a
    float master and a QuantizeLinear; the masters. A float model comes back as it is."""
    _refuse_untrainable(proto)
    initializers = {t.name: t for t in proto.graph.initializer}
    lowered = onnx.ModelProto()
    lowered.CopyFrom(proto)
    graph = lowered.graph
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    taken |= {n.name for n in graph.node}
    plan = QuantizedWeights()
    replaced: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        source = initializers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is None or source.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
            new_nodes.append(node)
            continue
        weight = _quantized_weight(node, source, initializers, taken)
        if weight is None:
            new_nodes.append(node)
            continue
        if source.name not in replaced:
            plan.weights.append(weight)
            graph.initializer.append(
                numpy_helper.from_array(_dequantized(weight, source), weight.master)
            )
            replaced[source.name] = weight.master
        master = replaced[source.name]
        if not weight.fake_quantized:  # the int32 bias: the master replaces the DQ's output
            new_nodes.append(
                helper.make_node("Identity", [master], [node.output[0]], name=node.name)
            )
            continue
        quantized = _fresh(f"{source.name}/fake", taken)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if len(node.input) < 3 or not node.input[2]:
            attrs["output_dtype"] = source.data_type
        new_nodes.append(
            helper.make_node(
                "QuantizeLinear",
                [master, *node.input[1:]],
                [quantized],
                name=_fresh(f"{node.name}/Q", taken),
                **attrs,
            )
        )
        relinked = onnx.NodeProto()
        relinked.CopyFrom(node)
        relinked.input[0] = quantized
        new_nodes.append(relinked)
    if not plan.weights:
        return proto, plan
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [t for t in graph.initializer if t.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return lowered, plan


def _quantized_weight(
    node: onnx.NodeProto,
    source: onnx.TensorProto,
    initializers: Mapping[str, onnx.TensorProto],
    taken: set[str],
) -> QuantizedWeight | None:
    scale = initializers.get(node.input[1])
    zero = initializers.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None or (len(node.input) > 2 and node.input[2] and zero is None):
        return None  # parameters computed at run time: leave the weight as it is
    if source.data_type not in INTEGER_RANGES:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    scale_values = numpy_helper.to_array(scale)
    axis = int(attrs.get("axis", 1)) if scale_values.size > 1 else None
    return QuantizedWeight(
        master=_fresh(source.name, taken),
        quantized=source.name,
        elem_type=source.data_type,
        scale=scale_values,
        zero_point=None if zero is None else numpy_helper.to_array(zero),
        axis=axis,
        block_size=int(attrs["block_size"]) if attrs.get("block_size") else None,
        fake_quantized=source.data_type != TensorProto.INT32,
    )


def _dequantized(weight: QuantizedWeight, source: onnx.TensorProto) -> np.ndarray:
    integers = numpy_helper.to_array(source).astype(np.float64)
    rank, dims = integers.ndim, list(integers.shape)
    attrs = {"axis": weight.axis, "block_size": weight.block_size}
    scale = broadcastable(weight.scale.astype(np.float64), rank, dims, **attrs)
    zero = (
        0.0
        if weight.zero_point is None
        else broadcastable(weight.zero_point.astype(np.float64), rank, dims, **attrs)
    )
    return ((integers - zero) * scale).astype(np.float32)
