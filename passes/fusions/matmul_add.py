"""MatMul + Add into Gemm."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.fusions.channel_linear import float_constant, per_channel, take_output

from onnxslim.rewrite import Match, MatchResult, Rule, Scope, fail

__all__ = ["MatMulAddToGemm", "GEMM_TYPES"]

# onnxruntime's CPU Gemm has float and double kernels only.
GEMM_TYPES = (np.dtype(np.float32), np.dtype(np.float64))


class MatMulAddToGemm(Rule):
    """MatMul(A, B) + C as Gemm(A, B, C): A of rank 2, B a constant 2-D float32 or float64
    matrix, C a constant that is the same for every row."""

    anchors = ("Add",)
    min_opset = 7

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        found = [
            (matmul, node.inputs[1 - position])
            for position, tensor in enumerate(node.inputs)
            if (matmul := scope.feeder(node, tensor, "MatMul")) is not None
        ]
        if len(node.inputs) != 2 or not found:
            return fail("no operand is a MatMul's output that only it reads")
        matmul, bias = found[0]
        left, right = matmul.inputs
        weights = float_constant(right)
        if (
            weights is None
            or weights.ndim != 2
            or weights.dtype not in GEMM_TYPES
            or left.shape is None
            or len(left.shape) != 2
            or isinstance(left, gs.Constant)
        ):
            return fail("the MatMul is not a 2-D input times a constant float matrix")
        values = float_constant(bias)
        if values is None or values.dtype != weights.dtype:
            return fail("the bias is not a constant of the weights' type")
        if per_channel(values, 2, weights.shape[1]) is None:
            return fail("the bias differs between rows")
        return Match([matmul, node], matmul=matmul, bias=bias)

    def rewrite(self, match: Match) -> None:
        matmul = match.matmul
        matmul.op = "Gemm"  # MatMul has no attributes; Gemm's defaults: alpha=beta=1, no transposes
        matmul.inputs.append(match.bias)
        take_output(matmul, match.node, match.scope)
