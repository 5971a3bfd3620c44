"""What a rewrite asks of a node: its op and domain, whether it is deterministic, its name in
notes."""

from __future__ import annotations

from collections.abc import Collection

import onnx_graphsurgeon as gs

__all__ = [
    "STANDARD_DOMAINS",
    "NONDETERMINISTIC_OPS",
    "ELEMENTWISE_OPS",
    "is_op",
    "describe_nodes",
]

# The default ONNX domain, as gs and exporters spell it.
STANDARD_DOMAINS = ("", "ai.onnx", None)

# Ops whose every run draws new random numbers (Dropout too, in training mode): folding or
# merging them would freeze one draw.
NONDETERMINISTIC_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
)

# Ops that compute each output element from the elements at the same place of their inputs
# (broadcast numpy-style): they commute with any permutation of the axes of all operands.
ELEMENTWISE_OPS = frozenset(
    {
        "Abs",
        "Add",
        "And",
        "Cast",
        "Ceil",
        "Div",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Floor",
        "Greater",
        "GreaterOrEqual",
        "HardSigmoid",
        "IsNaN",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "Max",
        "Min",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "PRelu",
        "Pow",
        "Reciprocal",
        "Relu",
        "Round",
        "Selu",
        "Sigmoid",
        "Sign",
        "Softplus",
        "Sqrt",
        "Sub",
        "Tanh",
        "Where",
        "Xor",
    }
)


def is_op(
    node: gs.Node | None,
    op: str | Collection[str],
    domains: Collection[str | None] = STANDARD_DOMAINS,
) -> bool:
    """Whether ``node`` exists and is ``op`` (or one of ``op``) of one of ``domains``."""
    if node is None or node.domain not in domains:
        return False
    return node.op == op if isinstance(op, str) else node.op in op


def describe_nodes(nodes: list[gs.Node], shown: int = 5) -> str:
    """``Op 'name', ...`` for notes, naming the first ``shown`` nodes."""
    names = [f"{n.op} '{n.name or next((t.name for t in n.outputs if t.name), '')}'" for n in nodes]
    more = f" and {len(nodes) - shown} more" if len(nodes) > shown else ""
    return ", ".join(names[:shown]) + more
