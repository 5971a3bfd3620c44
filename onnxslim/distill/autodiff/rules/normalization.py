"""LayerNormalization, and BatchNormalization in its inference form (running statistics)."""

from __future__ import annotations

from onnxslim.distill.autodiff.registry import GradientContext, gradient

__all__: list[str] = []


@gradient("LayerNormalization", inputs=(0, 1, 2))
def _layer_normalization(ctx: GradientContext) -> list[str | None]:
    """With x̂ = (x - mean)·inv and g = dy·scale, averaged over the normalized axes:
    dx = inv (g - mean(g) - x̂ mean(g x̂)); dscale = Σ dy x̂; dbias = Σ dy. The forward node
    is asked for its mean and inverse standard deviation rather than computing them twice."""
    x, scale, bias, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.node.output[0]
    emit, dy = ctx.emit, ctx.dy()
    rank = ctx.rank(x)
    axis = int(ctx.attr("axis", -1)) % rank
    axes = list(range(axis, rank))
    mean, inv = ctx.output(1), ctx.output(2)
    elem_type = int(ctx.table.elem_type(x))
    if int(ctx.attr("stash_type", 1)) != elem_type:  # they are kept in another precision
        mean = emit.op("Cast", [mean], to=elem_type)
        inv = emit.op("Cast", [inv], to=elem_type)
    normalized = emit.op("Mul", [emit.op("Sub", [x, mean]), inv])
    dx = dscale = dbias = None
    if ctx.wanted(0):
        g = emit.op("Mul", [dy, scale])
        g_mean = emit.reduce("ReduceMean", g, axes, keepdims=True)
        projection = emit.reduce("ReduceMean", emit.op("Mul", [g, normalized]), axes, keepdims=True)
        centered = emit.op(
            "Sub", [emit.op("Sub", [g, g_mean]), emit.op("Mul", [normalized, projection])]
        )
        dx = emit.op("Mul", [centered, inv])
    if ctx.wanted(1):
        dscale = ctx.reduce_to(emit.op("Mul", [dy, normalized]), scale, y)
    if bias is not None and ctx.wanted(2):
        dbias = ctx.reduce_to(dy, bias, y)
    return [dx, dscale, dbias]


@gradient("BatchNormalization", inputs=(0, 1, 2))
def _batch_normalization(ctx: GradientContext) -> list[str | None]:
    """y = scale (x - mean) / sqrt(var + eps) + bias with the running statistics fixed: a
    per-channel affine map."""
    if int(ctx.attr("training_mode", 0)) or len([o for o in ctx.node.output if o]) > 1:
        raise ctx.fail("only the inference form (running statistics) is supported")
    x, scale, mean, variance = ctx.input(0), ctx.input(1), ctx.input(3), ctx.input(4)
    emit, dy = ctx.emit, ctx.dy()
    rank = ctx.rank(x)
    per_channel = emit.ints([-1, *[1] * (rank - 2)])
    shifted = emit.op("Add", [variance, ctx.scalar(float(ctx.attr("epsilon", 1e-5)), x)])
    inv = emit.op("Reshape", [emit.op("Reciprocal", [emit.op("Sqrt", [shifted])]), per_channel])
    axes = [0, *range(2, rank)]
    dx = dscale = dbias = None
    if ctx.wanted(0):
        dx = emit.op("Mul", [dy, emit.op("Mul", [emit.op("Reshape", [scale, per_channel]), inv])])
    if ctx.wanted(1):
        normalized = emit.op(
            "Mul", [emit.op("Sub", [x, emit.op("Reshape", [mean, per_channel])]), inv]
        )
        dscale = emit.reduce("ReduceSum", emit.op("Mul", [dy, normalized]), axes, keepdims=False)
    if ctx.wanted(2):
        dbias = emit.reduce("ReduceSum", dy, axes, keepdims=False)
    return [dx, dscale, dbias]
