"""Elementwise arithmetic with numpy broadcasting, and the ops that pass values through.

Every gradient of a broadcasting op is summed back to its input's shape (``reduce_to``).
"""

from __future__ import annotations

import numpy as np

from onnxslim.distill.autodiff.registry import GradientContext, gradient

__all__: list[str] = []


def _reduced(ctx: GradientContext, position: int, grad: str) -> str | None:
    if not ctx.wanted(position):
        return None
    return ctx.reduce_to(grad, ctx.input(position), ctx.node.output[0])


@gradient("Add", inputs=(0, 1))
def _add(ctx: GradientContext) -> list[str | None]:
    return [_reduced(ctx, 0, ctx.dy()), _reduced(ctx, 1, ctx.dy())]


@gradient("Sub", inputs=(0, 1))
def _sub(ctx: GradientContext) -> list[str | None]:
    db = _reduced(ctx, 1, ctx.emit.op("Neg", [ctx.dy()])) if ctx.wanted(1) else None
    return [_reduced(ctx, 0, ctx.dy()), db]


@gradient("Sum", inputs=None)
def _sum(ctx: GradientContext) -> list[str | None]:
    return [_reduced(ctx, i, ctx.dy()) for i in range(len(ctx.node.input))]


@gradient("Mul", inputs=(0, 1))
def _mul(ctx: GradientContext) -> list[str | None]:
    a, b = ctx.input(0), ctx.input(1)
    emit, dy = ctx.emit, ctx.dy()
    da = _reduced(ctx, 0, emit.op("Mul", [dy, b])) if ctx.wanted(0) else None
    db = _reduced(ctx, 1, emit.op("Mul", [dy, a])) if ctx.wanted(1) else None
    return [da, db]


@gradient("Div", inputs=(0, 1))
def _div(ctx: GradientContext) -> list[str | None]:
    b, y = ctx.input(1), ctx.node.output[0]
    emit, dy = ctx.emit, ctx.dy()
    da = _reduced(ctx, 0, emit.op("Div", [dy, b])) if ctx.wanted(0) else None
    db = None
    if ctx.wanted(1):  # d(a/b)/db = -a/b² = -y/b
        db = _reduced(ctx, 1, emit.op("Neg", [emit.op("Div", [emit.op("Mul", [dy, y]), b])]))
    return [da, db]


@gradient("Pow", inputs=(0, 1))
def _pow(ctx: GradientContext) -> list[str | None]:
    x, p, y = ctx.input(0), ctx.input(1), ctx.node.output[0]
    emit, dy = ctx.emit, ctx.dy()
    if ctx.dtype(p) != ctx.dtype(x):
        p = emit.op("Cast", [p], to=int(ctx.table.elem_type(x)))
    dx = None
    if ctx.wanted(0):
        exponent = ctx.table.value(ctx.input(1))
        if exponent is not None and exponent.size == 1 and float(exponent) == 2.0:
            slope = emit.op("Mul", [x, ctx.scalar(2.0, x)])
        else:
            lowered = emit.op("Pow", [x, emit.op("Sub", [p, ctx.scalar(1.0, x)])])
            slope = emit.op("Mul", [p, lowered])
        dx = _reduced(ctx, 0, emit.op("Mul", [dy, slope]))
    dp = None
    if ctx.wanted(1):
        dp = _reduced(ctx, 1, emit.op("Mul", [dy, emit.op("Mul", [y, emit.op("Log", [x])])]))
    return [dx, dp]


@gradient("Sqrt")
def _sqrt(ctx: GradientContext) -> list[str | None]:
    y = ctx.node.output[0]
    half = ctx.emit.op("Mul", [ctx.dy(), ctx.scalar(0.5, y)])
    return [ctx.emit.op("Div", [half, y])]


@gradient("Exp")
def _exp(ctx: GradientContext) -> list[str | None]:
    return [ctx.emit.op("Mul", [ctx.dy(), ctx.node.output[0]])]


@gradient("Log")
def _log(ctx: GradientContext) -> list[str | None]:
    return [ctx.emit.op("Div", [ctx.dy(), ctx.input(0)])]


@gradient("Neg")
def _neg(ctx: GradientContext) -> list[str | None]:
    return [ctx.emit.op("Neg", [ctx.dy()])]


@gradient("Reciprocal")
def _reciprocal(ctx: GradientContext) -> list[str | None]:
    y = ctx.node.output[0]
    squared = ctx.emit.op("Mul", [y, y])
    return [ctx.emit.op("Neg", [ctx.emit.op("Mul", [ctx.dy(), squared])])]


@gradient("Abs")
def _abs(ctx: GradientContext) -> list[str | None]:
    return [ctx.emit.op("Mul", [ctx.dy(), ctx.emit.op("Sign", [ctx.input(0)])])]


@gradient("Identity")
def _identity(ctx: GradientContext) -> list[str | None]:
    return [ctx.dy()]


@gradient("Dropout")
def _dropout(ctx: GradientContext) -> list[str | None]:
    training = ctx.input(2)
    if training is not None:
        value = ctx.table.value(training)
        if value is None or bool(np.asarray(value).any()):
            raise ctx.fail("only inference-mode Dropout (training_mode false) is supported")
    return [ctx.dy()]


@gradient("Cast")
def _cast(ctx: GradientContext) -> list[str | None]:
    source = ctx.input(0)
    if not ctx.table.is_float(source):
        return [None]
    return [ctx.emit.op("Cast", [ctx.dy()], to=int(ctx.table.elem_type(source)))]


@gradient("Where", inputs=(1, 2))
def _where(ctx: GradientContext) -> list[str | None]:
    condition, y = ctx.input(0), ctx.node.output[0]
    emit, dy = ctx.emit, ctx.dy()
    taken = other = None
    if ctx.wanted(1):
        taken = _reduced(ctx, 1, ctx.masked(dy, condition, y))
    if ctx.wanted(2):
        other = _reduced(ctx, 2, ctx.masked(dy, emit.op("Not", [condition]), y))
    return [None, taken, other]


@gradient("Round")
def _round(ctx: GradientContext) -> list[str | None]:
    """Zero almost everywhere, except in fake quantization, where the straight-through
    estimator treats the rounding as the identity."""
    return [ctx.dy() if ctx.straight_through else None]
