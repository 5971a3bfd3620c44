"""What Slice rules share: a Slice's parameters by axis, and composing two ranges."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.rewrite import Scope, normalized_axes

__all__ = ["INT64_MAX", "SliceSpec", "clamped", "merged_range"]

INT64_MAX = int(np.iinfo(np.int64).max)


def clamped(index: int, dim: int) -> int:
    """A start or end of a step-1 slice as the axis sees it: from the end if negative, then
    clamped to [0, dim]."""
    return min(max(index + dim if index < 0 else index, 0), dim)


@dataclass(frozen=True)
class SliceSpec:
    starts: list[int]
    ends: list[int]
    axes: list[int]
    steps: list[int]

    @classmethod
    def of(cls, node: gs.Node, scope: Scope) -> SliceSpec | None:
        """A Slice's parameters (attributes before opset 10, inputs from then on), or None
        where one is not constant."""
        names = ("starts", "ends", "axes", "steps")
        (_, starts), (_, ends), (has_axes, axes), (has_steps, steps) = (
            scope.ints_param(node, name, index, 10) for index, name in enumerate(names, 1)
        )
        if starts is None or ends is None or (has_axes and axes is None):
            return None
        if has_steps and steps is None:
            return None
        axes = axes if has_axes else list(range(len(starts)))
        steps = steps if has_steps else [1] * len(starts)
        if not len(starts) == len(ends) == len(axes) == len(steps):
            return None
        return cls(starts, ends, axes, steps)

    def by_axis(self, rank: int | None) -> dict[int, tuple[int, int, int]] | None:
        """(start, end, step) by axis counted from 0, or None where axes cannot be counted."""
        axes = normalized_axes(self.axes, rank)
        if axes is None:
            return None
        return dict(zip(axes, zip(self.starts, self.ends, self.steps, strict=True), strict=True))


def merged_range(
    first: tuple[int, int], second: tuple[int, int], dim: int | None
) -> tuple[int, int] | None:
    """(start, end) of one step-1 slice equal to ``second`` applied after ``first``.

    With the dim known, both are first counted from the start and clamped; without it, all
    four indices must be non-negative, and then the result holds whatever the dim is.
    """
    (start1, end1), (start2, end2) = first, second
    if dim is not None:
        start1, end1 = clamped(start1, dim), clamped(end1, dim)
        length = max(0, end1 - start1)
        return start1 + clamped(start2, length), start1 + clamped(end2, length)
    if min(start1, end1, start2, end2) < 0:
        return None
    return min(start1 + start2, INT64_MAX), min(end1, start1 + end2)
