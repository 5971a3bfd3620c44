"""The head reshapes of transformer exports: ``[B, S, H*D] -> [B, S, H, D] -> [B, H, S, D]``
before attention, and back after it.

Attention (opset 23) takes the 3-D tensors with ``q_num_heads``/``kv_num_heads`` and does the
split and merge itself, so a fusion that recognises them removes the Reshapes and Transposes
along with the core. Each Reshape must provably keep the batch and sequence dims
(:func:`onnxslim.rewrite.same_dim`) and name the head count as a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxslim.rewrite import DimOf, Scope, same_dim, shape_entries, static_size

__all__ = ["HeadSplit", "HeadMerge", "split_heads", "merged_heads", "HEADS_FIRST"]

# [B, S, H, D] <-> [B, H, S, D]
HEADS_FIRST = [0, 2, 1, 3]


@dataclass
class HeadSplit:
    """``heads4 = Transpose(Reshape(flat, [B, S, heads, D]), [0, 2, 1, 3])``, or without the
    Transpose (``transposed=False``), the Reshape's output itself."""

    flat: gs.Tensor
    heads: int
    heads4: gs.Tensor


def split_heads(tensor: gs.Tensor, scope: Scope, transposed: bool = True) -> HeadSplit | None:
    """``tensor`` as the head split of a 3-D ``[B, S, H*D]`` tensor, or None."""
    split = tensor
    if transposed:
        transpose = scope.producer(tensor, "Transpose")
        if transpose is None or list(transpose.attrs.get("perm", ())) != HEADS_FIRST:
            return None
        split = transpose.inputs[0]
    reshape = scope.producer(split, "Reshape")
    if reshape is None or len(reshape.inputs) < 2:
        return None
    flat = reshape.inputs[0]
    entries = shape_entries(reshape.inputs[1])
    if scope.rank(flat) != 3 or entries is None or len(entries) != 4:
        return None
    heads = _head_count(entries[2], entries[3], static_size(flat, 2))
    if heads is None or not _keeps_leading(entries[:2], flat, reshape, entries[2:]):
        return None
    return HeadSplit(flat, heads, tensor)


def _keeps_leading(leading: list, flat: gs.Tensor, reshape: gs.Node, split: list) -> bool:
    """Whether a ``[e0, e1, heads, size]`` Reshape of ``flat`` keeps its dims 0 and 1: each
    entry provably equal to the dim, or one of them -1 while heads and size are constants
    that account for all of ``flat``'s last dim."""
    keeps = [_copies(entry, DimOf(flat, axis), reshape) for axis, entry in enumerate(leading)]
    if all(keeps):
        return True
    width = static_size(flat, 2)
    inferred = [entry == -1 and not kept for entry, kept in zip(leading, keeps, strict=True)]
    whole = all(isinstance(e, int) and e > 0 for e in split) and split[0] * split[1] == width
    return sum(inferred) == 1 and sum(keeps) == 1 and whole


def _head_count(heads: object, size: object, width: object) -> int | None:
    """The head count of a ``[.., heads, size]`` split of ``width`` features, one of the two
    given (the other -1) or both."""
    if isinstance(heads, int) and heads > 0 and (size == -1 or isinstance(size, int) and size > 0):
        return heads
    if heads == -1 and isinstance(size, int) and size > 0 and isinstance(width, int):
        return width // size if width % size == 0 and width else None
    return None


@dataclass
class HeadMerge:
    """How the 4-D attention output becomes ``[B, S, H*D]``: the nodes that do it, and either
    the tensor they write (the merge is exact) or the Reshape that reads it (whose target is
    then read from the 3-D tensor instead: the same elements in the same order)."""

    nodes: list[gs.Node]
    output: gs.Tensor | None
    reader: gs.Node | None = None


def merged_heads(
    output: gs.Tensor, dims: list[list[DimOf]], heads: int, scope: Scope
) -> HeadMerge | None:
    """How ``output`` ([B, H, S, D]; ``dims[i]`` lists dims known to equal its dim ``i``,
    itself among them) goes back to ``[B, S, H*D]``: ``Transpose([0, 2, 1, 3])`` and a
    Reshape (after an optional Reshape that changes nothing, as TorchScript writes it); None
    where the graph does otherwise."""
    nodes = []
    current = output
    first = _data_reader(current, ("Reshape", "Transpose"), scope)
    if scope.is_op(first, "Reshape"):
        entries = shape_entries(first.inputs[1]) if len(first.inputs) > 1 else None
        if entries is None or len(entries) != 4:
            return None
        # Every dim the same, the head count given or left to the element count (-1).
        known = [dims[0], [heads], dims[2], dims[3]]
        if entries[1] == -1:
            entries = [entries[0], heads, *entries[2:]]
        if not all(
            _among(entry, options, first) for entry, options in zip(entries, known, strict=True)
        ):
            return None
        nodes.append(first)
        current = first.outputs[0]
        first = _data_reader(current, "Transpose", scope)
    if first is None or list(first.attrs.get("perm", ())) != HEADS_FIRST:
        return None
    nodes.append(first)
    transposed = first.outputs[0]
    merge = _data_reader(transposed, "Reshape", scope)
    entries = shape_entries(merge.inputs[1]) if merge is not None else None
    if entries is None:
        return None
    by_axis = [[DimOf(transposed, 0), *dims[0]], [DimOf(transposed, 1), *dims[2]]]
    last = entries[-1]
    exact = (
        len(entries) == 3
        and (last == -1 or (isinstance(last, int) and last > 0))
        and all(
            _among(entry, options, merge)
            for entry, options in zip(entries[:2], by_axis, strict=True)
        )
    )
    if exact:
        return HeadMerge([*nodes, merge], merge.outputs[0])
    # Any other Reshape of the contiguous [B, S, H, D] is the same Reshape of [B, S, H*D],
    # unless a 0 copies one of the dims that differ.
    copies = not merge.attrs.get("allowzero", 0) and 0 in entries[2:]
    return None if copies else HeadMerge(nodes, None, merge)


def _data_reader(tensor: gs.Tensor, ops, scope: Scope) -> gs.Node | None:
    """The one ``ops`` node that reads ``tensor`` as its data (first) input; other readers may
    only read its shape (the caller checks that they go with the nodes it removes)."""
    found = [r for r in scope.readers(tensor) if scope.is_op(r, ops) and r.inputs[0] is tensor]
    return found[0] if len(found) == 1 and not scope.is_protected(tensor) else None


def _copies(entry: object, dim: DimOf, reshape: gs.Node) -> bool:
    """Whether a Reshape target entry gives the output the size of ``dim``."""
    if entry == 0 and not reshape.attrs.get("allowzero", 0):
        return dim.tensor is reshape.inputs[0]
    return entry is not None and entry != 0 and same_dim(entry, dim)


def _among(entry: object, options: list, reshape: gs.Node) -> bool:
    if isinstance(entry, int) and not isinstance(entry, bool):
        return entry in [o for o in options if isinstance(o, int)] or any(
            isinstance(o, DimOf) and same_dim(entry, o) for o in options
        )
    return any(isinstance(o, DimOf) and _copies(entry, o, reshape) for o in options)
