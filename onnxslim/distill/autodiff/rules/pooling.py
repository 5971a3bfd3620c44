"""MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

MaxPool sends each output's gradient to the element it picked: the forward node is asked for
its Indices output (positions in the flattened input), and the gradients are added into a
flat zero tensor there (ScatterElements, reduction add: overlapping windows may pick the same
element twice). AveragePool is linear: its gradient is a depthwise transposed convolution with
a kernel of ones, after dividing each output's gradient by what that output divided by.
"""

from __future__ import annotations

import numpy as np

from onnxslim.distill.autodiff.registry import GradientContext, gradient
from onnxslim.distill.autodiff.rules.convolution import (
    Geometry,
    channels_and_sizes,
    output_padding_for,
    window,
)
from onnxslim.distill.autodiff.rules.reductions import share_among_extremes

__all__: list[str] = []


@gradient("MaxPool")
def _max_pool(ctx: GradientContext) -> list[str | None]:
    x, emit = ctx.input(0), ctx.emit
    if int(ctx.attr("storage_order", 0)) != 0:
        raise ctx.fail("column-major indices (storage_order=1) are not supported")
    indices = ctx.output(1)
    flat_indices = emit.op("Reshape", [indices, emit.ints([-1])])
    flat_grads = emit.op("Reshape", [ctx.dy(), emit.ints([-1])])
    size = emit.op("Reshape", [emit.op("Size", [x]), emit.ints([1])])
    zero = emit.op("ConstantOfShape", [size], value=_zero(ctx, x))
    spread = emit.op("ScatterElements", [zero, flat_indices, flat_grads], axis=0, reduction="add")
    return [emit.op("Reshape", [spread, ctx.shape_of(x)])]


def _zero(ctx: GradientContext, like: str):
    from onnx import helper

    return helper.make_tensor("value", ctx.table.elem_type(like), [1], [0])


def _divisors(
    ctx: GradientContext, geometry: Geometry, sizes: list[int], out_sizes: list[int]
) -> np.ndarray:
    """What AveragePool divided each output by, [1, 1, *out_sizes]: the count of the window's
    elements inside the input, or with count_include_pad those inside the padded input."""
    rank, pads = geometry.rank, geometry.pads
    include_pad = bool(ctx.attr("count_include_pad", 0))
    counts = []
    for axis in range(rank):
        low, high = (0, sizes[axis])
        if include_pad:
            low, high = -pads[axis], sizes[axis] + pads[rank + axis]
        starts = np.arange(out_sizes[axis]) * geometry.strides[axis] - pads[axis]
        taps = (
            starts[:, None] + np.arange(geometry.kernel[axis])[None, :] * geometry.dilations[axis]
        )
        counts.append(((taps >= low) & (taps < high)).sum(axis=1))
    total = counts[0]
    for count in counts[1:]:
        total = np.multiply.outer(total, count)
    return total.reshape([1, 1, *out_sizes])


@gradient("AveragePool")
def _average_pool(ctx: GradientContext) -> list[str | None]:
    x, y, emit = ctx.input(0), ctx.node.output[0], ctx.emit
    x_dims, y_dims = channels_and_sizes(ctx, x), channels_and_sizes(ctx, y)
    channels, sizes, out_sizes = x_dims[0], x_dims[1:], y_dims[1:]
    geometry = window(ctx, list(ctx.attr("kernel_shape")), sizes, out_sizes)
    rank, pads = geometry.rank, geometry.pads
    dtype = ctx.dtype(x)
    scaled = emit.op(
        "Div", [ctx.dy(), emit.constant(_divisors(ctx, geometry, sizes, out_sizes), dtype)]
    )
    ones = emit.constant(np.ones([channels, 1, *geometry.kernel]), dtype)
    padding = output_padding_for(geometry, sizes, out_sizes)
    # ceil_mode windows can reach past the end pads: crop what they reached there.
    ends = [pads[rank + i] + max(0, -padding[i]) for i in range(rank)]
    spread = emit.op(
        "ConvTranspose",
        [scaled, ones],
        strides=geometry.strides,
        dilations=geometry.dilations,
        pads=pads[:rank] + ends,
        output_padding=[max(0, p) for p in padding],
        group=channels,
    )
    return [spread]


@gradient("GlobalAveragePool")
def _global_average_pool(ctx: GradientContext) -> list[str | None]:
    x, y, emit = ctx.input(0), ctx.node.output[0], ctx.emit
    count = emit.op(
        "Cast",
        [emit.op("Div", [emit.op("Size", [x]), emit.op("Size", [y])])],
        to=int(ctx.table.elem_type(x)),
    )
    spread = emit.op("Expand", [ctx.dy(), ctx.shape_of(x)])
    return [emit.op("Div", [spread, count])]


@gradient("GlobalMaxPool")
def _global_max_pool(ctx: GradientContext) -> list[str | None]:
    """To every element equal to its channel's maximum (ties share it, as in PyTorch's amax)."""
    x = ctx.input(0)
    axes = list(range(2, ctx.rank(x)))
    return [share_among_extremes(ctx, x, ctx.node.output[0], ctx.dy(), axes)]
