"""Conv and ConvTranspose, grouped and depthwise, any strides, pads and dilations.

A convolution's data gradient is the transposed convolution with the same weight (and a
transposed convolution's is the convolution); ``output_padding`` restores the rows a stride
skipped. The weight gradient is itself a convolution: of the input with the output gradient
as the kernel, batch and channel axes swapped so the sum over samples becomes the sum over
input channels, strides and dilations exchanged, and groups laid side by side.
Channels and spatial sizes must be static; the batch may be symbolic.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxslim.distill.autodiff.registry import GradientContext, gradient

__all__: list[str] = []


@dataclass(frozen=True)
class Geometry:
    """How a window slides (a Conv's, a pool's, or the Conv a ConvTranspose is the adjoint
    of): kernel, strides, dilations, explicit pads and groups."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: list[int]  # begins then ends, as in ONNX
    group: int

    @property
    def rank(self) -> int:
        return len(self.kernel)

    def conv_attrs(self) -> dict:
        return dict(
            strides=self.strides, dilations=self.dilations, pads=self.pads, group=self.group
        )


def channels_and_sizes(ctx: GradientContext, name: str) -> list[int]:
    shape = ctx.table.shape(name)
    if shape is None or not all(isinstance(d, int) for d in shape[1:]):
        raise ctx.fail(f"channels and spatial sizes must be static, '{name}' is {shape}")
    return list(shape[1:])


