"""Transposes on both sides of a Reshape that only splits or merges axes: one Transpose, or none.

A Reshape that splits ``[B, S, H*D]`` into ``[B, S, H, D]`` or merges axes back does not mix
elements across axes, it regroups neighbours. A Transpose next to it can move to its other
side wherever each regrouped run of axes stays together and in order under the permutation
(the permutation is remapped onto the groups), and there it meets the Transpose on that side:
they compose into one or cancel. ``Transpose -> Reshape -> Transpose`` thus loses at least one
Transpose, in either direction: the first one pushed down, or the second one pulled up.
"""

from __future__ import annotations

from collections import Counter

import onnx_graphsurgeon as gs
from onnxslim.passes.eliminations.transpose_through import (
    inverse_perm,
    is_identity_perm,
    transpose_perm,
)

from onnxslim.rewrite import Dims, Match, MatchResult, Rule, Scope, fail

__all__ = ["TransposeAcrossReshape"]

Groups = list[tuple[list[int], list[int]]]


class TransposeAcrossReshape(Rule):
    """``Transpose(p) -> Reshape -> Transpose(r)``, where the Reshape only splits or merges
    axes that either permutation keeps together and in order: the first Transpose moves after
    the Reshape (which then reshapes the untransposed tensor) and composes with the second, or
    the second moves before it and composes with the first; an identity leaves no Transpose.
    Each Transpose must feed only the next node, and all dims must be known (static, or named
    dims that the Reshape keeps whole)."""

    anchors = ("Reshape",)

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        if node.attrs.get("allowzero", 0):
            return fail("it has allowzero=1")
        first = scope.feeder(node, node.inputs[0], "Transpose", once=True)
        second = scope.read_once(node.outputs[0], "Transpose")
        if first is None or second is None:
            return fail("it is not between Transposes that only it reads and writes for")
        source, before = first.inputs[0], scope.dims(node.inputs[0])
        perm, after_perm = transpose_perm(first, scope), transpose_perm(second, scope)
        target = scope.ints_param(node, "shape", 1, 5)[1]
        if perm is None or after_perm is None or before is None or target is None:
            return fail("a permutation, the input's dims or the target is not known")
        after = reshaped_dims(before, target)
        if after is None or None in before or len(after_perm) != len(after):
            return fail("the Reshape's output dims do not follow from its input's")
        pushed = self._pushed_down(perm, before, after, after_perm, scope.dims(source))
        if pushed is not None:
            composed, shape = pushed
            if is_identity_perm(composed) and not scope.can_bypass(second, node.outputs[0]):
                return fail("the Transpose after it names a graph output", tell=True)
            return Match([first, node, second], down=True, composed=composed, target=shape)
        pulled = self._pulled_up(perm, before, after, after_perm)
        if pulled is None:
            return fail("the Reshape mixes axes that the permutations move apart")
        composed, shape = pulled
        return Match([first, node, second], down=False, composed=composed, target=shape)

    @staticmethod
    def _pushed_down(perm, before, after, after_perm, source_dims):
        """(the second Transpose's new permutation, the Reshape's new target) with the first
        Transpose moved after the Reshape, or None."""
        moved = moved_through(perm, before, after)
        if moved is None or source_dims is None:
            return None
        dims, perm_after = moved
        shape = reshape_target(dims, source_dims)
        if shape is None:
            return None
        return [perm_after[axis] for axis in after_perm], shape

    @staticmethod
    def _pulled_up(perm, before, after, after_perm):
        """(the first Transpose's new permutation, the Reshape's new target) with the second
        Transpose moved before the Reshape, or None. Pulling ``r`` up through ``y -> z`` is
        pushing its inverse down through the Reshape read backwards, from ``z`` to ``y``."""
        final = [after[axis] for axis in after_perm]
        moved = moved_through(inverse_perm(after_perm), after, before)
        if moved is None:
            return None
        _, perm_before = moved
        pulled = inverse_perm(perm_before)
        composed = [perm[axis] for axis in pulled]
        shape = reshape_target(final, [before[axis] for axis in pulled])
        return None if shape is None else (composed, shape)

    def rewrite(self, match: Match) -> None:
        first, node, second = match.nodes
        scope = match.scope
        middle = node.outputs[0]
        if match.down:
            node.inputs[0] = first.inputs[0]
            scope.detach(first)
            middle.shape = None  # now in the untransposed layout
            if is_identity_perm(match.composed):
                scope.bypass(second, middle)
            else:
                second.attrs["perm"] = match.composed
        else:
            node.inputs[0].shape = None
            if is_identity_perm(match.composed):
                node.inputs[0] = first.inputs[0]
                scope.detach(first)
            else:
                first.attrs["perm"] = match.composed
            result = second.outputs[0]
            scope.detach(second)
            node.outputs[0] = result
        scope.set_ints_param(node, "shape", 1, 5, match.target)


