"""cleanup: remove what does nothing at inference time."""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.model import iter_graphs, read_constant, read_constant_bytes
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass
from onnxslim.rewrite import bypass, element_type, replace_input

__all__ = ["Cleanup"]

# Comparing the first bytes first keeps deduplication from reading every weight in full.
_PREFIX_BYTES = 4096


@register_pass("cleanup")
class Cleanup(Pass):
    """Remove Identity and inference-mode Dropout, merge identical initializers, drop dead code.

    Dead nodes and unused initializers go, and the graph is sorted topologically (the manager
    does both after every pass that changes something). Graph inputs and outputs keep their
    names; an Identity that is the only way to give a graph output its name stays.
    """

    remove_identity: bool = True
    remove_dropout: bool = True
    deduplicate_initializers: bool = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        changed = False
        for g in iter_graphs(graph):
            for node in list(g.nodes):
                if (self.remove_identity and _is_removable_identity(node)) or (
                    self.remove_dropout and _is_inference_dropout(node, g)
                ):
                    changed |= bypass(g, node)
        if self.deduplicate_initializers:
            changed |= _deduplicate_constants(graph)
        # The manager cleans up after a change; a standalone run must still remove dead code.
        before = sum(len(g.nodes) for g in iter_graphs(graph))
        graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True)
        return changed or sum(len(g.nodes) for g in iter_graphs(graph)) != before


def _is_removable_identity(node: gs.Node) -> bool:
    return node.op == "Identity" and node.domain in ("", "ai.onnx", None)


def _is_inference_dropout(node: gs.Node, graph: gs.Graph) -> bool:
    """A Dropout that passes its input through: mask unused and not in training mode."""
    if node.op != "Dropout" or node.domain not in ("", "ai.onnx", None):
        return False
    if len(node.outputs) > 1 and (node.outputs[1].outputs or node.outputs[1] in graph.outputs):
        return False
    if len(node.inputs) > 2 and node.inputs[2].name:
        training = node.inputs[2]
        if not isinstance(training, gs.Constant) or bool(np.any(read_constant(training))):
            return False
    return True


def _deduplicate_constants(graph: gs.Graph) -> bool:
    """Point every reader of an initializer at the first identical one."""
    protected = {id(t) for g in iter_graphs(graph) for t in g.inputs + g.outputs}
    by_signature: dict[tuple, list[gs.Constant]] = defaultdict(list)
    seen: set[int] = set()
    for g in iter_graphs(graph):
        for tensor in g.tensors().values():
            if (
                isinstance(tensor, gs.Constant)
                and id(tensor) not in seen
                and id(tensor) not in protected
            ):
                seen.add(id(tensor))
                by_signature[(element_type(tensor), tuple(tensor.shape))].append(tensor)

    changed = False
    for candidates in by_signature.values():
        if len(candidates) < 2:
            continue
        groups: dict[bytes, list[gs.Constant]] = defaultdict(list)
        for tensor in candidates:
            groups[_digest(tensor, prefix_only=True)].append(tensor)
        for same_prefix in groups.values():
            if len(same_prefix) < 2:
                continue
            keepers: dict[bytes, gs.Constant] = {}
            for tensor in same_prefix:
                digest = _digest(tensor, prefix_only=False)
                keeper = keepers.setdefault(digest, tensor)
                if keeper is not tensor:
                    for consumer in list(tensor.outputs):
                        replace_input(consumer, tensor, keeper)
                    changed = True
    return changed


def _digest(tensor: gs.Constant, prefix_only: bool) -> bytes:
    data = read_constant_bytes(tensor, _PREFIX_BYTES if prefix_only else None)
    return hashlib.blake2b(data, digest_size=16).digest()
