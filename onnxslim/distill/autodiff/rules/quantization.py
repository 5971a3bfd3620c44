"""QuantizeLinear → DequantizeLinear: fake quantization, with the straight-through estimator.

Rounding has no useful derivative, so quantization-aware training pretends it is the identity
(the straight-through estimator): the gradient passes through the Q/DQ pair unchanged where the
input lies within the representable range, and stops where quantization clipped it.
DequantizeLinear hands its gradient straight back; QuantizeLinear applies the range. The range
is per element: ``s·(qmin - zp)`` to ``s·(qmax - zp)`` with the node's scale and zero point,
per tensor, per channel (``axis``) or per block (``block_size``).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnxslim.distill.autodiff.registry import GradientContext, gradient

__all__ = ["INTEGER_RANGES", "broadcastable"]

# Integer range of each quantized element type.
INTEGER_RANGES = {
    TensorProto.UINT8: (0, 255),
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.INT32: (-(2**31), 2**31 - 1),
    getattr(TensorProto, "UINT4", -1): (0, 15),
    getattr(TensorProto, "INT4", -2): (-8, 7),
}


def _quantized_type(ctx: GradientContext) -> int:
    if ctx.input(2) is not None:
        return int(ctx.table.elem_type(ctx.input(2)))
    return int(ctx.attr("output_dtype", 0)) or TensorProto.UINT8


def broadcastable(
    values: np.ndarray, rank: int, dims: list | None, *, axis: int | None, block_size: int | None
) -> np.ndarray:
    """A per-tensor, per-axis (``axis``) or per-block (``block_size`` along ``axis``) scale or
    zero point laid out to broadcast against a tensor of ``rank`` (block-wise needs ``dims``)."""
    if values.ndim == 0 or values.size == 1:
        return values.reshape(())
    axis = (1 if axis is None else axis) % rank
    if block_size:
        if dims is None:
            raise ValueError("block-wise quantization needs a static shape")
        return np.repeat(values, block_size, axis=axis)[tuple(slice(0, d) for d in dims)]
    shape = [1] * rank
    shape[axis] = -1
    return values.reshape(shape)


def _constant_bounds(ctx: GradientContext, x: str, low: int, high: int) -> tuple[str, str] | None:
    """The range as constants, when the scale and zero point are constants."""
    scale = ctx.table.value(ctx.input(1))
    zero = ctx.table.value(ctx.input(2)) if ctx.input(2) is not None else np.zeros((), np.int64)
    if scale is None or zero is None:
        return None
    rank, dims = ctx.rank(x), ctx.table.static_shape(x)
    layout = {"axis": ctx.attr("axis", 1), "block_size": ctx.attr("block_size", 0)}
    if layout["block_size"] and dims is None:
        raise ctx.fail("block-wise quantization needs a static input shape")
    scale = broadcastable(scale.astype(np.float64), rank, dims, **layout)
    zero = broadcastable(zero.astype(np.float64), rank, dims, **layout)
    dtype = ctx.dtype(x)
    return (
        ctx.emit.constant((low - zero) * scale, dtype),
        ctx.emit.constant((high - zero) * scale, dtype),
    )


def _runtime_bounds(
    ctx: GradientContext, x: str, qtype: int, low: int, high: int
) -> tuple[str, str]:
    """The range by dequantizing integers filled with each bound, shaped like x."""
    attrs = {k: v for k, v in ctx.attrs.items() if k in ("axis", "block_size")}
    bounds = []
    for bound in (low, high):
        value = helper.make_tensor("value", qtype, [1], [bound])
        filled = ctx.emit.op("ConstantOfShape", [ctx.shape_of(x)], value=value)
        bounds.append(ctx.emit.op("DequantizeLinear", [filled, *ctx.node.input[1:]], **attrs))
    return bounds[0], bounds[1]


@gradient("QuantizeLinear", integer_outputs=True)
def _quantize(ctx: GradientContext) -> list[str | None]:
    x, emit = ctx.input(0), ctx.emit
    qtype = _quantized_type(ctx)
    if qtype not in INTEGER_RANGES:
        raise ctx.fail(f"quantized type {helper.tensor_dtype_to_string(qtype)} is not supported")
    low, high = INTEGER_RANGES[qtype]
    lower, upper = _constant_bounds(ctx, x, low, high) or _runtime_bounds(ctx, x, qtype, low, high)
    inside = emit.op(
        "And", [emit.op("GreaterOrEqual", [x, lower]), emit.op("LessOrEqual", [x, upper])]
    )
    return [ctx.masked(ctx.dy(), inside, x), None, None]


@gradient("DequantizeLinear")
def _dequantize(ctx: GradientContext) -> list[str | None]:
    """Passes the gradient on to the QuantizeLinear before it, whose rule applies the range."""
    return [ctx.dy(), None, None]
