"""The vocabulary of the channel analysis, and the book it keeps.

A :class:`Layout` says where channels lie in a tensor: along one axis, as a run of
:class:`Segment` (a group, its channel count, elements per channel). An :class:`Edit` is a
change a node needs when its channels go. :class:`GroupBook` holds what a walk over a graph
learns: layouts by tensor name, groups merged with union-find, the reasons that block a
group, and the edits; the classes with rules for ops build on it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from onnxslim.rewrite import constant_value, static_dim

__all__ = [
    "Segment",
    "Layout",
    "Edit",
    "CountRead",
    "ChannelGroup",
    "GroupAnalysis",
    "GroupBook",
    "tensor_shape",
    "tensor_rank",
    "static_size",
    "element_count",
]


@dataclass(frozen=True)
class Segment:
    """``size`` channels of ``group``, each ``block`` consecutive elements along the axis."""

    group: int
    size: int
    block: int = 1

    @property
    def length(self) -> int:
        return self.size * self.block


@dataclass(frozen=True)
class Layout:
    """Where channels lie in a tensor: along ``axis``, as consecutive segments."""

    axis: int
    segments: tuple[Segment, ...]

    @property
    def length(self) -> int:
        return sum(s.length for s in self.segments)

    def moved(self, axis: int, block: int = 1) -> Layout:
        return Layout(axis, tuple(Segment(s.group, s.size, s.block * block) for s in self.segments))


@dataclass(frozen=True)
class Edit:
    """A change a node needs when channels go.

    ``kind`` is ``slice`` (keep the entries of constant input ``index`` along ``axis`` that
    ``layout`` keeps), ``entry`` (set element ``axis`` of the 1-D constant shape input
    ``index`` to the kept length of ``layout``, unless it is 0 or -1), ``group`` (the Conv's
    ``group`` attribute becomes the kept length), ``split`` (explicit split sizes from the
    kept lengths of ``layouts``) or ``bounds`` (a Slice's start and end at position ``axis``
    of its axes, from ``layouts`` = what lies before and what is taken).
    ``producer`` marks constants whose magnitude along ``axis`` scores the channels:
    ``weight`` (Conv, Gemm, MatMul) or ``bn`` (a BatchNormalization scale). ``reader`` is set
    on an ``entry`` of a Concat whose shape other nodes read too: the edit applies to a copy
    of the Concat for that reader alone.
    """

    kind: str
    node: gs.Node
    index: int = 0
    axis: int = 0
    layout: Layout | None = None
    layouts: tuple[Layout, ...] = ()
    producer: str | None = None
    reader: gs.Node | None = None  # an entry's Reshape or Expand, where others share its shape


@dataclass(frozen=True)
class CountRead:
    """A shape entry computed from a channel count read through Shape: ``factor`` times the
    channel count of ``layout`` (a key/value head count times its copies, in grouped-query
    attention). At run time it follows whatever count pruning leaves."""

    layout: Layout
    factor: int = 1


@dataclass
class ChannelGroup:
    """Channels that are removed together, and why they may not be."""

    id: int
    size: int
    sources: list[gs.Node] = field(default_factory=list)
    members: list[gs.Node] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    unit: int = 1  # channels per prunable unit (an attention head's width)

    @property
    def label(self) -> str:
        node = (self.sources or self.members or [None])[0]
        return node.name if node is not None else f"group {self.id}"


@dataclass
class GroupAnalysis:
    """The result of the walk: groups by root id, the edits, and tensors with layouts."""

    groups: dict[int, ChannelGroup]
    edits: list[Edit]
    layouts: dict[str, Layout]
    find: Callable[[int], int]  # group id -> the id of the group it merged into


def tensor_shape(tensor: gs.Tensor) -> list | None:
    """The shape as a list of ints and symbolic names; None when unknown."""
    shape = tensor.shape
    return None if shape is None else list(shape)


def tensor_rank(tensor: gs.Tensor) -> int | None:
    shape = tensor_shape(tensor)
    return None if shape is None else len(shape)


def static_size(dims) -> int | None:
    """How many elements ``dims`` hold; None when one of them is not a known number."""
    values = [static_dim(d) for d in dims]
    return None if any(v is None for v in values) else math.prod(values)


def element_count(tensor: gs.Tensor) -> int | None:
    """How many elements ``tensor`` holds; None when its shape is not known in numbers."""
    shape = tensor_shape(tensor)
    return None if shape is None else static_size(shape)


class GroupBook:
    """Layouts, groups and edits of one walk over a graph (see the module docstring)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.parent: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.reasons: dict[int, list[str]] = defaultdict(list)
        self.sources: dict[int, list[gs.Node]] = defaultdict(list)
        self.members: dict[int, list[gs.Node]] = defaultdict(list)
        self.layouts: dict[str, Layout] = {}
        self.edits: list[Edit] = []
        self.units: dict[int, int] = {}
        # (id of a Reshape or Expand, entry of its shape input) -> the channel count the entry
        # reads through Shape: pruning changes both alike, as long as they agree.
        self.counts: dict[tuple[int, int], CountRead] = {}
        self.retired: set[int] = set()  # groups that a cut replaced by their parts

    # ---------------------------------------------------------------- union-find and blocking

    def find(self, group: int) -> int:
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]
            group = self.parent[group]
        return group

    def new_group(self, size: int, reason: str | None = None) -> int:
        group = len(self.parent)
        self.parent[group] = group
        self.sizes[group] = size
        if reason:
            self.reasons[group].append(reason)
        return group

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        if self.sizes[a] != self.sizes[b]:
            self.reasons[a].append(f"{self.sizes[a]} and {self.sizes[b]} channels meet")
        for table in (self.reasons, self.sources, self.members):
            table[a].extend(table.pop(b, []))
        if b in self.units:
            self.units[a] = self.units.pop(b)

    def block(self, layout: Layout | None, reason: str) -> None:
        for segment in layout.segments if layout else ():
            reasons = self.reasons[self.find(segment.group)]
            if reason not in reasons:
                reasons.append(reason)

    def unify(self, a: Layout, b: Layout, reason: str) -> Layout:
        """Make two layouts lose the same channels; block both where they do not line up.
        Returns ``a`` as it stands afterwards.

        Segments of the same length whose blocks differ by a whole factor line up once the
        finer group loses channels in runs of that factor: query heads meeting the key/value
        heads they share in grouped-query attention (4 query heads per block of 4 copies of a
        key head) go four by four."""
        while a.axis == b.axis and len(a.segments) == len(b.segments):
            pairs = list(zip(a.segments, b.segments, strict=True))
            uneven = [(x, y) for x, y in pairs if (x.size, x.block) != (y.size, y.block)]
            if not uneven:
                for x, y in pairs:
                    self.union(x.group, y.group)
                return a
            x, y = uneven[0]
            fine, coarse = (x, y) if x.block <= y.block else (y, x)
            root = self.find(fine.group)
            if x.length != y.length or coarse.block % fine.block or root == self.find(coarse.group):
                break
            apply = self.coarsen({root}, coarse.block // fine.block)
            if apply is None:
                break
            a, b = apply(a), apply(b)
        self.block(a, reason)
        self.block(b, reason)
        return a

    def touch(self, node: gs.Node, layout: Layout | None) -> None:
        for segment in layout.segments if layout else ():
            members = self.members[self.find(segment.group)]
            if all(member is not node for member in members):
                members.append(node)

    def layout(self, tensor: gs.Tensor) -> Layout | None:
        return self.layouts.get(tensor.name) if tensor.name else None

    def set(self, tensor: gs.Tensor, layout: Layout | None) -> None:
        if layout is not None and tensor.name:
            self.layouts[tensor.name] = layout

    def source(self, node: gs.Node, axis: int, size: int) -> Layout:
        group = self.new_group(size)
        self.sources[group].append(node)
        self.members[group].append(node)
        layout = Layout(axis, (Segment(group, size),))
        self.set(node.outputs[0], layout)
        return layout

    def edit(self, kind: str, node: gs.Node, **fields) -> None:
        """Record an edit; a constant to slice that does not span the channels (a block size
        taken from a stand-in dimension, say) blocks the group instead."""
        edit = Edit(kind, node, **fields)
        if kind == "slice":
            tensor = node.inputs[edit.index]
            shape = tensor_shape(tensor)
            if shape is None or shape[edit.axis] != edit.layout.length:
                self.block(edit.layout, f"{node.op} '{node.name}' does not span the channels")
                return
            if constant_value(tensor) is None:
                reason = f"{node.op} '{node.name}' computes its input '{tensor.name}'"
                self.block(edit.layout, reason)
                return
        self.edits.append(edit)

    def _rewrite(self, change: Callable[[Segment], tuple[Segment, ...]]):
        """Replace every segment of every layout, edit and count seen so far by ``change`` of
        it; returns the same replacement for layouts the caller holds."""

        def apply(old: Layout | None) -> Layout | None:
            if old is None:
                return None
            segments = tuple(new for segment in old.segments for new in change(segment))
            return old if segments == old.segments else Layout(old.axis, segments)

        self.layouts = {name: apply(old) for name, old in self.layouts.items()}
        self.edits = [
            dataclasses.replace(e, layout=apply(e.layout), layouts=tuple(map(apply, e.layouts)))
            for e in self.edits
        ]
        self.counts = {
            key: CountRead(apply(old.layout), old.factor) for key, old in self.counts.items()
        }
        return apply

    def coarsen(self, roots: set[int], unit: int) -> Callable[[Layout], Layout] | None:
        """Make the groups ``roots`` lose channels in runs of ``unit`` from now on, everywhere;
        returns the same rewrite for layouts the caller holds, or None (nothing changed) where
        a group does not divide into such runs."""
        if any(self.sizes[root] % unit for root in roots):
            return None
        apply = self._rewrite(
            lambda s: (
                (Segment(s.group, s.size // unit, s.block * unit),)
                if self.find(s.group) in roots
                else (s,)
            )
        )
        for root in roots:
            self.sizes[root] //= unit
            self.units[root] = self.units.get(root, 1) * unit
        return apply

    def split_units(self, layout: Layout, axis: int, unit: int) -> Layout | None:
        """Make the groups of ``layout`` lose channels in runs of ``unit`` from now on, and
        return the layout of the units along ``axis``; None where a group does not divide
        into such runs."""
        roots = {self.find(s.group) for s in layout.segments}
        if any(s.block != 1 for s in layout.segments) or self.coarsen(roots, unit) is None:
            return None
        return Layout(axis, tuple(Segment(s.group, s.size // unit) for s in layout.segments))

    def cut(self, layout: Layout, offsets: set[int]) -> Layout | None:
        """Split groups so that no offset along ``layout`` falls inside one: a Split or Slice
        that takes a group apart (a fused QKV projection) makes each part a group of its own,
        with the same producers, everywhere. None where an offset cuts a block of features."""
        parts: dict[int, list[int]] = {}
        start = 0
        for segment in layout.segments:
            inside = sorted(o - start for o in offsets if start < o < start + segment.length)
            root = self.find(segment.group)
            if inside and (root in parts or any(o % segment.block for o in inside)):
                return None
            if inside:
                bounds = [0, *(o // segment.block for o in inside), segment.size]
                parts[root] = [self._part_of(root, b - a) for a, b in itertools.pairwise(bounds)]
            start += segment.length
        if not parts:
            return layout
        self.retired.update(parts)
        return self._rewrite(
            lambda s: (
                tuple(Segment(g, self.sizes[g], s.block) for g in parts[self.find(s.group)])
                if self.find(s.group) in parts
                else (s,)
            )
        )(layout)

    def _part_of(self, root: int, size: int) -> int:
        group = self.new_group(size)
        for table in (self.reasons, self.sources, self.members):
            table[group] = list(table.get(root, []))
        if root in self.units:
            self.units[group] = self.units[root]
        return group

    def _only_first(self, node: gs.Node) -> Layout | None:
        """The layout of input 0; other inputs carrying channels block their groups."""
        for tensor in node.inputs[1:]:
            self.block(
                self.layout(tensor), f"{node.op} '{node.name}' reads channels as a parameter"
            )
        layout = self.layout(node.inputs[0]) if node.inputs else None
        self.touch(node, layout)
        return layout

    def _pass_through(self, node: gs.Node, layout: Layout | None) -> bool:
        for output in node.outputs:
            self.set(output, layout)
        return True

    @staticmethod
    def _broadcasts(tensor: gs.Tensor, axis_from_end: int) -> bool | None:
        """Whether ``tensor`` has size 1 (or no axis) at ``axis_from_end``; None if unknown."""
        shape = tensor_shape(tensor)
        if shape is None:
            return None
        return -axis_from_end > len(shape) or shape[axis_from_end] == 1

    @staticmethod
    def _why(node: gs.Node) -> str:
        return f"{node.op} '{node.name}' joins channel runs that do not line up"
