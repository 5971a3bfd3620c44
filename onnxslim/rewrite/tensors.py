"""What a rewrite asks of a tensor: its element type and dims, and the values of constants.

A constant is an initializer or the output of a ``Constant`` node, the two ways exporters
write one; every reader here takes both, so a rule never needs to care which it met.
Scalars compare within a relative tolerance, because exporters round sqrt(2), 1/sqrt(2) or
sqrt(2/pi) to the tensor's precision.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxslim.model import read_constant
from onnxslim.rewrite.nodes import is_op

__all__ = [
    "Dims",
    "element_type",
    "static_dim",
    "dims",
    "rank",
    "static_shape",
    "float_dtype",
    "normalized_axes",
    "broadcast_keeps",
    "constant_node_value",
    "constant_value",
    "constant_ints",
    "scalar_value",
    "is_scalar",
    "SCALAR_RTOL",
    "NUMPY_NATIVE_TYPES",
]

# A shape as the graph knows it: ints where static, names or None where not.
Dims = list[int | str | None]

SCALAR_RTOL = 1e-4
# Element types whose numpy arrays are the ONNX values themselves (numpy has no bfloat16,
# float8 or 4-bit types: gs reads those into stand-in types), so numpy may compute on them.
NUMPY_NATIVE_TYPES = frozenset(
    getattr(onnx.TensorProto, name)
    for name in ("BOOL", "FLOAT", "DOUBLE", "FLOAT16", "INT8", "INT16", "INT32", "INT64")
    + ("UINT8", "UINT16", "UINT32", "UINT64")
)


def element_type(tensor: gs.Tensor) -> int | None:
    """The ONNX element type of a tensor: for a constant read the same way whether it was
    loaded or folded (always known), for a variable from its dtype (None when unknown).

    gs maps some types (INT4 and INT8, say) to one numpy type, so compare this, not dtypes.
    """
    if not isinstance(tensor, gs.Constant):
        if tensor.dtype is None:
            return None
        try:
            return int(dtype_to_onnx(tensor.dtype))
        except (TypeError, KeyError, ValueError):  # a type that neither numpy nor gs knows
            return None
    values = tensor._values
    if isinstance(values, SparseValues):
        return int(values.tensor.values.data_type)
    if isinstance(values, LazyValues):
        return int(values.tensor.data_type)
    return int(onnx.helper.np_dtype_to_tensor_dtype(np.asarray(values).dtype))


def static_dim(dim: object) -> int | None:
    """A dimension as an int when it is a known size, None when symbolic or unknown."""
    if isinstance(dim, int | np.integer) and not isinstance(dim, bool) and dim >= 0:
        return int(dim)
    return None


def dims(tensor: gs.Tensor | None) -> Dims | None:
    """The tensor's dims: ints where static, names or None where not; None if rank unknown."""
    if tensor is None or tensor.shape is None:
        return None
    return [static_dim(d) if static_dim(d) is not None else d for d in tensor.shape]


def rank(*tensors: gs.Tensor | None) -> int | None:
    """The rank of the first of ``tensors`` whose rank is known."""
    for tensor in tensors:
        if tensor is not None and tensor.shape is not None:
            return len(tensor.shape)
    return None


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The shape of a tensor whose every dim is known, else None (sequences have none)."""
    shape = tensor.shape
    if shape is None or (isinstance(tensor, gs.Variable) and tensor.type != "tensor_type"):
        return None
    sizes = [static_dim(d) for d in shape]
    return None if None in sizes else tuple(sizes)


def float_dtype(*tensors: gs.Tensor | None) -> np.dtype | None:
    """The floating-point dtype of the first of ``tensors`` whose dtype is known and float."""
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


def normalized_axes(axes: list[int], rank: int | None) -> list[int] | None:
    """Axes counted from 0, or None where a negative axis meets an unknown rank or an axis
    repeats."""
    if rank is None and any(a < 0 for a in axes):
        return None
    normalized = [a + rank if a < 0 else a for a in axes]
    if len(set(normalized)) != len(normalized):
        return None
    return normalized


def broadcast_keeps(sizes: Dims, shape: list[int]) -> bool:
    """Whether broadcasting a tensor of ``sizes`` against ``shape`` leaves its shape as it is."""
    if len(shape) > len(sizes):
        return False
    return all(
        s == 1 or static_dim(d) == s for s, d in zip(reversed(shape), reversed(sizes), strict=False)
    )


_ATTRIBUTE_FORMS = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


def constant_node_value(node: gs.Node) -> gs.Constant | np.ndarray | None:
    """The value of a ``Constant`` node: the constant of its ``value`` attribute (lazy values
    stay unread) or an array for the number forms; None for the other forms (strings, sparse)."""
    value = node.attrs.get("value")
    if isinstance(value, gs.Constant):
        return value
    for name, dtype in _ATTRIBUTE_FORMS.items():
        if name in node.attrs:
            return np.array(node.attrs[name], dtype=dtype)
    return None


def constant_value(tensor: gs.Tensor | None, max_size: int | None = None) -> np.ndarray | None:
    """The values of an initializer or Constant-node output (behind Identity nodes too), None
    for anything else or for one of more than ``max_size`` elements (checked before any data
    is read)."""
    # The TorchScript exporter shares identical parameters between layers through Identity.
    while isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1:
        if not is_op(tensor.inputs[0], "Identity"):
            break
        tensor = tensor.inputs[0].inputs[0]
    if isinstance(tensor, gs.Variable):
        producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        if not is_op(producer, "Constant"):
            return None
        value = constant_node_value(producer)
        if isinstance(value, np.ndarray):
            return value if max_size is None or value.size <= max_size else None
        tensor = value
    if not isinstance(tensor, gs.Constant):
        return None
    if max_size is not None and math.prod(tensor.shape) > max_size:
        return None
    return read_constant(tensor)


def constant_ints(tensor: gs.Tensor | None) -> list[int] | None:
    """The values of a constant integer tensor of rank 0 or 1."""
    values = constant_value(tensor)
    if values is None or values.dtype.kind not in "iu" or values.ndim > 1:
        return None
    return [int(v) for v in values.reshape(-1)]


def scalar_value(tensor: gs.Tensor | None, rank: int | None = None) -> float | None:
    """The value of a one-element constant that, met by a tensor of rank ``rank``, does not
    raise its rank by broadcasting; None otherwise."""
    values = _one_element(tensor, rank)
    return None if values is None else float(values.reshape(()))


def is_scalar(
    tensor: gs.Tensor | None, target: float, rank: int | None = None, rtol: float = SCALAR_RTOL
) -> bool:
    """Whether ``tensor`` is a one-element constant equal to ``target`` within ``rtol`` (or the
    machine epsilon of its own float type, when that is coarser: float16 rounds more)."""
    values = _one_element(tensor, rank)
    if values is None:
        return False
    if np.issubdtype(values.dtype, np.floating):
        rtol = max(rtol, float(np.finfo(values.dtype).eps))
    return abs(float(values.reshape(())) - target) <= rtol * abs(target)


def _one_element(tensor: gs.Tensor | None, rank: int | None) -> np.ndarray | None:
    values = constant_value(tensor, max_size=1)
    if values is None or values.size != 1 or values.ndim > (1 if rank is None else rank):
        return None
    return values if values.dtype.kind in "iufb" else None
