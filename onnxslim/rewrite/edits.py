"""Graph edits that rewrites share and that are easy to get subtly wrong: removing a node while
keeping graph output names, rewiring readers, fresh names."""

from __future__ import annotations

import onnx_graphsurgeon as gs

__all__ = ["bypass", "can_bypass", "replace_input", "replace_uses", "detach", "fresh_name"]


def can_bypass(graph: gs.Graph, node: gs.Node, source: gs.Tensor | None = None) -> bool:
    """Whether :func:`bypass` can remove ``node`` in favour of ``source``: where its output is
    a graph output, only if the producer of ``source`` (in ``graph``) can write that name."""
    source = node.inputs[0] if source is None else source
    result = node.outputs[0]
    if result not in graph.outputs:
        return True
    producer = source.inputs[0] if isinstance(source, gs.Variable) and source.inputs else None
    return not (
        producer is None
        or producer not in graph.nodes
        or source in graph.outputs
        or source in graph.inputs
        or result in graph.inputs
    )


def bypass(graph: gs.Graph, node: gs.Node, source: gs.Tensor | None = None) -> bool:
    """Remove ``node``, whose first output equals ``source`` (default: its first input).

    Readers of the output read ``source`` instead. When the output is a graph output its name
    must survive, so the producer of ``source`` writes it directly; where that is impossible
    (``source`` is a graph input, an output itself, or made in another graph) the node stays
    and False is returned.
    """
    source = node.inputs[0] if source is None else source
    if not can_bypass(graph, node, source):
        return False
    result = node.outputs[0]
    if result in graph.outputs:
        producer = source.inputs[0]
        for reader in list(source.outputs):
            if reader is not node:
                replace_input(reader, source, result)
        producer.outputs[producer.outputs.index(source)] = result
    else:
        replace_uses(result, source)
    detach(node)
    return True


def replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make ``node`` read ``new`` wherever it reads ``old``."""
    for index, tensor in enumerate(node.inputs):
        if tensor is old:
            node.inputs[index] = new


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every reader of ``old`` (in subgraphs too) read ``new``; graph outputs stay."""
    for reader in list(old.outputs):
        replace_input(reader, old, new)


def detach(node: gs.Node) -> None:
    """Disconnect ``node`` from its inputs and outputs, so that it no longer counts as a reader
    of anything for the rest of a pass; the pass manager removes it from the graph."""
    node.inputs.clear()
    node.outputs.clear()


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_N`` for the first N that is not in ``taken``; the name is reserved."""
    name, number = base, 0
    while name in taken:
        number += 1
        name = f"{base}_{number}"
    taken.add(name)
    return name
