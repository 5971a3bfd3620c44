"""A 2-D Transpose into the Gemm (or 2-D MatMul) that reads it: a transA/transB flag."""

from __future__ import annotations

import onnx_graphsurgeon as gs
from onnxslim.passes.fusions.matmul_add import GEMM_TYPES

from onnxslim.rewrite import Match, MatchResult, Rule, Scope, fail, float_dtype

__all__ = ["TransposeIntoGemm"]


class TransposeIntoGemm(Rule):
    """``Gemm(Transpose(A), B)`` (or ``MatMul`` of two 2-D float tensors, which becomes a
    Gemm) where only it reads the transposed matrix: the Gemm reads ``A`` with its transA (or
    transB) flag flipped, and the Transpose goes."""

    anchors = ("Gemm", "MatMul")
    min_opset = 7

    def __init__(self, matmuls: bool = True) -> None:
        self.matmuls = matmuls

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        if len(node.inputs) < 2:
            return fail("it has fewer than two operands")
        if node.op == "MatMul":
            if not self.matmuls:
                return fail("MatMuls stay MatMuls (matmul_to_gemm=False)")
            if scope.rank(node.inputs[0]) != 2 or scope.rank(node.inputs[1]) != 2:
                return fail("it is not a product of two matrices")
            dtype = float_dtype(*node.inputs)  # np.dtype(None) is float64: test None first
            if dtype is None or dtype not in GEMM_TYPES:
                return fail("Gemm has no kernel for its type")
        flipped = []
        for index in (0, 1):
            transpose = scope.feeder(node, node.inputs[index], "Transpose", once=True)
            if transpose is None or scope.rank(transpose.inputs[0]) != 2:
                continue
            if list(transpose.attrs.get("perm", [1, 0])) != [1, 0]:
                continue
            flipped.append((index, transpose))
        if not flipped:
            return fail("no operand is a 2-D Transpose that only it reads")
        return Match([node, *(t for _, t in flipped)], flipped=flipped)

    def rewrite(self, match: Match) -> None:
        node = match.node
        if node.op == "MatMul":
            node.op = "Gemm"  # no attributes: alpha = beta = 1, no transposes
        for index, transpose in match.flipped:
            flag = "transA" if index == 0 else "transB"
            node.attrs[flag] = 1 - int(node.attrs.get(flag, 0))
            node.inputs[index] = transpose.inputs[0]
            match.scope.detach(transpose)
