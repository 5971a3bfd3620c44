"""MatMul (numpy semantics: 1-D operands, batch broadcasting) and Gemm."""

from __future__ import annotations

from onnxslim.distill.autodiff.registry import GradientContext, gradient, reduce_to_shape
from onnxslim.distill.autodiff.tensors import Dim

__all__: list[str] = []


def _swap_last_two(ctx: GradientContext, tensor: str, rank: int) -> str:
    perm = [*range(rank - 2), rank - 1, rank - 2]
    return ctx.emit.op("Transpose", [tensor], perm=perm)


def _broadcast_batch(a: list[Dim], b: list[Dim]) -> list[Dim]:
    """The batch dims of a MatMul's result (numpy broadcasting of ``a`` and ``b``)."""
    width = max(len(a), len(b))
    a, b = [1] * (width - len(a)) + a, [1] * (width - len(b)) + b
    return [y if x == 1 else x if y == 1 or x == y else None for x, y in zip(a, b, strict=True)]


@gradient("MatMul", inputs=(0, 1))
def _matmul(ctx: GradientContext) -> list[str | None]:
    a, b = ctx.input(0), ctx.input(1)
    emit = ctx.emit
    a_shape, b_shape = ctx.table.shape(a), ctx.table.shape(b)
    if a_shape is None or b_shape is None:
        raise ctx.fail("the ranks of both operands must be known")
    dy = ctx.dy()
    # 1-D operands: work on their 2-D forms, with the matching unit axis in dy.
    if len(a_shape) == 1:
        a_shape = [1, *a_shape]
        a = emit.unsqueeze(a, [0])
        dy = emit.unsqueeze(dy, [-2] if len(b_shape) > 1 else [0])
    if len(b_shape) == 1:
        b_shape = [*b_shape, 1]
        b = emit.unsqueeze(b, [-1])
        dy = emit.unsqueeze(dy, [-1])
    batch = _broadcast_batch(a_shape[:-2], b_shape[:-2])
    # the contracted and output widths, from whichever operand knows them
    inner = next((d for d in (a_shape[-1], b_shape[-2]) if isinstance(d, int)), a_shape[-1])
    width = b_shape[-1]
    a_shape, b_shape = [*a_shape[:-1], inner], [*b_shape[:-2], inner, width]
    da = db = None
    if ctx.wanted(0):
        da = emit.op("MatMul", [dy, _swap_last_two(ctx, b, len(b_shape))])
        da = _to_operand(ctx, da, [*batch, a_shape[-2], a_shape[-1]], 0)
    if ctx.wanted(1):
        if (
            len(b_shape) == 2
            and len(a_shape) > 2
            and isinstance(inner, int)
            and isinstance(width, int)
        ):
            # A weight shared by every batch row: one 2-D product instead of a batched one
            # summed afterwards.
            rows = emit.op("Reshape", [a, emit.ints([-1, a_shape[-1]])])
            grads = emit.op("Reshape", [dy, emit.ints([-1, b_shape[-1]])])
            db = emit.op("Gemm", [rows, grads], transA=1)
            db = _to_operand(ctx, db, list(b_shape), 1)
        else:
            db = emit.op("MatMul", [_swap_last_two(ctx, a, len(a_shape)), dy])
            db = _to_operand(ctx, db, [*batch, b_shape[-2], b_shape[-1]], 1)
    return [da, db]


def _to_operand(ctx: GradientContext, grad: str, shape: list[Dim], position: int) -> str:
    """``grad`` (of ``shape``) summed over broadcast batch dims and back to the operand's
    original rank (1-D operands were given a unit axis)."""
    operand = ctx.input(position)
    original_rank = ctx.rank(operand)
    if original_rank == 1:
        axis = -2 if position == 0 else -1
        grad = ctx.emit.squeeze(grad, [axis])
        shape = shape[:axis] + (shape[axis + 1 :] if axis != -1 else [])
    return reduce_to_shape(ctx, grad, shape, operand)


@gradient("Gemm", inputs=(0, 1, 2))
def _gemm(ctx: GradientContext) -> list[str | None]:
    """Y = alpha A' B' + beta C, A' = A or Aᵀ, B' = B or Bᵀ: each gradient is one Gemm."""
    a, b, c = ctx.input(0), ctx.input(1), ctx.input(2)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    emit, dy = ctx.emit, ctx.dy()
    da = db = dc = None
    if ctx.wanted(0):
        if trans_a:
            da = emit.op("Gemm", [b, dy], alpha=alpha, transA=trans_b, transB=1)
        else:
            da = emit.op("Gemm", [dy, b], alpha=alpha, transB=1 - trans_b)
    if ctx.wanted(1):
        if trans_b:
            db = emit.op("Gemm", [dy, a], alpha=alpha, transA=1, transB=trans_a)
        else:
            db = emit.op("Gemm", [a, dy], alpha=alpha, transA=1 - trans_a)
    if c is not None and ctx.wanted(2):
        dc = ctx.reduce_to(dy, c, ctx.node.output[0])
        if beta != 1.0:
            dc = emit.op("Mul", [dc, ctx.scalar(beta, c)])
    return [da, db, dc]
