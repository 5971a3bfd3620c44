"""Gather (embedding lookups and single positions) and GatherElements.

The gradient of a lookup adds each gathered row's gradient into a zero table at the rows it
came from: ScatterND / ScatterElements with reduction ``add``, so a token that appears twice
in a batch gets both contributions (opset 16+).
"""

from __future__ import annotations

import numpy as np

from onnxslim.distill.autodiff.registry import GradientContext, gradient

__all__: list[str] = []


def _non_negative(ctx: GradientContext, indices: str, data: str, axis: int) -> str:
    """``indices`` with negative entries counted from the end of ``data``'s ``axis``."""
    value = ctx.table.value(indices)
    if value is not None and (value >= 0).all():
        return indices
    emit = ctx.emit
    dim = emit.op("Shape", [data], start=axis, end=axis + 1)
    dim = emit.op("Cast", [dim], to=int(ctx.table.elem_type(indices)))
    zero = emit.constant(0, ctx.dtype(indices))
    wrapped = emit.op("Add", [indices, emit.op("Squeeze", [dim])])
    return emit.op("Where", [emit.op("Less", [indices, zero]), wrapped, indices])


@gradient("Gather")
def _gather(ctx: GradientContext) -> list[str | None]:
    data, indices, emit = ctx.input(0), ctx.input(1), ctx.emit
    rank = ctx.rank(data)
    index_rank = ctx.rank(indices)
    axis = int(ctx.attr("axis", 0)) % rank
    indices = _non_negative(ctx, indices, data, axis)
    positions = emit.op("Cast", [emit.unsqueeze(indices, [-1])], to=7)  # int64
    zeros = ctx.zeros_like(data)
    dy = ctx.dy()
    if axis == 0:
        return [emit.op("ScatterND", [zeros, positions, dy], reduction="add"), None]
    # Bring the gathered axis first, scatter, and put it back.
    data_perm = [axis, *range(axis), *range(axis + 1, rank)]
    grad_perm = [
        *range(axis, axis + index_rank),
        *range(axis),
        *range(axis + index_rank, rank + index_rank - 1),
    ]
    moved = emit.op("Transpose", [zeros], perm=data_perm)
    scattered = emit.op(
        "ScatterND", [moved, positions, emit.op("Transpose", [dy], perm=grad_perm)], reduction="add"
    )
    return [emit.op("Transpose", [scattered], perm=[int(i) for i in np.argsort(data_perm)]), None]


@gradient("GatherElements")
def _gather_elements(ctx: GradientContext) -> list[str | None]:
    data, indices, emit = ctx.input(0), ctx.input(1), ctx.emit
    axis = int(ctx.attr("axis", 0)) % ctx.rank(data)
    indices = _non_negative(ctx, indices, data, axis)
    scattered = emit.op(
        "ScatterElements", [ctx.zeros_like(data), indices, ctx.dy()], axis=axis, reduction="add"
    )
    return [scattered, None]
