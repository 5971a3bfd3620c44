"""Softmax, LogSoftmax (opset-13 form: one axis) and SoftmaxCrossEntropyLoss."""

from __future__ import annotations

import numpy as np

from onnxslim.distill.autodiff.registry import GradientContext, gradient

__all__: list[str] = []


def _axis(ctx: GradientContext) -> int:
    if ctx.emit.opset < 13:
        raise ctx.fail("opsets below 13 flatten around the axis; convert the model to 13+")
    return int(ctx.attr("axis", -1))


@gradient("Softmax")
def _softmax(ctx: GradientContext) -> list[str | None]:
    """dx = y (dy - Σ dy·y) along the axis."""
    y, emit, dy = ctx.node.output[0], ctx.emit, ctx.dy()
    dot = emit.reduce("ReduceSum", emit.op("Mul", [dy, y]), [_axis(ctx)], keepdims=True)
    return [emit.op("Mul", [y, emit.op("Sub", [dy, dot])])]


def _log_softmax_backward(ctx: GradientContext, y: str, dy: str, axis: int) -> str:
    """dx = dy - softmax(x) Σ dy along the axis, where y = log_softmax(x)."""
    emit = ctx.emit
    total = emit.reduce("ReduceSum", dy, [axis], keepdims=True)
    return emit.op("Sub", [dy, emit.op("Mul", [emit.op("Exp", [y]), total])])


@gradient("LogSoftmax")
def _log_softmax(ctx: GradientContext) -> list[str | None]:
    return [_log_softmax_backward(ctx, ctx.node.output[0], ctx.dy(), _axis(ctx))]


@gradient("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(ctx: GradientContext) -> list[str | None]:
    """d loss / d scores = (softmax - one_hot(labels)) times the loss's own gradient, per
    counted position (positions with ``ignore_index`` get none)."""
    if ctx.input(2) is not None:
        raise ctx.fail("class weights are not supported")
    scores, labels = ctx.input(0), ctx.input(1)
    emit = ctx.emit
    log_prob = ctx.output(1)
    rank = ctx.rank(scores)
    classes = ctx.table.shape(scores)[1]
    if isinstance(classes, int):
        class_ids = emit.constant(np.arange(classes).reshape([1, -1] + [1] * (rank - 2)), np.int64)
    else:
        depth = emit.op("Shape", [scores], start=1, end=2)
        class_ids = emit.op(
            "Range",
            [emit.constant(0, np.int64), emit.op("Squeeze", [depth]), emit.constant(1, np.int64)],
        )
        class_ids = emit.op("Reshape", [class_ids, emit.ints([1, -1] + [1] * (rank - 2))])
    ignore = ctx.attr("ignore_index")
    counted = None
    if ignore is not None:
        counted = emit.op("Not", [emit.op("Equal", [labels, emit.constant(ignore, np.int64)])])
    one_hot = emit.op("Equal", [emit.unsqueeze(labels, [1]), class_ids])
    one_hot = emit.op("Cast", [one_hot], to=int(ctx.table.elem_type(scores)))
    grad = emit.op("Sub", [emit.op("Exp", [log_prob]), one_hot])
    weight = None
    if counted is not None:
        weight = emit.op("Cast", [counted], to=int(ctx.table.elem_type(scores)))
    reduction = ctx.attr("reduction", "mean")
    dy = ctx.dy(0)
    if reduction == "none":
        scale = dy if weight is None else emit.op("Mul", [dy, weight])
    else:
        scale = dy if weight is None else emit.op("Mul", [weight, dy])
        if reduction == "mean":
            if weight is None:
                count = emit.op(
                    "Cast", [emit.op("Size", [ctx.input(1)])], to=int(ctx.table.elem_type(scores))
                )
            else:
                count = emit.reduce("ReduceSum", weight, None, keepdims=False)
            scale = emit.op("Div", [scale, count])
    if ctx.rank(ctx.input(1)) > 0 and (reduction == "none" or weight is not None):
        scale = emit.unsqueeze(scale, [1])
    grad = emit.op("Mul", [grad, scale])
    if ctx.dy(1) is not None:  # the log-probabilities' own gradient
        grad = emit.op("Add", [grad, _log_softmax_backward(ctx, log_prob, ctx.dy(1), 1)])
    return [grad, None]
