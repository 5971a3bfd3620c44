"""Pointwise activations: each multiplies the incoming gradient by its derivative."""

from __future__ import annotations

import math

from onnxslim.distill.autodiff.registry import GradientContext, gradient

__all__: list[str] = []


def _positive(ctx: GradientContext, x: str) -> str:
    return ctx.emit.op("Greater", [x, ctx.scalar(0.0, x)])


@gradient("Relu")
def _relu(ctx: GradientContext) -> list[str | None]:
    """Masked by the output (positive exactly where the input is), so that nothing else reads
    the input and onnxruntime can still fuse the op before with the Relu."""
    y = ctx.node.output[0]
    return [ctx.masked(ctx.dy(), _positive(ctx, y), y)]


@gradient("LeakyRelu")
def _leaky_relu(ctx: GradientContext) -> list[str | None]:
    x, emit = ctx.input(0), ctx.emit
    alpha = float(ctx.attr("alpha", 0.01))
    positive = emit.op("Cast", [_positive(ctx, x)], to=int(ctx.table.elem_type(x)))
    slope = emit.op(
        "Add", [emit.op("Mul", [positive, ctx.scalar(1.0 - alpha, x)]), ctx.scalar(alpha, x)]
    )
    return [emit.op("Mul", [ctx.dy(), slope])]


@gradient("PRelu", inputs=(0, 1))
def _prelu(ctx: GradientContext) -> list[str | None]:
    x, slope, y = ctx.input(0), ctx.input(1), ctx.node.output[0]
    emit, dy = ctx.emit, ctx.dy()
    positive, zero = _positive(ctx, x), ctx.scalar(0.0, x)
    dx = None
    if ctx.wanted(0):
        dx = emit.op("Where", [positive, dy, emit.op("Mul", [dy, slope])])
        dx = ctx.reduce_to(dx, x, y)
    dslope = None
    if ctx.wanted(1):
        dslope = emit.op("Where", [positive, zero, emit.op("Mul", [dy, x])])
        dslope = ctx.reduce_to(dslope, slope, y)
    return [dx, dslope]


@gradient("Clip")
def _clip(ctx: GradientContext) -> list[str | None]:
    """The gradient passes where the input lies within [min, max], bounds included."""
    x, emit = ctx.input(0), ctx.emit
    low = ctx.input(1) if ctx.input(1) else None
    high = ctx.input(2) if ctx.input(2) else None
    if low is None and "min" in ctx.attrs:  # opset < 11 keeps the bounds as attributes
        low = ctx.scalar(ctx.attrs["min"], x)
    if high is None and "max" in ctx.attrs:
        high = ctx.scalar(ctx.attrs["max"], x)
    masks = []
    if low is not None:
        masks.append(emit.op("GreaterOrEqual", [x, low]))
    if high is not None:
        masks.append(emit.op("LessOrEqual", [x, high]))
    if not masks:
        return [ctx.dy()]
    inside = masks[0] if len(masks) == 1 else emit.op("And", masks)
    return [ctx.masked(ctx.dy(), inside, x)]


@gradient("Sigmoid")
def _sigmoid(ctx: GradientContext) -> list[str | None]:
    y, emit = ctx.node.output[0], ctx.emit
    slope = emit.op("Mul", [y, emit.op("Sub", [ctx.scalar(1.0, y), y])])
    return [emit.op("Mul", [ctx.dy(), slope])]


@gradient("Tanh")
def _tanh(ctx: GradientContext) -> list[str | None]:
    y, emit = ctx.node.output[0], ctx.emit
    slope = emit.op("Sub", [ctx.scalar(1.0, y), emit.op("Mul", [y, y])])
    return [emit.op("Mul", [ctx.dy(), slope])]


def _gaussian(ctx: GradientContext, x: str, scale: float, variance: float) -> str:
    """``scale · exp(-x² / (2 variance))``."""
    emit = ctx.emit
    exponent = emit.op("Mul", [emit.op("Mul", [x, x]), ctx.scalar(-0.5 / variance, x)])
    return emit.op("Mul", [emit.op("Exp", [exponent]), ctx.scalar(scale, x)])