def _same_pads(total: list[int], upper: bool) -> list[int]:
    begins = [t // 2 if upper else t - t // 2 for t in total]
    return begins + [t - b for t, b in zip(total, begins, strict=True)]


def auto_pad(ctx: GradientContext) -> str:
    return ctx.attr("auto_pad", "NOTSET")


def explicit_pads(
    ctx: GradientContext,
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    sizes: list[int],
    out_sizes: list[int],
) -> list[int]:
    """The pads (begins, then ends) of a convolution or pooling window sliding over
    ``sizes`` to ``out_sizes``, whether given as ``pads`` or by ``auto_pad``."""
    rank = len(kernel)
    mode = auto_pad(ctx)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        total = [
            max(0, (o - 1) * s + (k - 1) * d + 1 - i)
            for i, o, k, s, d in zip(sizes, out_sizes, kernel, strides, dilations, strict=True)
        ]
        return _same_pads(total, mode == "SAME_UPPER")
    if mode == "VALID":
        return [0] * (2 * rank)
    return list(ctx.attr("pads", [0] * (2 * rank)))


def window(
    ctx: GradientContext, kernel: list[int], sizes: list[int], out_sizes: list[int]
) -> Geometry:
    """The geometry of a node sliding ``kernel`` over ``sizes`` to ``out_sizes``."""
    rank = len(kernel)
    strides = list(ctx.attr("strides", [1] * rank))
    dilations = list(ctx.attr("dilations", [1] * rank))
    pads = explicit_pads(ctx, kernel, strides, dilations, sizes, out_sizes)
    return Geometry(kernel, strides, dilations, pads, int(ctx.attr("group", 1)))


def _geometry(
    ctx: GradientContext, weight_shape: list[int], conv_in: list[int], conv_out: list[int]
) -> Geometry:
    return window(ctx, list(ctx.attr("kernel_shape", weight_shape[2:])), conv_in, conv_out)


def output_padding_for(geometry: Geometry, conv_in: list[int], conv_out: list[int]) -> list[int]:
    """What a ConvTranspose from ``conv_out`` sizes needs to give back exactly ``conv_in``
    sizes (negative: the window reached past the end pads, as ceil_mode does)."""
    rank = geometry.rank
    return [
        conv_in[i]
        + geometry.pads[i]
        + geometry.pads[rank + i]
        - (geometry.kernel[i] - 1) * geometry.dilations[i]
        - 1
        - geometry.strides[i] * (conv_out[i] - 1)
        for i in range(rank)
    ]


def _batch_to_channels(
    ctx: GradientContext,
    tensor: str,
    channels: int,
    sizes: list[int],
    group: int,
    inner_first: bool,
) -> str:
    """[N, g·c, *sizes] as [c, g·N, *sizes] (``inner_first``: a Conv input) or [g·c, N, *sizes]
    (a Conv weight): each group's samples become that group's channels."""
    emit = ctx.emit
    rank = len(sizes)
    spatial = list(range(3, 3 + rank))
    if group == 1:
        return emit.op("Transpose", [tensor], perm=[1, 0, *range(2, 2 + rank)])
    per_group = channels // group
    split = emit.op("Reshape", [tensor, emit.ints([-1, group, per_group, *sizes])])
    if inner_first:
        moved = emit.op("Transpose", [split], perm=[2, 1, 0, *spatial])
        return emit.op("Reshape", [moved, emit.ints([per_group, -1, *sizes])])
    moved = emit.op("Transpose", [split], perm=[1, 2, 0, *spatial])
    return emit.op("Reshape", [moved, emit.ints([channels, -1, *sizes])])


def _weight_gradient(
    ctx: GradientContext,
    source: str,
    source_dims: list[int],
    grad: str,
    grad_dims: list[int],
    geometry: Geometry,
) -> str:
    """d/dW of a Conv from ``source`` ([N, *source_dims]) whose output gradient is ``grad``
    ([N, *grad_dims]); the weight is [grad channels, source channels / group, *kernel]."""
    emit, rank, group = ctx.emit, geometry.rank, geometry.group
    images = _batch_to_channels(ctx, source, source_dims[0], source_dims[1:], group, True)
    kernels = _batch_to_channels(ctx, grad, grad_dims[0], grad_dims[1:], group, False)
    product = emit.op(
        "Conv",
        [images, kernels],
        strides=geometry.dilations,
        dilations=geometry.strides,
        pads=geometry.pads,
        group=group,
    )
    reach = [
        (
            source_dims[1 + i]
            + geometry.pads[i]
            + geometry.pads[rank + i]
            - geometry.strides[i] * (grad_dims[1 + i] - 1)
            - 1
        )
        // geometry.dilations[i]
        + 1
        for i in range(rank)
    ]
    if reach != geometry.kernel:  # the last rows a stride never reached
        axes = list(range(2, 2 + rank))
        product = emit.op(
            "Slice", [product, emit.ints([0] * rank), emit.ints(geometry.kernel), emit.ints(axes)]
        )
    return emit.op("Transpose", [product], perm=[1, 0, *range(2, 2 + rank)])


def _bias_gradient(ctx: GradientContext, grad: str, rank: int) -> str:
    return ctx.emit.reduce("ReduceSum", grad, [0, *range(2, 2 + rank)], keepdims=False)


@gradient("Conv", inputs=(0, 1, 2))
def _conv(ctx: GradientContext) -> list[str | None]:
    x, w, y = ctx.input(0), ctx.input(1), ctx.node.output[0]
    x_dims, y_dims = channels_and_sizes(ctx, x), channels_and_sizes(ctx, y)
    weight_shape = ctx.static_shape(w, "weight shape")
    geometry = _geometry(ctx, weight_shape, x_dims[1:], y_dims[1:])
    emit, dy = ctx.emit, ctx.dy()
    dx = dw = db = None
    if ctx.wanted(0):
        dx = emit.op(
            "ConvTranspose",
            [dy, w],
            output_padding=output_padding_for(geometry, x_dims[1:], y_dims[1:]),
            **geometry.conv_attrs(),
        )
    if ctx.wanted(1):
        dw = _weight_gradient(ctx, x, x_dims, dy, y_dims, geometry)
    if ctx.wanted(2):
        db = _bias_gradient(ctx, dy, geometry.rank)
    return [dx, dw, db]


@gradient("ConvTranspose", inputs=(0, 1, 2))
def _conv_transpose(ctx: GradientContext) -> list[str | None]:
    """A ConvTranspose from X to Y is the adjoint of a Conv from Y to X with the same weight:
    dX is that Conv of dY, and dW that Conv's weight gradient with X as its output gradient."""
    x, w, y = ctx.input(0), ctx.input(1), ctx.node.output[0]
    x_dims, y_dims = channels_and_sizes(ctx, x), channels_and_sizes(ctx, y)
    weight_shape = ctx.static_shape(w, "weight shape")
    rank = len(weight_shape) - 2
    geometry = _geometry(ctx, weight_shape, y_dims[1:], x_dims[1:])
    mode = auto_pad(ctx)
    if "output_shape" in ctx.attrs or mode != "NOTSET":
        # Pads implied by the output size: recover them from the sizes shape inference found.
        padding = list(ctx.attr("output_padding", [0] * rank))
        total = [
            s * (i - 1) + p + (k - 1) * d + 1 - o
            for i, o, k, s, d, p in zip(
                x_dims[1:],
                y_dims[1:],
                geometry.kernel,
                geometry.strides,
                geometry.dilations,
                padding,
                strict=True,
            )
        ]
        pads = [0] * (2 * rank) if mode == "VALID" else _same_pads(total, mode != "SAME_LOWER")
        geometry = Geometry(
            geometry.kernel, geometry.strides, geometry.dilations, pads, geometry.group
        )
    emit, dy = ctx.emit, ctx.dy()
    dx = dw = db = None
    if ctx.wanted(0):
        dx = emit.op("Conv", [dy, w], **geometry.conv_attrs())
    if ctx.wanted(1):
        dw = _weight_gradient(ctx, dy, y_dims, x, x_dims, geometry)
    if ctx.wanted(2):
        db = _bias_gradient(ctx, dy, rank)
    return [dx, dw, db]
