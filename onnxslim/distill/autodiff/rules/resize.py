"""Resize, any mode: nearest, linear, cubic, with every coordinate transformation.

For a fixed size, Resize is linear in its input and separable: along each resized axis it
multiplies by an interpolation matrix M (out × in). The gradient multiplies by Mᵀ. Rather
than re-deriving every mode's coordinate arithmetic, M is measured: onnxruntime resizes the
identity matrix along that axis with the node's own attributes, at build time. Sizes must be
static; ``tf_crop_and_resize`` (which mixes in a constant) is not supported.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from onnxslim.distill.autodiff.registry import GradientContext, gradient

__all__: list[str] = []


def _interpolation_matrix(
    ctx: GradientContext, axis: int, size: int, out_size: int, rank: int
) -> np.ndarray:
    """M (out_size × size) of the node along ``axis``, measured with onnxruntime."""
    from onnxslim.runtime import create_session

    carrier = 0 if axis != 0 else 1  # another axis holds the basis vectors
    dims = [1] * rank
    dims[axis], dims[carrier] = size, size
    probe = np.zeros(dims, np.float32)
    index = [0] * rank
    for i in range(size):
        index[axis] = index[carrier] = i
        probe[tuple(index)] = 1
    attrs = {k: v for k, v in ctx.attrs.items() if k not in ("axes", "keep_aspect_ratio_policy")}
    if ctx.input(3) is not None:
        sizes = list(dims)
        sizes[axis] = out_size
        constants = [numpy_helper.from_array(np.array(sizes, np.int64), "sizes")]
        inputs = ["x", "", "", "sizes"]
    else:
        scales = np.ones(rank, np.float32)
        scales[axis] = _scales(ctx, rank)[axis]
        constants = [numpy_helper.from_array(scales, "scales")]
        inputs = ["x", "", "scales"]
    elem = helper.np_dtype_to_tensor_dtype(probe.dtype)
    graph = helper.make_graph(
        [helper.make_node("Resize", inputs, ["y"], **attrs)],
        "resize_probe",
        [helper.make_tensor_value_info("x", elem, dims)],
        [helper.make_tensor_value_info("y", elem, None)],
        constants,
    )
    opsets = [helper.make_opsetid("", ctx.emit.opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    out = create_session(model.SerializeToString()).run(None, {"x": probe})[0]
    out = np.moveaxis(out, (carrier, axis), (0, 1)).reshape(size, -1)
    if out.shape[1] != out_size:
        raise ctx.fail(f"resizing axis {axis} alone gave {out.shape[1]} elements, not {out_size}")
    return out.T.astype(ctx.dtype(ctx.input(0)))


def _scales(ctx: GradientContext, rank: int) -> np.ndarray:
    scales = ctx.constant(ctx.input(2), "scales").astype(np.float64).reshape(-1)
    axes = ctx.attr("axes")
    if axes is None:
        return scales
    full = np.ones(rank)
    full[[a % rank for a in axes]] = scales
    return full


@gradient("Resize")
def _resize(ctx: GradientContext) -> list[str | None]:
    x, y, emit = ctx.input(0), ctx.node.output[0], ctx.emit
    if ctx.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        raise ctx.fail("tf_crop_and_resize is not supported")
    if ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise ctx.fail("only keep_aspect_ratio_policy=stretch is supported")
    sizes, out_sizes = ctx.static_shape(x), ctx.static_shape(y)
    rank = len(sizes)
    grad = ctx.dy()
    for axis in range(rank):
        if sizes[axis] == out_sizes[axis] and (
            ctx.input(3) is not None or _scales(ctx, rank)[axis] == 1
        ):
            continue
        matrix = _interpolation_matrix(ctx, axis, sizes[axis], out_sizes[axis], rank)
        if axis == rank - 1:
            grad = emit.op("MatMul", [grad, emit.constant(matrix, matrix.dtype)])
        elif axis == rank - 2:
            grad = emit.op("MatMul", [emit.constant(matrix.T.copy(), matrix.dtype), grad])
        else:
            perm = [*range(axis), *range(axis + 1, rank), axis]
            moved = emit.op("Transpose", [grad], perm=perm)
            moved = emit.op("MatMul", [moved, emit.constant(matrix, matrix.dtype)])
            grad = emit.op("Transpose", [moved], perm=[int(i) for i in np.argsort(perm)])
    return [grad, None, None, None]
