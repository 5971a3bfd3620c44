"""Reductions: the gradient goes back along the reduced axes (axes as attribute or input)."""

from __future__ import annotations

from onnxslim.distill.autodiff.registry import GradientContext, gradient

__all__ = ["share_among_extremes"]


def _reduced_axes(ctx: GradientContext) -> list[int] | None:
    """The reduced axes, normalized; None when the node reduces nothing (empty axes with
    noop_with_empty_axes)."""
    rank = ctx.rank(ctx.input(0))
    if "axes" in ctx.attrs:
        axes = list(ctx.attrs["axes"])
    elif ctx.input(1) is not None:
        axes = [int(a) for a in ctx.constant(ctx.input(1), "axes").reshape(-1)]
    else:
        axes = []
    if not axes:
        if int(ctx.attr("noop_with_empty_axes", 0)):
            return None
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


def _kept(ctx: GradientContext, tensor: str, axes: list[int]) -> str:
    """``tensor`` (shaped like the output) with the reduced axes back as size 1."""
    return tensor if int(ctx.attr("keepdims", 1)) else ctx.emit.unsqueeze(tensor, axes)


def _spread(ctx: GradientContext, axes: list[int]) -> str:
    return ctx.emit.op("Expand", [_kept(ctx, ctx.dy(), axes), ctx.shape_of(ctx.input(0))])


@gradient("ReduceSum")
def _reduce_sum(ctx: GradientContext) -> list[str | None]:
    axes = _reduced_axes(ctx)
    return [ctx.dy() if axes is None else _spread(ctx, axes)]


@gradient("ReduceMean")
def _reduce_mean(ctx: GradientContext) -> list[str | None]:
    axes = _reduced_axes(ctx)
    if axes is None:
        return [ctx.dy()]
    x, y, emit = ctx.input(0), ctx.node.output[0], ctx.emit
    count = emit.op("Div", [emit.op("Size", [x]), emit.op("Size", [y])])
    count = emit.op("Cast", [count], to=int(ctx.table.elem_type(x)))
    return [emit.op("Div", [_spread(ctx, axes), count])]


@gradient("ReduceSumSquare")
def _reduce_sum_square(ctx: GradientContext) -> list[str | None]:
    x, emit = ctx.input(0), ctx.emit
    axes = _reduced_axes(ctx)
    grad = ctx.dy() if axes is None else _spread(ctx, axes)
    return [emit.op("Mul", [grad, emit.op("Mul", [x, ctx.scalar(2.0, x)])])]


@gradient("ReduceL2")
def _reduce_l2(ctx: GradientContext) -> list[str | None]:
    """d‖x‖/dx = x / ‖x‖."""
    x, y, emit = ctx.input(0), ctx.node.output[0], ctx.emit
    axes = _reduced_axes(ctx)
    if axes is None:
        return [emit.op("Mul", [ctx.dy(), emit.op("Sign", [x])])]
    return [emit.op("Mul", [_spread(ctx, axes), emit.op("Div", [x, _kept(ctx, y, axes)])])]


@gradient("ReduceMax", "ReduceMin")
def _reduce_extreme(ctx: GradientContext) -> list[str | None]:
    """To the elements equal to the result; ties share it."""
    axes = _reduced_axes(ctx)
    if axes is None:
        return [ctx.dy()]
    y = _kept(ctx, ctx.node.output[0], axes)
    return [share_among_extremes(ctx, ctx.input(0), y, _kept(ctx, ctx.dy(), axes), axes)]


def share_among_extremes(ctx: GradientContext, x: str, y: str, dy: str, axes: list[int]) -> str:
    """The gradient ``dy`` of a max or min ``y`` over ``axes`` of ``x`` (both kept as size
    1), given to the elements of ``x`` equal to it, split evenly between ties."""
    emit = ctx.emit
    chosen = emit.op("Cast", [emit.op("Equal", [x, y])], to=int(ctx.table.elem_type(x)))
    ties = emit.reduce("ReduceSum", chosen, axes, keepdims=True)
    return emit.op("Mul", [chosen, emit.op("Div", [dy, ties])])
