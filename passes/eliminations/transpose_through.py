"""Transposes that meet across an elementwise op, a Softmax or a reduction: fewer of them.

Layout conversions come in pairs around ops that do not care about layout: NHWC -> Relu ->
NCHW, ``Transpose(a) + Transpose(b)``, ``ReduceMean(Transpose(x), [2, 3])``. Such an op can
run on the untransposed tensors instead (constants permuted to match, axes renumbered), and
the permutations then compose with the Transpose after it, or vanish where the op's output
comes out in order anyway (a reduction over the moved axes).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.rewrite import ELEMENTWISE_OPS, Match, MatchResult, Rule, Scope, fail

__all__ = ["TransposeThrough", "REDUCE_OPS", "inverse_perm", "is_identity_perm", "transpose_perm"]

SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax"})
# Reductions, with the opset from which their axes are an input.
REDUCE_OPS = {
    "ReduceMean": 18,
    "ReduceSum": 13,
    "ReduceMax": 18,
    "ReduceMin": 18,
    "ReduceProd": 18,
    "ReduceL1": 18,
    "ReduceL2": 18,
    "ReduceSumSquare": 18,
    "ReduceLogSumExp": 18,
}


def is_identity_perm(perm: list[int]) -> bool:
    """Whether a permutation keeps every axis in place."""
    return list(perm) == list(range(len(perm)))


def inverse_perm(perm: list[int]) -> list[int]:
    inverse = [0] * len(perm)
    for position, axis in enumerate(perm):
        inverse[axis] = position
    return inverse


def transpose_perm(node: gs.Node, scope: Scope) -> list[int] | None:
    """A Transpose's permutation, the reversal it means without one (None: rank unknown)."""
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(a) for a in perm]
    rank = scope.rank(node.inputs[0])
    return None if rank is None else list(reversed(range(rank)))


class TransposeThrough(Rule):
    """An elementwise op, Softmax or reduction whose tensor operands all come from Transposes
    of one permutation (read by it alone), its other operands constants: it runs on the
    untransposed tensors, and what is left of the permutation is one Transpose after it,
    composed with the Transpose that reads it (if one alone does), or none. Fires only where
    that leaves fewer Transposes."""

    anchors = (*sorted(ELEMENTWISE_OPS), *sorted(SOFTMAX_OPS), *REDUCE_OPS)

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        if len(node.outputs) != 1:
            return fail("it has several outputs")
        data = self._data_inputs(node)
        feeders = [scope.feeder(node, node.inputs[i], "Transpose") for i in data]
        if not feeders or any(f is None for f in feeders):
            return fail("its tensor operands are not all Transposes that only it reads")
        perms = [transpose_perm(f, scope) for f in feeders]
        perm = perms[0]
        if perm is None or any(p != perm for p in perms):
            return fail("its Transposes differ or their rank is unknown")
        constants = {}
        for index, tensor in enumerate(node.inputs):
            if index in data or not tensor.name:
                continue
            value = scope.constant(tensor)
            if value is None or value.ndim > len(perm):
                return fail("an operand is neither a Transpose nor a constant it can permute")
            constants[index] = value
        remapped = self._remapped(node, perm, scope)
        if remapped is None:
            return fail("its axes are not known constants")
        attrs, axes, after = remapped
        reader = scope.read_once(node.outputs[0], "Transpose")
        following = transpose_perm(reader, scope) if reader is not None else None
        if following is not None and len(following) == len(after):
            after = [after[axis] for axis in following]
        else:
            reader = None
        remaining = int(after != list(range(len(after))))
        if remaining >= len(set(map(id, feeders))) + (reader is not None):
            return fail("it would keep as many Transposes")
        return Match(
            [*feeders, node] + ([reader] if reader is not None else []),
            feeders=feeders,
            perm=perm,
            constants=constants,
            attrs=attrs,
            axes=axes,
            after=after,
            reader=reader,
        )

    @staticmethod
    def _data_inputs(node: gs.Node) -> list[int]:
        """The positions of the operands that carry the tensor (the rest are parameters)."""
        if node.op in ELEMENTWISE_OPS:
            return [
                i
                for i, t in enumerate(node.inputs)
                if t.name and isinstance(t, gs.Variable) and not _is_constant_node(t)
            ]
        return [0]

    @staticmethod
    def _remapped(
        node: gs.Node, perm: list[int], scope: Scope
    ) -> tuple[dict, list[int] | None, list[int]] | None:
        """(new attributes, new axes input or None, the permutation the op's output then
        needs) for the op run on the untransposed tensor."""
        rank = len(perm)
        if node.op in ELEMENTWISE_OPS:
            return {}, None, perm
        if node.op in SOFTMAX_OPS:
            if scope.opset < 13:
                return None  # before 13 the axis flattens what follows it
            axis = int(node.attrs.get("axis", -1))
            return {"axis": perm[axis % rank]}, None, perm
        given, axes = scope.ints_param(node, "axes", 1, REDUCE_OPS[node.op])
        if given and axes is None:
            return None
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return None
            axes = list(range(rank))
        axes = sorted({a % rank for a in axes})
        moved = sorted(perm[a] for a in axes)
        if node.attrs.get("keepdims", 1):
            return {}, moved, perm
        kept = [a for a in range(rank) if a not in moved]
        after = [kept.index(perm[a]) for a in range(rank) if a not in axes]
        return {}, moved, after

    def rewrite(self, match: Match) -> None:
        node, scope, perm = match.node, match.scope, match.perm
        inverse = inverse_perm(perm)
        for feeder in match.feeders:
            for index, tensor in enumerate(node.inputs):
                if tensor is feeder.outputs[0]:
                    node.inputs[index] = feeder.inputs[0]
        for index, value in match.constants.items():
            if value.size == 1:
                continue  # broadcasts alike in any layout
            full = value.reshape((1,) * (len(perm) - value.ndim) + value.shape)
            name = f"{node.inputs[index].name}_permuted"
            node.inputs[index] = scope.new_constant(
                name, np.ascontiguousarray(full.transpose(inverse))
            )
        node.attrs.update(match.attrs)
        if match.axes is not None:
            scope.set_ints_param(node, "axes", 1, REDUCE_OPS[node.op], match.axes)
        for feeder in {id(f): f for f in match.feeders}.values():
            scope.detach(feeder)
        output = node.outputs[0]
        reader = match.reader
        identity = is_identity_perm(match.after)
        if reader is not None:
            output.shape = None  # now in the untransposed layout
            if identity and scope.can_bypass(reader, output):
                scope.bypass(reader, output)
            else:
                reader.attrs["perm"] = match.after
        elif not identity:
            moved = gs.Variable(scope.fresh_name(f"{output.name}_untransposed"), output.dtype)
            node.outputs[0] = moved
            transpose = gs.Node(
                "Transpose",
                name=scope.fresh_node_name(f"{node.name or output.name}_Transpose"),
                attrs={"perm": match.after},
                inputs=[moved],
                outputs=[output],
            )
            scope.add_node(scope.graph_of(node), transpose)


def _is_constant_node(tensor: gs.Tensor) -> bool:
    producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    return producer is not None and producer.op == "Constant"
