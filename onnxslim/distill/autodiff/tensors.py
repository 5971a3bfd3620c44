"""What the gradient rules may ask about a forward tensor: element type, shape, constant value.

Built once from the forward graph after onnx shape inference. Dims are ints (static), strings
(symbolic, e.g. the batch ``N``; equal names are equal sizes) or None (unknown); a shape is
None when even the rank is unknown. Constant values are those of initializers and of Constant
nodes, which is where exporters keep axes, pads, shapes and scalars.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["Dim", "TensorTable"]

Dim = int | str | None


def _dims(value_type: onnx.TypeProto) -> list[Dim] | None:
    if value_type.WhichOneof("value") != "tensor_type":
        return None
    tensor = value_type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims: list[Dim] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


@dataclass
class TensorTable:
    """Element types, shapes and constant values of a graph's tensors, by name."""

    elem_types: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, list[Dim] | None] = field(default_factory=dict)
    constants: dict[str, onnx.TensorProto] = field(default_factory=dict)

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> TensorTable:
        """The table of ``graph``, which should have been through shape inference."""
        table = cls()
        for value in [*graph.input, *graph.value_info, *graph.output]:
            if value.type.WhichOneof("value") == "tensor_type":
                table.elem_types[value.name] = value.type.tensor_type.elem_type
                table.shapes[value.name] = _dims(value.type)
        for tensor in graph.initializer:
            table.constants[tensor.name] = tensor
            table.elem_types[tensor.name] = tensor.data_type
            table.shapes[tensor.name] = list(tensor.dims)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attribute in node.attribute:
                    if attribute.name == "value":
                        table.constants[node.output[0]] = attribute.t
                    elif attribute.name in (
                        "value_float",
                        "value_int",
                        "value_floats",
                        "value_ints",
                    ):
                        value = helper.get_attribute_value(attribute)
                        dtype = np.float32 if "float" in attribute.name else np.int64
                        table.constants[node.output[0]] = numpy_helper.from_array(
                            np.asarray(value, dtype), node.output[0]
                        )
        return table

    def elem_type(self, name: str) -> int | None:
        return self.elem_types.get(name)

    def dtype(self, name: str) -> np.dtype | None:
        elem = self.elem_types.get(name)
        return None if elem is None else np.dtype(helper.tensor_dtype_to_np_dtype(elem))

    def is_float(self, name: str) -> bool:
        return self.elem_types.get(name) in (
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.DOUBLE,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16,
        )

    def shape(self, name: str) -> list[Dim] | None:
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def static_shape(self, name: str) -> list[int] | None:
        """The shape when every dim is a known int, else None."""
        shape = self.shapes.get(name)
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return list(shape)

    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node), else None."""
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)
