"""What the two Gelu rules share: the tail 0.5 * x * (1 + f(x)), and their rewrite."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxslim.rewrite import Match, Rule, Scope

__all__ = ["GeluRule", "scaled_operand", "one_plus_times_half_x"]


class GeluRule(Rule):
    """Base of the Gelu fusions (opset 20): a match gives ``x``, the ``output`` and the
    ``approximate`` mode."""

    min_opset = 20
    produces = "Gelu"

    def rewrite(self, match: Match) -> None:
        attrs = {"approximate": match.approximate}
        match.scope.replace(match.nodes, "Gelu", [match.x], [match.output], attrs)


def scaled_operand(
    multiply: gs.Node | None, factor: float, rank: int | None, scope: Scope
) -> gs.Tensor | None:
    """The operand that Mul node ``multiply`` multiplies by the scalar constant ``factor``."""
    if not scope.is_op(multiply, "Mul") or len(multiply.inputs) != 2:
        return None
    for operand, other in (multiply.inputs, multiply.inputs[::-1]):
        if scope.is_scalar(other, factor, rank):
            return operand
    return None


def one_plus_times_half_x(
    tensor: gs.Tensor, x: gs.Tensor, rank: int | None, scope: Scope
) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """Add(tensor, 1) multiplied by x and by 0.5: (x * a) * 0.5, (a * 0.5) * x, (0.5 * x) * a,
    in any operand order. Returns the result and the nodes from the Add on."""
    add = scope.read_once(tensor, "Add")
    if add is None or not scope.is_scalar(scope.other_input(add, tensor), 1.0, rank):
        return None
    nodes, current = [add], add.outputs[0]
    need_x = need_half = True
    while need_x or need_half:
        multiply = scope.read_once(current, "Mul")
        other = scope.other_input(multiply, current)
        if other is None:
            return None
        half_x = scope.feeder(multiply, other, "Mul", once=True) if need_x and need_half else None
        if need_x and other is x:
            need_x = False
        elif need_half and scope.is_scalar(other, 0.5, rank):
            need_half = False
        elif half_x is not None and scaled_operand(half_x, 0.5, rank, scope) is x:
            need_x = need_half = False
            nodes.append(half_x)
        else:
            return None
        nodes.append(multiply)
        current = multiply.outputs[0]
    return current, nodes
