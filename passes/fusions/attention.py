"""Scaled dot-product attention into Attention (opset 23).

Exporters spell attention ``Softmax(Q·Kᵀ·scale + mask)·V`` with the head reshapes around it.
The rule anchors at the Softmax and reads, backwards, the scale (one Mul/Div of the scores, or
sqrt(scale) on each of Q and Kᵀ as PyTorch's SDPA decomposition writes it), an additive float
mask or a ``Where(mask, scores, -inf)``, and Kᵀ as a Transpose of K (or of K's head split, or
TorchScript's Reshape-Transpose-Reshape); forwards, the ``Where(IsNaN(p), 0, p)`` guard that
zeroes fully masked rows (onnxruntime's Attention gives zeros there too) and the MatMul with V.
Grouped-query attention's repeated K and V heads (Unsqueeze -> Expand -> Reshape) are read
back to the shared heads, which Attention takes as ``kv_num_heads``.

Where Q, K and V are head splits of ``[B, S, H*D]`` tensors and the output merges the heads
back, the fused node takes and gives the 3-D tensors (``q_num_heads``, ``kv_num_heads``) and
the Reshapes and Transposes go too; otherwise it works on the 4-D heads. onnxruntime wants a
mask with one row per query and one column per key: one whose shape is not provably so is
expanded to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnxslim.passes.fusions.broadcast import dim_extent, expand_to
from onnxslim.passes.fusions.heads import (
    HEADS_FIRST,
    HeadMerge,
    HeadSplit,
    merged_heads,
    split_heads,
)

from onnxslim.rewrite import (
    DimOf,
    Match,
    MatchResult,
    Miss,
    Rule,
    Scope,
    fail,
    same_dim,
    shape_entries,
)

__all__ = ["AttentionFusion"]

# A Where that selects this or less for masked scores masks them: exp() of it is 0.
_MASKED_BELOW = -1e9
_BOOL = onnx.TensorProto.BOOL
_FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass
class _Core:
    """Softmax(Q·Kᵀ·scale + mask)·V on 4-D heads, and the nodes that compute it."""

    nodes: list[gs.Node] = field(default_factory=list)
    q: gs.Tensor | None = None  # [B, H, S, D]
    k: gs.Tensor | None = None  # [B, Hkv, L, D], or None where only ...
    k_split: gs.Tensor | None = None  # ... the Reshape [B, L, Hkv, D] exists
    v: gs.Tensor | None = None  # [B, Hkv, L, Dv]
    mask: gs.Tensor | None = None
    scale: float = 1.0
    output: gs.Tensor | None = None  # [B, H, S, Dv]


class AttentionFusion(Rule):
    """Softmax(Q·Kᵀ·scale + mask)·V, with its head reshapes, into one Attention node."""

    anchors = ("Softmax",)
    min_opset = 23
    produces = "Attention"

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        core = _core(node, scope)
        if isinstance(core, Miss):
            return core
        if scope.rank(core.q) not in (None, 4):
            return fail("Q does not have 4 dims")
        if core.q.dtype is not None and np.dtype(core.q.dtype) not in _FLOAT_TYPES:
            return fail("Q is neither float32 nor float16")
        flat = _flat(core, scope)
        output, nodes = core.output, list(core.nodes)
        if flat is not None:
            output = flat.merge.output
            nodes += flat.merge.nodes
        for consumed in nodes:
            for tensor in consumed.outputs:
                if tensor is not output and not _only_for(tensor, nodes, flat, scope):
                    return fail(f"{consumed.op} '{consumed.name}' has readers outside attention")
        return Match(nodes, core=core, flat=flat, output=output)

    def rewrite(self, match: Match) -> None:
        scope, core, flat = match.scope, match.core, match.flat
        graph = scope.graph_of(match.node)
        if flat is not None:
            q = _flat_tensor(flat.q, graph, scope)
            k = _flat_tensor(flat.k, graph, scope)
            v = flat.v.flat
            attrs = {"q_num_heads": flat.q.split.heads, "kv_num_heads": flat.k.split.heads}
            rows, columns = DimOf(flat.q.split.flat, 1), DimOf(flat.k.split.flat, 1)
        else:
            q, v = core.q, core.v
            k = core.k if core.k is not None else _heads_first(core.k_split, graph, scope)
            attrs = {}
            rows, columns = DimOf(q, 2), DimOf(k, 2)
        inputs = [q, k, v]
        if core.mask is not None:
            inputs.append(_mask_for(core.mask, rows, columns, graph, scope))
        attrs["scale"] = float(core.scale)
        output = match.output
        if output is None:  # the 3-D result feeds the Reshape that read the merged heads
            output = gs.Variable(scope.fresh_name(f"{core.output.name}_merged"), q.dtype)
            flat.merge.reader.inputs[0] = output
        scope.replace(match.nodes, "Attention", inputs, [output], attrs)


def _only_for(tensor: gs.Tensor, nodes: list[gs.Node], flat: _Flat | None, scope: Scope) -> bool:
    """Whether removing ``nodes`` leaves ``tensor`` unneeded, the Reshape that will read the
    3-D result instead of it (the data input only) aside."""
    reader = flat.merge.reader if flat is not None else None
    if reader is None or reader.inputs[0] is not tensor:
        return scope.only_feeds(tensor, nodes)
    if scope.is_protected(tensor) or any(t is tensor for t in reader.inputs[1:]):
        return False
    others = [r for r in tensor.outputs if r is not reader]
    return all(scope.only_feeds(t, nodes) for r in others for t in r.outputs)


# ---------------------------------------------------------------------------------- core


def _core(softmax: gs.Node, scope: Scope) -> _Core | Miss:
    scores = softmax.inputs[0]
    if softmax.attrs.get("axis", -1) not in (-1, 3) or scope.rank(scores) not in (None, 4):
        return fail("it does not normalize the last axis of 4-D scores")
    tail = _after_softmax(softmax, scope)
    if isinstance(tail, Miss):
        return tail
    matmul, guard = tail
    core = _Core(nodes=[softmax, *guard, matmul], v=matmul.inputs[1], output=matmul.outputs[0])
    add = scope.feeder(softmax, scores, "Add", once=True)
    where = scope.feeder(softmax, scores, "Where", once=True)
    if add is not None:
        for unmasked, mask in (add.inputs, add.inputs[::-1]):
            found = _scores(unmasked, add, scope)
            if not isinstance(found, Miss):
                core.mask = mask
                core.nodes.append(add)
                break
    elif where is not None:
        condition, kept, masked = where.inputs
        value = scope.scalar(masked)
        if value is None or value > _MASKED_BELOW or scope.element_type(condition) != _BOOL:
            return fail("its Where does not mask with a very negative constant")
        found = _scores(kept, where, scope)
        core.mask = condition
        core.nodes.append(where)
    else:
        found = _scores(scores, softmax, scope)
    if isinstance(found, Miss):
        return found
    core.q, core.k, core.k_split, core.scale, nodes = found
    core.nodes += nodes
    if core.k is not None:
        (core.k, core.v), repeats = _shared_heads(core.k, core.v, scope)
        core.nodes += repeats
    return core


def _after_softmax(softmax: gs.Node, scope: Scope) -> tuple[gs.Node, list[gs.Node]] | Miss:
    """The MatMul with V, and the IsNaN guard before it where there is one."""
    probabilities = softmax.outputs[0]
    matmul = scope.read_once(probabilities, "MatMul")
    if matmul is not None:
        return (matmul, []) if matmul.inputs[0] is probabilities else fail("p is not V's left")
    readers = scope.readers(probabilities)
    isnan = next((r for r in readers if scope.is_op(r, "IsNaN")), None)
    where = scope.read_once(isnan.outputs[0], "Where") if isnan is not None else None
    if (
        where is None
        or len(readers) != 2
        or all(r is not where for r in readers)
        or where.inputs[2] is not probabilities
        or not scope.is_scalar(where.inputs[1], 0.0)
    ):
        return fail("its output is not multiplied by V")
    matmul = scope.read_once(where.outputs[0], "MatMul")
    if matmul is None or matmul.inputs[0] is not where.outputs[0]:
        return fail("its output is not multiplied by V")
    return matmul, [isnan, where]


def _scores(tensor: gs.Tensor, reader: gs.Node, scope: Scope):
    """(Q, K, K's head split, scale, nodes) of scores ``Q·Kᵀ`` scaled by scalars: once after
    the MatMul (Mul or Div) and/or on each side of it."""
    scale, nodes = 1.0, []
    scaling = scope.feeder(reader, tensor, ("Mul", "Div"), once=True)
    operand, factor = _scalar_operand(scaling, scope)
    if operand is not None:
        scale *= factor
        nodes.append(scaling)
        tensor, reader = operand, scaling
    matmul = scope.feeder(reader, tensor, "MatMul", once=True)
    if matmul is None:
        return fail("the scores are not a MatMul of Q and Kᵀ")
    nodes.append(matmul)
    sides = []
    for side in matmul.inputs:
        scaling = scope.feeder(matmul, side, "Mul", once=True)
        operand, factor = _scalar_operand(scaling, scope)
        if operand is not None:
            scale *= factor
            nodes.append(scaling)
            side = operand
        sides.append(side)
    query, transposed_keys = sides
    keys = _keys(transposed_keys, scope)
    if keys is None:
        return fail("Kᵀ is not a Transpose of K")
    k, k_split, key_nodes = keys
    return query, k, k_split, scale, nodes + key_nodes


def _scalar_operand(node: gs.Node | None, scope: Scope) -> tuple[gs.Tensor | None, float]:
    """(the other operand, the factor it is multiplied by) of Mul or Div by a scalar."""
    if node is None or len(node.inputs) != 2:
        return None, 1.0
    if node.op == "Div":
        value = scope.scalar(node.inputs[1])
        return (node.inputs[0], 1.0 / value) if value else (None, 1.0)
    for operand, other in (node.inputs, node.inputs[::-1]):
        value = scope.scalar(other)
        if value is not None:
            return operand, value
    return None, 1.0


def _keys(kt: gs.Tensor, scope: Scope):
    """(K [B, H, L, D] or None, K's head split [B, L, H, D] or None, nodes) for Kᵀ, K's
    repeated heads read back to the shared ones."""
    transpose = scope.producer(kt, "Transpose")
    perm = list(transpose.attrs.get("perm", ())) if transpose is not None else None
    if transpose is not None and scope.read_once(kt) is not None and perm == [0, 2, 3, 1]:
        return None, transpose.inputs[0], [transpose]
    if transpose is not None and scope.read_once(kt) is not None and perm == [0, 1, 3, 2]:
        keys, nodes = transpose.inputs[0], [transpose]
    else:
        chain = _flattened_transpose(kt, scope)
        if chain is None:
            return None
        keys, nodes = chain
    return keys, None, nodes


def _flattened_transpose(kt: gs.Tensor, scope: Scope) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """``Reshape(Transpose(Reshape(K, [-1, L, D]), [0, 2, 1]), [B, H, D, L])``, as
    torch.onnx's dynamo exporter writes Kᵀ."""
    unflatten = scope.producer(kt, "Reshape")
    transpose = scope.producer(unflatten.inputs[0], "Transpose") if unflatten else None
    flatten = scope.producer(transpose.inputs[0], "Reshape") if transpose else None
    if flatten is None or list(transpose.attrs.get("perm", ())) != [0, 2, 1]:
        return None
    keys = flatten.inputs[0]
    inner, outer = shape_entries(flatten.inputs[1]), shape_entries(unflatten.inputs[1])
    if inner is None or outer is None or len(inner) != 3 or len(outer) != 4:
        return None
    dim = [DimOf(keys, axis) for axis in range(4)]
    if inner[0] != -1 or not _same(inner[1:], [dim[2], dim[3]]):
        return None
    if not _same(outer, [dim[0], dim[1], dim[3], dim[2]]):
        return None
    if any(scope.read_once(t) is None for t in (flatten.outputs[0], transpose.outputs[0], kt)):
        return None
    return keys, [flatten, transpose, unflatten]


def _same(entries: list, dims: list[DimOf]) -> bool:
    return all(
        e is not None and e != 0 and same_dim(e, d) for e, d in zip(entries, dims, strict=True)
    )


def _shared_heads(
    keys: gs.Tensor, values: gs.Tensor, scope: Scope
) -> tuple[tuple[gs.Tensor, gs.Tensor], list[gs.Node]]:
    """K and V with the heads that grouped-query attention repeats read back to the shared
    ones, with the nodes that repeat them; both as they are unless both are repeated alike."""
    k, k_repeat, k_nodes = _unrepeated(keys, scope)
    v, v_repeat, v_nodes = _unrepeated(values, scope)
    if k_repeat is None or k_repeat != v_repeat:
        return (keys, values), []
    return (k, v), k_nodes + v_nodes


def _unrepeated(tensor: gs.Tensor, scope: Scope) -> tuple[gs.Tensor, int | None, list[gs.Node]]:
    """(the shared heads, how often each is repeated, the nodes that repeat them) of K or V
    repeated as ``Reshape(Expand(Unsqueeze(x, 2), [B, Hkv, n, L, D]), [B, Hkv*n, L, D])``;
    ``tensor`` itself, None and no nodes where it is not such a repeat."""
    unchanged = tensor, None, []
    reshape = scope.producer(tensor, "Reshape")
    expand = scope.producer(reshape.inputs[0], "Expand") if reshape else None
    unsqueeze = scope.producer(expand.inputs[0], "Unsqueeze") if expand else None
    if unsqueeze is None or scope.ints_param(unsqueeze, "axes", 1, 13)[1] != [2]:
        return unchanged
    shared = unsqueeze.inputs[0]
    dim = [DimOf(shared, axis) for axis in range(4)]
    spread, target = shape_entries(expand.inputs[1]), shape_entries(reshape.inputs[1])
    if spread is None or target is None or len(spread) != 5 or len(target) != 4:
        return unchanged
    repeat = spread[2]
    if not isinstance(repeat, int) or repeat < 1:
        return unchanged
    if not _same([spread[0], spread[1], spread[3], spread[4]], dim):
        return unchanged
    # The head count is the one entry left: the element count fixes it.
    if not _same([target[0], target[2], target[3]], [dim[0], dim[2], dim[3]]):
        return unchanged
    if any(scope.read_once(node.outputs[0]) is None for node in (unsqueeze, expand)):
        return unchanged
    return shared, repeat, [unsqueeze, expand, reshape]


# --------------------------------------------------------------------- the 3-D form


@dataclass
class _FlatInput:
    """A 3-D Q or K: its head split, and the 4-D RotaryEmbedding applied after it, if any."""

    split: HeadSplit
    rotary: gs.Node | None = None


@dataclass
class _Flat:
    q: _FlatInput
    k: _FlatInput
    v: HeadSplit
    merge: HeadMerge


def _flat(core: _Core, scope: Scope) -> _Flat | None:
    """Q, K and V as ``[B, S, H*D]`` tensors, and the merged output, where the graph splits
    and merges the heads around the core; else None."""
    q = _flat_input(core.q, scope)
    if core.k is not None:
        k = _flat_input(core.k, scope)
    else:
        split = split_heads(core.k_split, scope, transposed=False)
        k = _FlatInput(split) if split is not None else None
    v = split_heads(core.v, scope)
    if q is None or k is None or v is None:
        return None
    if k.split.heads != v.heads or q.split.heads % k.split.heads:
        return None
    # The output's batch and rows are Q's, its columns V's (a mask that broadcast Q's batch
    # would not fit Attention anyway).
    dims = [
        [DimOf(core.output, 0), DimOf(core.q, 0)],
        [DimOf(core.output, 1)],
        [DimOf(core.output, 2), DimOf(core.q, 2)],
        [DimOf(core.output, 3), DimOf(core.v, 3)],
    ]
    merge = merged_heads(core.output, dims, q.split.heads, scope)
    return _Flat(q, k, v, merge) if merge is not None else None


def _flat_input(tensor: gs.Tensor, scope: Scope) -> _FlatInput | None:
    rotary = scope.producer(tensor, "RotaryEmbedding")
    if rotary is not None and "num_heads" not in rotary.attrs:
        split = split_heads(rotary.inputs[0], scope)
        return _FlatInput(split, rotary) if split is not None else None
    split = split_heads(tensor, scope)
    return _FlatInput(split) if split is not None else None


def _flat_tensor(given: _FlatInput, graph: gs.Graph, scope: Scope) -> gs.Tensor:
    """The 3-D tensor Attention reads: the flat input, rotated by a 3-D RotaryEmbedding where
    the 4-D heads were rotated."""
    flat = given.split.flat
    if given.rotary is None:
        return flat
    rotary = given.rotary
    rotated = gs.Variable(scope.fresh_name(f"{flat.name}_rotary"), flat.dtype, flat.shape)
    attrs = dict(rotary.attrs, num_heads=given.split.heads)
    node = gs.Node(
        "RotaryEmbedding",
        name=scope.fresh_node_name(f"{rotary.name}_flat"),
        attrs=attrs,
        inputs=[flat, *rotary.inputs[1:]],
        outputs=[rotated],
    )
    scope.add_node(graph, node)
    return rotated


def _heads_first(split: gs.Tensor, graph: gs.Graph, scope: Scope) -> gs.Tensor:
    """``[B, L, H, D]`` as ``[B, H, L, D]``, by a new Transpose."""
    keys = gs.Variable(scope.fresh_name(f"{split.name}_heads_first"), dtype=split.dtype)
    node = gs.Node(
        "Transpose",
        name=scope.fresh_node_name(f"{split.name}_Transpose"),
        attrs={"perm": HEADS_FIRST},
        inputs=[split],
        outputs=[keys],
    )
    scope.add_node(graph, node)
    return keys


def _mask_for(
    mask: gs.Tensor, rows: DimOf, columns: DimOf, graph: gs.Graph, scope: Scope
) -> gs.Tensor:
    """``mask`` with one row per query and one column per key, as onnxruntime's Attention
    wants it: itself where its last two dims are provably those, else expanded to them."""
    size = scope.rank(mask)
    last = [DimOf(mask, size - 2), DimOf(mask, size - 1)] if size and size >= 2 else None
    if last is not None and same_dim(last[0], rows) and same_dim(last[1], columns):
        return mask
    pieces = [scope.new_constant("attention_mask_ones", np.ones(max(size or 2, 2) - 2, np.int64))]
    pieces += [dim_extent(rows, graph, scope), dim_extent(columns, graph, scope)]
    return expand_to(mask, pieces, graph, scope, "expanded")
