"""A zero (or, for MaxPool, -inf) Pad into the Conv or pool after it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.rewrite import Match, MatchResult, Rule, Scope, fail

__all__ = ["PadIntoConvOrPool"]

# For each op that takes a Pad: the padding value that its own pads stand for.
_PAD_TAKERS = {"Conv": 0.0, "AveragePool": 0.0, "MaxPool": -np.inf}


class PadIntoConvOrPool(Rule):
    """Pad in constant mode, padding only spatial axes with the value the op's own pads
    stand for, goes into the pads of the Conv, AveragePool (which then counts the padding, as
    it did when the zeros were real) or MaxPool after it. Pools keep their pads smaller than
    their kernel, as onnxruntime requires, and need ``ceil_mode=0``."""

    anchors = tuple(_PAD_TAKERS)

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        pad = scope.feeder(node, node.inputs[0], "Pad")
        if pad is None:
            return fail("its input is not a Pad's output that only it reads")
        if node.attrs.get("auto_pad", "NOTSET") != "NOTSET":
            return fail("it pads automatically")
        rank = _input_rank(node)
        padding = _spatial_padding(pad, rank, scope) if rank is not None else None
        if padding is None:
            return fail("the Pad pads other axes, crops, or is not known")
        added, value = padding
        if value != _PAD_TAKERS[node.op]:
            return fail("the Pad's value is not the one its pads stand for")
        current = list(node.attrs.get("pads", [0] * len(added)))
        if len(current) != len(added):
            return fail("the pads do not fit")
        pads = [a + b for a, b in zip(current, added, strict=True)]
        if node.op != "Conv" and not _pool_takes(node, current, pads):
            return fail("the pool cannot take the padding")
        return Match([pad, node], pad=pad, pads=pads)

    def rewrite(self, match: Match) -> None:
        node, pad = match.node, match.pad
        node.attrs["pads"] = match.pads
        if node.op == "AveragePool":
            node.attrs["count_include_pad"] = 1
        node.inputs[0] = pad.inputs[0]
        match.scope.detach(pad)


def _input_rank(node: gs.Node) -> int | None:
    if node.op == "Conv":
        weight = node.inputs[1]
        return len(weight.shape) if weight.shape is not None else None
    return len(node.attrs["kernel_shape"]) + 2 if "kernel_shape" in node.attrs else None


def _pool_takes(node: gs.Node, current: list[int], pads: list[int]) -> bool:
    """Whether a pool with ``pads`` computes what Pad + the pool with ``current`` pads did."""
    if node.attrs.get("ceil_mode", 0) or len(node.outputs) != 1:
        return False
    kernel = list(node.attrs["kernel_shape"])
    if any(p >= k for p, k in zip(pads, kernel + kernel, strict=True)):
        return False
    if node.op == "AveragePool":
        # Padding the pool adds itself is left out of the average unless count_include_pad.
        return bool(node.attrs.get("count_include_pad", 0)) or not any(current)
    return True


def _spatial_padding(pad: gs.Node, rank: int, scope: Scope) -> tuple[list[int], float] | None:
    """The pads a constant-mode Pad adds to the spatial axes of a rank-``rank`` tensor, in
    the ``[x1_begin, x2_begin, ..., x1_end, ...]`` layout of Conv and pools, and its value;
    None where it pads other axes, crops, or is not known."""
    if pad.attrs.get("mode", "constant") != "constant":
        return None
    if "pads" in pad.attrs or "paddings" in pad.attrs:  # Pad-1 and Pad-2 take attributes
        pads = list(pad.attrs.get("pads", pad.attrs.get("paddings")))
        value = float(pad.attrs.get("value", 0.0))
    else:
        pads = scope.constant_ints(scope.present(pad, 1))
        if pads is None:
            return None
        value_input = scope.present(pad, 2)
        value = 0.0
        if value_input is not None:
            value = scope.scalar(value_input)
            if value is None:
                return None
        axes_input = scope.present(pad, 3)
        if axes_input is not None:
            pads = _pads_for_all_axes(pads, scope.constant_ints(axes_input), rank)
            if pads is None:
                return None
    if len(pads) != 2 * rank or any(p < 0 for p in pads):
        return None
    if any(pads[axis] or pads[rank + axis] for axis in (0, 1)):
        return None
    return pads[2:rank] + pads[rank + 2 :], value


def _pads_for_all_axes(pads: list[int], axes: list[int] | None, rank: int) -> list[int] | None:
    """Pad-18's pads for some ``axes`` spread over all axes (zero for the others)."""
    if axes is None:
        return None
    axes = [a + rank if a < 0 else a for a in axes]
    if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
        return None
    if any(not 0 <= a < rank for a in axes):
        return None
    full = [0] * (2 * rank)
    for position, axis in enumerate(axes):
        full[axis], full[rank + axis] = pads[position], pads[len(axes) + position]
    return full
