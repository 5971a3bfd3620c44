"""Ops that move values without changing them: the gradient moves back the same way."""

from __future__ import annotations

import numpy as np

from onnxslim.distill.autodiff.registry import GradientContext, gradient

__all__: list[str] = []


def _shape_like(ctx: GradientContext, name: str) -> str:
    shape = ctx.table.static_shape(name)
    return ctx.emit.ints(shape) if shape is not None else ctx.shape_of(name)


@gradient("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(ctx: GradientContext) -> list[str | None]:
    x = ctx.input(0)
    return [ctx.emit.op("Reshape", [ctx.dy(), _shape_like(ctx, x)])]


@gradient("Transpose")
def _transpose(ctx: GradientContext) -> list[str | None]:
    perm = ctx.attr("perm")
    if perm is None:
        perm = list(reversed(range(ctx.rank(ctx.input(0)))))
    return [ctx.emit.op("Transpose", [ctx.dy()], perm=[int(i) for i in np.argsort(perm)])]


@gradient("Expand")
def _expand(ctx: GradientContext) -> list[str | None]:
    return [ctx.reduce_to(ctx.dy(), ctx.input(0), ctx.node.output[0])]


def _sizes_along(ctx: GradientContext, names: list[str], axis: int) -> str:
    """A 1-D int64 tensor of the sizes of ``names`` along ``axis``."""
    emit = ctx.emit
    sizes = []
    for name in names:
        shape = ctx.table.shape(name)
        sizes.append(shape[axis] if shape is not None and isinstance(shape[axis], int) else None)
    if all(size is not None for size in sizes):
        return emit.ints(sizes)
    parts = [
        emit.ints([size])
        if size is not None
        else emit.op("Shape", [name], start=axis, end=axis + 1)
        for name, size in zip(names, sizes, strict=True)
    ]
    return emit.op("Concat", parts, axis=0)


@gradient("Concat", inputs=None)
def _concat(ctx: GradientContext) -> list[str | None]:
    inputs = list(ctx.node.input)
    axis = int(ctx.attr("axis")) % ctx.rank(inputs[0])
    pieces = ctx.emit.op_multi(
        "Split", [ctx.dy(), _sizes_along(ctx, inputs, axis)], len(inputs), axis=axis
    )
    return [piece if ctx.wanted(i) else None for i, piece in enumerate(pieces)]


@gradient("Split")
def _split(ctx: GradientContext) -> list[str | None]:
    axis = int(ctx.attr("axis", 0))
    grads = [ctx.dy_or_zeros(i) for i in range(len(ctx.node.output))]
    return [ctx.emit.op("Concat", grads, axis=axis)]


@gradient("Slice")
def _slice(ctx: GradientContext) -> list[str | None]:
    """Zeros around the slice: a Pad of dy. Starts, axes and steps must be constants (ends
    need not be: the slice's length is dy's); steps must be positive."""
    x, emit = ctx.input(0), ctx.emit
    rank = ctx.rank(x)
    starts = ctx.constant(ctx.input(1), "starts").reshape(-1).astype(np.int64)
    axes = (
        np.arange(len(starts))
        if ctx.input(3) is None
        else ctx.constant(ctx.input(3), "axes").reshape(-1)
    )
    steps = (
        np.ones(len(starts), np.int64)
        if ctx.input(4) is None
        else ctx.constant(ctx.input(4), "steps").reshape(-1)
    )
    if (steps <= 0).any():
        raise ctx.fail("only positive steps are supported")
    shape = ctx.table.shape(x)
    dy = ctx.dy()
    begins: list[str | int] = [0] * rank
    for start, axis, step in zip(
        starts.tolist(), (axes % rank).tolist(), steps.tolist(), strict=True
    ):
        dim = shape[axis]
        if step > 1:
            dy = _spread_strided(ctx, dy, axis, step, rank)
        if isinstance(dim, int):
            begins[axis] = min(max(start + dim if start < 0 else start, 0), dim)
        else:
            begins[axis] = _clamped_start(ctx, x, axis, start)
    if all(isinstance(b, int) for b in begins):
        begin = emit.ints(begins)
    else:
        begin = emit.op(
            "Concat", [b if isinstance(b, str) else emit.ints([b]) for b in begins], axis=0
        )
    # end pads: what is left of each axis after the begin pad and the slice itself
    end = emit.op("Sub", [emit.op("Sub", [ctx.shape_of(x), begin]), emit.op("Shape", [dy])])
    pads = emit.op("Concat", [begin, end], axis=0)
    return [emit.op("Pad", [dy, pads])]


def _clamped_start(ctx: GradientContext, x: str, axis: int, start: int) -> str:
    emit = ctx.emit
    dim = emit.op("Shape", [x], start=axis, end=axis + 1)
    if start < 0:
        return emit.op("Max", [emit.op("Add", [dim, emit.ints([start])]), emit.ints([0])])
    return emit.op("Min", [emit.ints([start]), dim])


def _spread_strided(ctx: GradientContext, dy: str, axis: int, step: int, rank: int) -> str:
    """dy with ``step - 1`` zeros after each element along ``axis`` (minus the trailing
    ones): where a strided slice's elements came from."""
    emit = ctx.emit
    spaced = emit.unsqueeze(dy, [axis + 1])
    pads = [0] * (2 * (rank + 1))
    pads[rank + 1 + axis + 1] = step - 1
    spaced = emit.op("Pad", [spaced, emit.ints(pads)])
    dims = [emit.op("Shape", [dy], start=0, end=axis)] if axis else []
    length = emit.op("Mul", [emit.op("Shape", [dy], start=axis, end=axis + 1), emit.ints([step])])
    dims += [length]
    if axis + 1 < rank:
        dims.append(emit.op("Shape", [dy], start=axis + 1))
    merged = emit.op("Reshape", [spaced, emit.op("Concat", dims, axis=0)])
    trimmed = emit.op("Sub", [length, emit.ints([step - 1])])
    return emit.op("Slice", [merged, emit.ints([0]), trimmed, emit.ints([axis])])


@gradient("Pad")
def _pad(ctx: GradientContext) -> list[str | None]:
    """Padding undone by padding with the opposite (negative) amounts, i.e. cropping."""
    mode = ctx.attr("mode", "constant")
    if mode != "constant":
        raise ctx.fail(f"only constant padding is supported, not {mode}")
    emit, dy = ctx.emit, ctx.dy()
    pads = ctx.table.value(ctx.input(1))
    if pads is None:
        inputs = [dy, emit.op("Neg", [ctx.input(1)])]
        if ctx.input(3) is not None:
            inputs += ["", ctx.input(3)]
        return [emit.op("Pad", inputs)]
    # Constant pads: crop what was added, pad back what was cropped (negative pads).
    rank = ctx.rank(ctx.input(0))
    axes = (
        list(range(rank))
        if ctx.input(3) is None
        else [int(a) % rank for a in ctx.constant(ctx.input(3), "axes")]
    )
    count = len(axes)
    begins, ends = pads[:count].tolist(), pads[count:].tolist()
    if any(p > 0 for p in begins + ends):
        starts = [max(b, 0) for b in begins]
        stops = [-e if e > 0 else np.iinfo(np.int64).max for e in ends]
        dy = emit.op("Slice", [dy, emit.ints(starts), emit.ints(stops), emit.ints(axes)])
    if any(p < 0 for p in begins + ends):
        restored = [0] * (2 * rank)
        for i, axis in enumerate(axes):
            restored[axis], restored[rank + axis] = max(-begins[i], 0), max(-ends[i], 0)
        dy = emit.op("Pad", [dy, emit.ints(restored)])
    return [dy]
