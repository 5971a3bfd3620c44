"""cleanup: remove what does nothing at inference time."""

from __future__ import annotations

import hashlib
from collections import defaultdict

import onnx_graphsurgeon as gs
from onnxslim.passes.eliminations import RemoveDropout, RemoveIdentity

from onnxslim.model import iter_graphs, read_constant_bytes
from onnxslim.pipeline import PassContext
from onnxslim.registry import register_pass
from onnxslim.rewrite import Rule, RuleSet, Scope, element_type, replace_uses

__all__ = ["Cleanup"]

# Comparing the first bytes first keeps deduplication from reading every weight in full.
_PREFIX_BYTES = 4096


@register_pass("cleanup")
class Cleanup(RuleSet):
    """Remove Identity and inference-mode Dropout, merge identical initializers, drop dead code.

    Dead nodes and unused initializers go, and the graph is sorted topologically (the manager
    does both after every pass that changes something). Graph inputs and outputs keep their
    names; an Identity that is the only way to give a graph output its name stays.
    """

    remove_identity: bool = True
    remove_dropout: bool = True
    deduplicate_initializers: bool = True

    def make_rules(self) -> list[Rule]:
        chosen = {RemoveIdentity: self.remove_identity, RemoveDropout: self.remove_dropout}
        return [rule() for rule, wanted in chosen.items() if wanted]

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        changed = super().run(graph, ctx)
        if self.deduplicate_initializers:
            changed |= _deduplicate_constants(Scope(graph))
        # The manager cleans up after a change; a standalone run must still remove dead code.
        before = sum(len(g.nodes) for g in iter_graphs(graph))
        graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True)
        return changed or sum(len(g.nodes) for g in iter_graphs(graph)) != before


def _deduplicate_constants(scope: Scope) -> bool:
    """Point every reader of an initializer at the first identical one."""
    by_signature: dict[tuple, list[gs.Constant]] = defaultdict(list)
    seen: set[int] = set()
    for g in scope.graphs:
        for tensor in g.tensors().values():
            if (
                isinstance(tensor, gs.Constant)
                and id(tensor) not in seen
                and not scope.is_protected(tensor)
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
                    replace_uses(tensor, keeper)
                    changed = True
    return changed


def _digest(tensor: gs.Constant, prefix_only: bool) -> bytes:
    data = read_constant_bytes(tensor, _PREFIX_BYTES if prefix_only else None)
    return hashlib.blake2b(data, digest_size=16).digest()