def axis_groups(before: Dims, after: Dims) -> Groups | None:
    """The runs of axes a Reshape from ``before`` to ``after`` maps onto each other (each
    ``(input axes, output axes)`` of equal size, in order), or None where it mixes them. A
    named dim must map onto the same name alone; sizes of 1 left at the end join the last
    group."""
    groups: Groups = []
    i = j = 0
    while i < len(before) and j < len(after):
        if isinstance(before[i], str) or isinstance(after[j], str):
            if before[i] != after[j]:
                return None
            groups.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        left, right = [i], [j]
        size_left, size_right = before[i], after[j]
        i, j = i + 1, j + 1
        while size_left != size_right:
            if size_left < size_right and i < len(before) and isinstance(before[i], int):
                size_left *= before[i]
                left.append(i)
                i += 1
            elif size_right < size_left and j < len(after) and isinstance(after[j], int):
                size_right *= after[j]
                right.append(j)
                j += 1
            else:
                return None
        groups.append((left, right))
    rest_before, rest_after = list(range(i, len(before))), list(range(j, len(after)))
    if any(before[k] != 1 for k in rest_before) or any(after[k] != 1 for k in rest_after):
        return None
    if groups:
        groups[-1][0].extend(rest_before)
        groups[-1][1].extend(rest_after)
    return groups if groups else None


def moved_through(perm: list[int], before: Dims, after: Dims) -> tuple[Dims, list[int]] | None:
    """For ``Reshape(Transpose(x, perm))`` from ``before`` to ``after`` dims: the dims the
    Reshape gives ``x`` instead and the permutation that then yields the same tensor,
    ``Transpose(Reshape(x, dims), perm')``; None where a group of axes the Reshape joins or
    splits does not stay together and in order in ``x``."""
    groups = axis_groups(before, after)
    if groups is None or len(perm) != len(before):
        return None
    for left, _ in groups:
        start = perm[left[0]]
        if [perm[axis] for axis in left] != list(range(start, start + len(left))):
            return None
    order = sorted(range(len(groups)), key=lambda k: perm[groups[k][0][0]])
    dims = [after[axis] for k in order for axis in groups[k][1]]
    offsets, position = {}, 0
    for k in order:
        offsets[k] = position
        position += len(groups[k][1])
    moved = [offsets[k] + t for k, (_, right) in enumerate(groups) for t in range(len(right))]
    return dims, moved


def reshaped_dims(before: Dims, target: list[int]) -> Dims | None:
    """The dims a Reshape (``allowzero=0``) to ``target`` gives a tensor of ``before`` dims,
    named dims carried through 0 entries or left over for -1; None where they do not follow."""
    dims: Dims = []
    for position, entry in enumerate(target):
        if entry == 0:
            if position >= len(before):
                return None
            dims.append(before[position])
        else:
            dims.append(None if entry == -1 else entry)
    if target.count(-1) > 1 or None in before:
        return None
    if -1 in target:
        ints, names = _product(before)
        known_ints, known_names = _product([d for d in dims if d is not None])
        names.subtract(known_names)
        left = +names
        if known_ints == 0 or ints % known_ints or any(v < 0 for v in names.values()):
            return None
        size = ints // known_ints
        if sum(left.values()) > 1 or (left and size != 1):
            return None
        dims[target.index(-1)] = next(iter(left)) if left else size
    return dims


def _product(dims: Dims) -> tuple[int, Counter]:
    ints, names = 1, Counter()
    for dim in dims:
        if isinstance(dim, str):
            names[dim] += 1
        else:
            ints *= dim
    return ints, names


def reshape_target(dims: Dims, source: Dims) -> list[int] | None:
    """A constant Reshape target giving a tensor of ``source`` dims the ``dims``: a named dim
    is 0 where the source has it at the same place, else the one -1; None where two are left
    or a size is 0 (which a target would read as a copy)."""
    target: list[int] = []
    for position, dim in enumerate(dims):
        if isinstance(dim, str):
            same_place = position < len(source) and source[position] == dim
            target.append(0 if same_place else -1)
        elif dim:
            target.append(dim)
        else:
            return None
    return None if target.count(-1) > 1 else target
