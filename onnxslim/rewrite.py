"""Graph-editing helpers that pass authors share.

Small operations on the onnx-graphsurgeon vocabulary that several rewrites need and that are
easy to get subtly wrong: removing a node while keeping graph output names, rewiring
consumers, naming nodes in notes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

__all__ = [
    "bypass",
    "replace_input",
    "element_type",
    "describe_nodes",
    "static_dim",
    "fresh_name",
    "NONDETERMINISTIC_OPS",
    "STANDARD_DOMAINS",
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


def bypass(graph: gs.Graph, node: gs.Node, source: gs.Tensor | None = None) -> bool:
    """Remove ``node``, whose first output equals ``source`` (default: its first input).

    Consumers of the output read ``source`` instead. When the output is a graph output its name
    must survive, so the producer of ``source`` writes it directly; where that is impossible
    (``source`` is a graph input, an output itself, or made in another graph) the node stays
    and False is returned.
    """
    source = node.inputs[0] if source is None else source
    result = node.outputs[0]
    if result in graph.outputs:
        producer = source.inputs[0] if isinstance(source, gs.Variable) and source.inputs else None
        if (
            producer is None
            or producer not in graph.nodes
            or source in graph.outputs
            or source in graph.inputs
            or result in graph.inputs
        ):
            return False
        for consumer in list(source.outputs):
            if consumer is not node:
                replace_input(consumer, source, result)
        producer.outputs[producer.outputs.index(source)] = result
    else:
        for consumer in list(result.outputs):
            replace_input(consumer, result, source)
    node.inputs.clear()
    node.outputs.clear()
    return True


def replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make ``node`` read ``new`` wherever it reads ``old``."""
    for index, tensor in enumerate(node.inputs):
        if tensor is old:
            node.inputs[index] = new


def element_type(tensor: gs.Constant) -> int:
    """The ONNX element type of a constant, read the same way for loaded and folded constants.

    gs maps some types (INT4 and INT8, say) to one numpy type, so compare this, not dtypes.
    """
    values = tensor._values
    if isinstance(values, SparseValues):
        return int(values.tensor.values.data_type)
    if isinstance(values, LazyValues):
        return int(values.tensor.data_type)
    return int(onnx.helper.np_dtype_to_tensor_dtype(np.asarray(values).dtype))


def describe_nodes(nodes: list[gs.Node], shown: int = 5) -> str:
    """``Op 'name', ...`` for notes, naming the first ``shown`` nodes."""
    names = [f"{n.op} '{n.name or next((t.name for t in n.outputs if t.name), '')}'" for n in nodes]
    more = f" and {len(nodes) - shown} more" if len(nodes) > shown else ""
    return ", ".join(names[:shown]) + more


def static_dim(dim: object) -> int | None:
    """A dimension as an int when it is a known size, None when symbolic or unknown."""
    if isinstance(dim, int | np.integer) and not isinstance(dim, bool) and dim >= 0:
        return int(dim)
    return None


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_N`` for the first N that is not in ``taken``; the name is reserved."""
    name, number = base, 0
    while name in taken:
        number += 1
        name = f"{base}_{number}"
    taken.add(name)
    return name