@gradient("Erf")
def _erf(ctx: GradientContext) -> list[str | None]:
    x = ctx.input(0)
    slope = _gaussian(ctx, x, 2.0 / math.sqrt(math.pi), 0.5)
    return [ctx.emit.op("Mul", [ctx.dy(), slope])]


@gradient("Gelu")
def _gelu(ctx: GradientContext) -> list[str | None]:
    x, emit = ctx.input(0), ctx.emit
    one, half = ctx.scalar(1.0, x), ctx.scalar(0.5, x)
    if ctx.attr("approximate", "none") == "tanh":
        # y = x/2 (1 + tanh(u)), u = c (x + k x³): y' = (1 + t)/2 + x/2 (1 - t²) c (1 + 3k x²)
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        square = emit.op("Mul", [x, x])
        cube_term = emit.op("Mul", [ctx.scalar(k, x), emit.op("Mul", [square, x])])
        t = emit.op("Tanh", [emit.op("Mul", [ctx.scalar(c, x), emit.op("Add", [x, cube_term])])])
        du = emit.op(
            "Mul",
            [
                ctx.scalar(c, x),
                emit.op("Add", [one, emit.op("Mul", [ctx.scalar(3 * k, x), square])]),
            ],
        )
        sech2 = emit.op("Sub", [one, emit.op("Mul", [t, t])])
        slope = emit.op(
            "Add",
            [
                emit.op("Mul", [half, emit.op("Add", [one, t])]),
                emit.op("Mul", [emit.op("Mul", [half, x]), emit.op("Mul", [sech2, du])]),
            ],
        )
    else:  # y = x Φ(x): y' = Φ(x) + x φ(x)
        cdf = emit.op(
            "Mul",
            [
                half,
                emit.op(
                    "Add",
                    [one, emit.op("Erf", [emit.op("Mul", [x, ctx.scalar(1 / math.sqrt(2), x)])])],
                ),
            ],
        )
        density = _gaussian(ctx, x, 1.0 / math.sqrt(2.0 * math.pi), 1.0)
        slope = emit.op("Add", [cdf, emit.op("Mul", [x, density])])
    return [emit.op("Mul", [ctx.dy(), slope])]


@gradient("Softplus")
def _softplus(ctx: GradientContext) -> list[str | None]:
    return [ctx.emit.op("Mul", [ctx.dy(), ctx.emit.op("Sigmoid", [ctx.input(0)])])]


def _hard_sigmoid_parts(ctx: GradientContext, x: str, alpha: float, beta: float) -> tuple[str, str]:
    """(HardSigmoid(x), the mask where it is not saturated)."""
    emit = ctx.emit
    linear = emit.op("Add", [emit.op("Mul", [x, ctx.scalar(alpha, x)]), ctx.scalar(beta, x)])
    inside = emit.op(
        "And",
        [
            emit.op("Greater", [linear, ctx.scalar(0.0, x)]),
            emit.op("Less", [linear, ctx.scalar(1.0, x)]),
        ],
    )
    return emit.op("HardSigmoid", [x], alpha=alpha, beta=beta), inside


@gradient("HardSigmoid")
def _hard_sigmoid(ctx: GradientContext) -> list[str | None]:
    x, emit = ctx.input(0), ctx.emit
    alpha = ctx.attr("alpha", 0.2)
    _, inside = _hard_sigmoid_parts(ctx, x, alpha, ctx.attr("beta", 0.5))
    return [ctx.masked(emit.op("Mul", [ctx.dy(), ctx.scalar(alpha, x)]), inside, x)]


@gradient("HardSwish")
def _hard_swish(ctx: GradientContext) -> list[str | None]:
    """y = x · HardSigmoid(x; 1/6, 1/2): y' = HardSigmoid(x) + x/6 where it is not saturated."""
    x, emit = ctx.input(0), ctx.emit
    value, inside = _hard_sigmoid_parts(ctx, x, 1.0 / 6.0, 0.5)
    ramp = ctx.masked(emit.op("Mul", [x, ctx.scalar(1.0 / 6.0, x)]), inside, x)
    return [emit.op("Mul", [ctx.dy(), emit.op("Add", [value, ramp])])]
