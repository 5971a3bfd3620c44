"""What ``onnxslim inspect`` shows: a model's signature, ops, parameters and estimated FLOPs."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from onnxslim.checking import check_input_model
from onnxslim.errors import InvalidModelError
from onnxslim.model import (
    Model,
    all_constants,
    constant_nbytes,
    file_bytes,
    iter_graphs,
    load,
    stub_proto,
)
from onnxslim.shapes import infer_shapes

__all__ = ["ModelDescription", "TensorDescription", "describe", "estimate_flops"]


@dataclass
class TensorDescription:
    name: str
    dtype: str
    shape: list[int | str | None] | None


@dataclass
class ModelDescription:
    """The facts a person looks for first in an unfamiliar model."""

    path: str | None
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorDescription]
    outputs: list[TensorDescription]
    nodes: int
    op_histogram: dict[str, int]
    parameters: int
    parameter_bytes: int
    file_bytes: int | None
    flops: int
    flops_by_op: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(source: str | Path | Model) -> ModelDescription:
    """What :class:`ModelDescription` lists, for a model that is valid ONNX (else
    InvalidModelError: a description of a broken model would mislead)."""
    model = load(source)
    check_input_model(model, runtime=False)
    try:
        proto = infer_shapes(stub_proto(model), data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InvalidModelError(f"shape inference fails on the model: {exc}") from exc
    histogram: Counter[str] = Counter()
    for graph in iter_graphs(model.graph):
        for node in graph.nodes:
            histogram[f"{node.domain}::{node.op}" if node.domain else node.op] += 1
    constants = list(all_constants(model.graph))
    flops_by_op, symbolic = estimate_flops(proto)
    runtime_inputs = {t.name for t in model.graph.inputs if not isinstance(t, gs.Constant)}
    return ModelDescription(
        path=str(model.source) if model.source else None,
        ir_version=model.ir_version,
        opsets={(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import},
        producer=" ".join(
            p for p in (model.shell.producer_name, model.shell.producer_version) if p
        ),
        inputs=[_describe_value(v) for v in proto.graph.input if v.name in runtime_inputs],
        outputs=[_describe_value(v) for v in proto.graph.output],
        nodes=model.node_count(),
        op_histogram=dict(histogram.most_common()),
        parameters=sum(math.prod(t.shape) for t in constants),
        parameter_bytes=sum(constant_nbytes(t) for t in constants),
        file_bytes=file_bytes(model.source_files()),
        flops=sum(flops_by_op.values()),
        flops_by_op=flops_by_op,
        notes=["symbolic dimensions counted as 1 in FLOPs"] if symbolic else [],
    )


def _describe_value(value: onnx.ValueInfoProto) -> TensorDescription:
    tensor_type = value.type.tensor_type
    dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type) if tensor_type.elem_type else "?"
    shape = None
    if tensor_type.HasField("shape"):
        shape = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor_type.shape.dim
        ]
    return TensorDescription(value.name, dtype.lower(), shape)


def estimate_flops(proto: onnx.ModelProto) -> tuple[dict[str, int], bool]:
    """FLOPs (a multiply-add counts 2) of Conv, ConvTranspose, Gemm and MatMul nodes.

    Needs a model annotated by shape inference; returns per-op totals and whether a symbolic
    dimension had to be taken as 1.
    """
    shapes: dict[str, list[int | None]] = {}
    for value in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output):
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            ]
    for tensor in proto.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)

    totals: Counter[str] = Counter()
    symbolic = False
    for node in proto.graph.node:
        count = _node_flops(node, shapes)
        if count is None:
            continue
        flops, used_symbolic = count
        symbolic |= used_symbolic
        totals[node.op_type] += flops
    return dict(totals), symbolic


def _node_flops(node: onnx.NodeProto, shapes) -> tuple[int, bool] | None:
    def dims(name: str) -> tuple[list[int], bool] | None:
        shape = shapes.get(name)
        if shape is None:
            return None
        return [d if d is not None else 1 for d in shape], any(d is None for d in shape)

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
        out, weight, inp = dims(node.output[0]), dims(node.input[1]), dims(node.input[0])
        if not (out and weight and inp):
            return None
        group = int(attrs.get("group", 1))
        kernel = math.prod(weight[0][2:])
        if node.op_type == "Conv":
            flops = 2 * math.prod(out[0]) * weight[0][1] * kernel
        else:
            flops = 2 * math.prod(inp[0]) * (out[0][1] // max(group, 1)) * kernel
        return flops, out[1] or weight[1] or inp[1]
    if node.op_type in ("Gemm", "MatMul"):
        out = dims(node.output[0])
        if not out:
            return None
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        inner = _inner_dimension(node.op_type, attrs, a, b)
        return 2 * math.prod(out[0]) * (inner or 1), out[1] or inner is None
    return None


def _inner_dimension(
    op_type: str, attrs: dict[str, Any], a: list[int | None] | None, b: list[int | None] | None
) -> int | None:
    """K of a Gemm or MatMul, from A or else from B.

    B is usually a weight, whose shape is always known, while A's may not be: after a Reshape
    to a computed shape, for one.
    """
    if op_type == "Gemm":
        from_a = a[0 if attrs.get("transA", 0) else 1] if a and len(a) == 2 else None
        from_b = b[1 if attrs.get("transB", 0) else 0] if b and len(b) == 2 else None
    else:
        from_a = a[-1] if a else None
        from_b = (b[-2] if len(b) >= 2 else b[0]) if b else None
    return from_a if from_a is not None else from_b
