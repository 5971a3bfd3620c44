"""eliminate-noops and collapse-chains: remove nodes that compute nothing.

Exporters leave behind nodes that pass a tensor through unchanged (a Cast to the type it
already has, a Reshape to the shape it already has, a Mul by 1) and pairs of nodes whose
second undoes or subsumes the first (Transpose then its inverse, Squeeze then Unsqueeze of the
same axes, Reshape then Reshape). Every rewrite here keeps outputs bit for bit, with one
exception that no comparison can see: Add of +0 turns an input of -0.0 into +0.0.

A rewrite fires only on facts known before the model runs: constant parameters, and shapes
(from infer-shapes) where the parameters alone do not decide. Where a fact is missing the node
stays. Parameters are read in the form of the model's opset (Squeeze axes as an attribute
before opset 13 and an input from then on, and likewise for Slice, Pad, Split and Reshape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx

from onnxslim.model import iter_graphs, read_constant, read_constant_bytes
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass
from onnxslim.rewrite import (
    STANDARD_DOMAINS,
    bypass,
    describe_nodes,
    element_type,
    fresh_name,
    static_dim,
)

__all__ = ["EliminateNoops", "CollapseChains"]

_INT64_MAX = int(np.iinfo(np.int64).max)
# Checking whether a constant is all ones reads this many bytes first, so that a real weight
# is told apart without reading all of it.
_PREFIX_BYTES = 4096
# The neutral element of each arithmetic op, and which operand positions may hold it.
_NEUTRAL = {"Add": (0, (0, 1)), "Mul": (1, (0, 1)), "Sub": (0, (1,)), "Div": (1, (1,))}
# Element types whose neutral elements numpy can compare.
_ARITHMETIC_TYPES = frozenset(
    getattr(onnx.TensorProto, name)
    for name in (
        "FLOAT",
        "DOUBLE",
        "FLOAT16",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
    )
)

Dims = list[int | str | None]


@register_pass("eliminate-noops")
class EliminateNoops(Pass):
    """Remove nodes whose output equals one of their inputs.

    Cast and CastLike to the input's own type; Reshape to the input's shape; Transpose with the
    identity permutation; Expand, Pad, Slice and Resize that keep every element in place;
    Concat of one input and Split into one output; Mul and Div by 1, Add of 0 and Sub of 0
    where the constant does not broadcast the other operand to a larger shape. Graph outputs
    keep their names; a node that is the only way to give an output its name stays.
    """

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        notes = _Notes(self.name)
        opset = ctx.model.opset
        changed = False
        for g in iter_graphs(graph):
            for node in list(g.nodes):
                rule = _NOOP_RULES.get(node.op)
                if rule is None or node.domain not in STANDARD_DOMAINS or not node.inputs:
                    continue
                source = rule(node, opset, notes)
                if source is not None:
                    changed |= bypass(g, node, source)
        notes.emit(ctx)
        return changed


@register_pass("collapse-chains")
class CollapseChains(Pass):
    """Merge a node into the one that feeds it, where the pair is one op or none.

    Transpose after Transpose becomes one Transpose (none when they cancel); Reshape after
    Reshape, Flatten, Squeeze or Unsqueeze becomes one Reshape; Squeeze and Unsqueeze of the
    same axes cancel (either order); Slice after Slice becomes one Slice when their axes are
    disjoint or both step by 1. The first node must feed only the second and must not be a
    graph output, so that merging removes it.
    """

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        chains = _Chains(graph, ctx.model.opset, _Notes(self.name))
        changed = False
        for g in iter_graphs(graph):
            members = {id(n) for n in g.nodes}
            for node in list(g.nodes):
                rule = _CHAIN_RULES.get(node.op)
                if rule is None or node.domain not in STANDARD_DOMAINS or not node.inputs:
                    continue
                producer_ops, merge = rule
                while node.inputs:  # a merged node may merge again with its new feeder
                    first = chains.sole_feeder(node, producer_ops, members)
                    if first is None or not merge(chains, g, first, node):
                        break
                    changed = True
        chains.notes.emit(ctx)
        return changed


# ------------------------------------------------------------------------------ the graph


@dataclass
class _Notes:
    """Nodes left in place for a reason worth telling, grouped by reason."""

    pass_name: str
    by_reason: dict[str, list[gs.Node]] = field(default_factory=dict)

    def add(self, reason: str, node: gs.Node) -> None:
        self.by_reason.setdefault(reason, []).append(node)

    def emit(self, ctx: PassContext) -> None:
        for reason, nodes in self.by_reason.items():
            ctx.log(
                f"{self.pass_name}: left {len(nodes)} node(s) because {reason}: "
                f"{describe_nodes(nodes)}"
            )


def _disconnect(node: gs.Node) -> None:
    """Detach a node that nothing reads any more, so that it does not count as a consumer of
    its inputs for the rest of the pass (the manager removes it)."""
    node.inputs.clear()
    node.outputs.clear()


def _dims(tensor: gs.Tensor) -> Dims | None:
    """The tensor's dims: ints where static, names or None where not; None if rank unknown."""
    if tensor.shape is None:
        return None
    return [static_dim(d) if static_dim(d) is not None else d for d in tensor.shape]


def _rank(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def _elem_type(tensor: gs.Tensor) -> int | None:
    """The ONNX element type of a tensor, if known."""
    if isinstance(tensor, gs.Constant):
        return element_type(tensor)
    if tensor.dtype is None:
        return None
    try:
        return int(dtype_to_onnx(tensor.dtype))
    except (TypeError, KeyError, ValueError):  # a type that neither numpy nor gs knows
        return None


def _constant_ints(tensor: gs.Tensor) -> list[int] | None:
    """The values of a constant integer tensor of rank 0 or 1."""
    if not isinstance(tensor, gs.Constant):
        return None
    values = read_constant(tensor)
    if values.dtype.kind not in "iu" or values.ndim > 1:
        return None
    return [int(v) for v in values.reshape(-1)]


def _input_ints(node: gs.Node, index: int) -> tuple[bool, list[int] | None]:
    """(given, values) of optional input ``index``; values None when it is not constant."""
    if index >= len(node.inputs) or not node.inputs[index].name:
        return False, None
    return True, _constant_ints(node.inputs[index])


def _ints_param(
    node: gs.Node, opset: int, name: str, index: int, input_since: int
) -> tuple[bool, list[int] | None]:
    """(given, values) of an int-list parameter that is the attribute ``name`` before opset
    ``input_since`` and input ``index`` from then on."""
    if opset < input_since:
        value = node.attrs.get(name)
        return value is not None, None if value is None else [int(v) for v in value]
    return _input_ints(node, index)


def _normalized_axes(axes: list[int], rank: int | None) -> list[int] | None:
    """Axes counted from 0, or None where a negative axis meets an unknown rank or an axis
    repeats."""
    if rank is None and any(a < 0 for a in axes):
        return None
    normalized = [a + rank if a < 0 else a for a in axes]
    if len(set(normalized)) != len(normalized):
        return None
    return normalized


def _broadcast_keeps(dims: Dims, shape: list[int]) -> bool:
    """Whether broadcasting a tensor of ``dims`` against ``shape`` leaves its shape as it is."""
    if len(shape) > len(dims):
        return False
    return all(
        s == 1 or static_dim(d) == s for s, d in zip(reversed(shape), reversed(dims), strict=False)
    )


# ---------------------------------------------------------------------- no-ops, op by op

_Rule = Callable[[gs.Node, int, _Notes], "gs.Tensor | None"]


def _noop_cast(node: gs.Node, opset: int, notes: _Notes) -> gs.Tensor | None:
    source = node.inputs[0]
    if node.op == "CastLike":
        target = _elem_type(node.inputs[1]) if len(node.inputs) > 1 else None
    else:
        target = node.attrs.get("to")
    known = _elem_type(source)
    return source if known is not None and known == target else None


def _noop_reshape(node: gs.Node, opset: int, notes: _Notes) -> gs.Tensor | None:
    source, dims = node.inputs[0], _dims(node.inputs[0])
    _, target = _ints_param(node, opset, "shape", 1, 5)
    if target is None or dims is None or len(target) != len(dims):
        return None
    allowzero = bool(node.attrs.get("allowzero", 0))
    inferred = None
    for position, (dim, wanted) in enumerate(zip(dims, target, strict=True)):
        if wanted == 0 and not allowzero:
            continue  # copies the input's dim
        if wanted == -1 and inferred is None:
            inferred = position
        elif static_dim(dim) != wanted:
            return None
    # -1 takes what the other dims leave: the input's own dim, unless another one is 0.
    if inferred is not None and any(
        static_dim(d) == 0 for i, d in enumerate(dims) if i != inferred
    ):
        return None
    return source


def _noop_transpose(node: gs.Node, opset: int, notes: _Notes) -> gs.Tensor | None:
    source, perm = node.inputs[0], node.attrs.get("perm")
    if perm is None:  # reverses the dims
        rank = _rank(source)
        return source if rank is not None and rank <= 1 else None
    return source if list(perm) == list(range(len(perm))) else None


def _noop_expand(node: gs.Node, opset: int, notes: _Notes) -> gs.Tensor | None:
    source, dims = node.inputs[0], _dims(node.inputs[0])
    shape = _constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    if shape is None or dims is None:
        return None
    return source if _broadcast_keeps(dims, shape) else None


def _noop_pad(node: gs.Node, opset: int, notes: _Notes) -> gs.Tensor | None:
    given, pads = _ints_param(node, opset, "pads", 1, 11)
    return node.inputs[0] if given and pads is not None and not any(pads) else None


def _noop_slice(node: gs.Node, opset: int, notes: _Notes) -> gs.Tensor | None:
    source, dims = node.inputs[0], _dims(node.inputs[0])
    spec = _SliceSpec.of(node, opset)
    by_axis = spec.by_axis(_rank(source)) if spec is not None else None
    if by_axis is None:
        return None
    for axis, (start, end, step) in by_axis.items():
        dim = static_dim(dims[axis]) if dims is not None and axis < len(dims) else None
        if step != 1:
            return None
        if dim is None:
            if start != 0 or end < _INT64_MAX:
                return None
        elif _clamped(start, dim) != 0 or _clamped(end, dim) != dim:
            return None
    return source


def _noop_concat(node: gs.Node, opset: int, notes: _Notes) -> gs.Tensor | None:
    return node.inputs[0] if len(node.inputs) == 1 else None


def _noop_split(node: gs.Node, opset: int, notes: _Notes) -> gs.Tensor | None:
    source = node.inputs[0]
    if len(node.outputs) != 1:
        return None
    given, split = _ints_param(node, opset, "split", 1, 13)
    if not given:
        return source
    dims = _dims(source)
    axes = _normalized_axes([node.attrs.get("axis", 0)], _rank(source))
    if split is None or dims is None or axes is None or len(split) != 1:
        return None
    return source if static_dim(dims[axes[0]]) == split[0] else None


def _noop_resize(node: gs.Node, opset: int, notes: _Notes) -> gs.Tensor | None:
    """Resize to the input's size, in any mode that maps each output pixel onto the input
    pixel of the same index (all but tf_crop_and_resize, which reads a region)."""
    source = node.inputs[0]
    if node.attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        return None
    scales_index = 1 if opset < 11 else 2
    if scales_index < len(node.inputs) and node.inputs[scales_index].name:
        scales = node.inputs[scales_index]
        if not isinstance(scales, gs.Constant):
            return None
        values = read_constant(scales)
        if values.size:
            return source if bool(np.all(values == 1)) else None
    given, sizes = _input_ints(node, 3) if opset >= 11 else (False, None)
    dims = _dims(source)
    if not given or sizes is None or dims is None:
        return None
    axes = _normalized_axes(list(node.attrs.get("axes", range(len(dims)))), len(dims))
    if axes is None or len(axes) != len(sizes):
        return None
    return (
        source if all(static_dim(dims[a]) == s for a, s in zip(axes, sizes, strict=True)) else None
    )


def _noop_arithmetic(node: gs.Node, opset: int, notes: _Notes) -> gs.Tensor | None:
    """The other operand of Mul/Div by 1 or Add/Sub of 0, where the constant does not
    broadcast it to a larger shape."""
    if len(node.inputs) != 2:
        return None
    neutral, positions = _NEUTRAL[node.op]
    for position in positions:
        constant, other = node.inputs[position], node.inputs[1 - position]
        if not _filled_with(constant, neutral):
            continue
        dims = _dims(other)
        if dims is None:
            notes.add("the shape of their other operand is unknown (run infer-shapes)", node)
        elif _broadcast_keeps(dims, list(constant.shape)):
            return other
        else:
            notes.add("their neutral constant broadcasts the other operand to a larger shape", node)
        return None
    return None


def _filled_with(tensor: gs.Tensor, value: int) -> bool:
    """Whether ``tensor`` is a constant whose every element equals ``value``."""
    if not isinstance(tensor, gs.Constant) or element_type(tensor) not in _ARITHMETIC_TYPES:
        return False
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(element_type(tensor))).newbyteorder("<")
    prefix = read_constant_bytes(tensor, _PREFIX_BYTES)
    count = len(prefix) // dtype.itemsize
    if not np.all(np.frombuffer(prefix, dtype, count) == value):
        return False
    return count == int(np.prod(tensor.shape)) or bool(np.all(read_constant(tensor) == value))


_NOOP_RULES: dict[str, _Rule] = {
    "Cast": _noop_cast,
    "CastLike": _noop_cast,
    "Reshape": _noop_reshape,
    "Transpose": _noop_transpose,
    "Expand": _noop_expand,
    "Pad": _noop_pad,
    "Slice": _noop_slice,
    "Concat": _noop_concat,
    "Split": _noop_split,
    "Resize": _noop_resize,
    **dict.fromkeys(_NEUTRAL, _noop_arithmetic),
}


# ---------------------------------------------------------------------------------- Slice


def _clamped(index: int, dim: int) -> int:
    """A start or end of a step-1 slice as the axis sees it: from the end if negative, then
    clamped to [0, dim]."""
    return min(max(index + dim if index < 0 else index, 0), dim)


@dataclass(frozen=True)
class _SliceSpec:
    starts: list[int]
    ends: list[int]
    axes: list[int]
    steps: list[int]

    @classmethod
    def of(cls, node: gs.Node, opset: int) -> _SliceSpec | None:
        """A Slice's parameters (attributes before opset 10, inputs from then on), or None
        where one is not constant."""
        names = ("starts", "ends", "axes", "steps")
        (_, starts), (_, ends), (has_axes, axes), (has_steps, steps) = (
            _ints_param(node, opset, name, index, 10) for index, name in enumerate(names, 1)
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
        axes = _normalized_axes(self.axes, rank)
        if axes is None:
            return None
        return dict(zip(axes, zip(self.starts, self.ends, self.steps, strict=True), strict=True))


def _merged_range(
    first: tuple[int, int], second: tuple[int, int], dim: int | None
) -> tuple[int, int] | None:
    """(start, end) of one step-1 slice equal to ``second`` applied after ``first``.

    With the dim known, both are first counted from the start and clamped; without it, all
    four indices must be non-negative, and then the result holds whatever the dim is.
    """
    (start1, end1), (start2, end2) = first, second
    if dim is not None:
        start1, end1 = _clamped(start1, dim), _clamped(end1, dim)
        length = max(0, end1 - start1)
        return start1 + _clamped(start2, length), start1 + _clamped(end2, length)
    if min(start1, end1, start2, end2) < 0:
        return None
    return min(start1 + start2, _INT64_MAX), min(end1, start1 + end2)


# --------------------------------------------------------------------------------- chains


class _Chains:
    """What merging pairs of nodes needs: the opset, fresh names and the graph outputs."""

    def __init__(self, graph: gs.Graph, opset: int, notes: _Notes) -> None:
        self.graph = graph
        self.opset = opset
        self.notes = notes
        self.outputs = {id(t) for g in iter_graphs(graph) for t in g.outputs}
        self._taken: set[str] | None = None

    def sole_feeder(self, node: gs.Node, ops: frozenset[str], members: set[int]) -> gs.Node | None:
        """The node of ``ops`` in the same graph whose output only ``node`` reads."""
        middle = node.inputs[0]
        if not isinstance(middle, gs.Variable) or len(middle.inputs) != 1:
            return None
        first = middle.inputs[0]
        if (
            first.op not in ops
            or first.domain not in STANDARD_DOMAINS
            or id(first) not in members
            or not first.inputs
            or first.outputs[0] is not middle
            or len(middle.outputs) != 1
            or id(middle) in self.outputs
        ):
            return None
        return first

    def constant(self, base: str, values: list[int]) -> gs.Constant:
        """A new int64 constant with a name no graph of the model uses."""
        if self._taken is None:
            self._taken = {name for g in iter_graphs(self.graph) for name in g.tensors()}
        return gs.Constant(fresh_name(base, self._taken), np.array(values, dtype=np.int64))

    def set_ints(
        self, node: gs.Node, name: str, index: int, input_since: int, values: list[int]
    ) -> None:
        """Write an int-list parameter in the form of the model's opset (see _ints_param)."""
        if self.opset < input_since:
            node.attrs[name] = list(values)
            return
        while len(node.inputs) <= index:
            node.inputs.append(gs.Variable.empty())
        base = f"{node.name or node.outputs[0].name}_{name}"
        node.inputs[index] = self.constant(base, values)

    def merge_transposes(self, graph: gs.Graph, first: gs.Node, second: gs.Node) -> bool:
        source = first.inputs[0]
        perm1, perm2 = first.attrs.get("perm"), second.attrs.get("perm")
        if perm1 is None and perm2 is None:  # two reversals
            rank = _rank(source)
            composed = None if rank is None else list(range(rank))
            identity = True
        else:
            rank = len(perm1 if perm1 is not None else perm2)
            perm1 = list(perm1) if perm1 is not None else list(reversed(range(rank)))
            perm2 = list(perm2) if perm2 is not None else list(reversed(range(rank)))
            if len(perm1) != len(perm2):
                return False
            composed = [perm1[axis] for axis in perm2]
            identity = composed == list(range(rank))
        if identity and bypass(graph, second, source):
            _disconnect(first)
            return True
        if composed is None:
            return False
        # Where a graph output needs it, an identity stays as one node instead of two.
        second.inputs[0] = source
        second.attrs["perm"] = composed
        _disconnect(first)
        return True

    def merge_reshapes(self, graph: gs.Graph, first: gs.Node, second: gs.Node) -> bool:
        """Reshape(view(x)) is Reshape(x), except where the second's 0 copies a dim that
        only the intermediate tensor has: then the dim is written out, when it is static."""
        given, target = _ints_param(second, self.opset, "shape", 1, 5)
        if not given:
            return False
        resolved = target
        if not second.attrs.get("allowzero", 0):
            if target is None:
                return False  # a target computed at run time may copy dims
            resolved = self.copied_dims_written_out(first, second, target)
            if resolved is None:
                return False
        second.inputs[0] = first.inputs[0]
        _disconnect(first)
        if resolved != target:
            self.set_ints(second, "shape", 1, 5, resolved)
        return True

    def copied_dims_written_out(
        self, first: gs.Node, second: gs.Node, target: list[int]
    ) -> list[int] | None:
        """``target`` with each 0 that copies a dim of the intermediate tensor replaced by
        that dim, unless the first node copied it from its input too; None where the dim is
        not static."""
        first_target = None
        if first.op == "Reshape" and not first.attrs.get("allowzero", 0):
            first_target = _ints_param(first, self.opset, "shape", 1, 5)[1]
        middle = _dims(second.inputs[0]) or []
        resolved = list(target)
        for position, wanted in enumerate(target):
            if wanted != 0:
                continue
            copied = first_target is not None and position < len(first_target)
            if copied and first_target[position] == 0:
                continue  # the intermediate dim is the input's dim
            dim = static_dim(middle[position]) if position < len(middle) else None
            if not dim:
                self.notes.add(
                    "their 0 copies a dim of the intermediate tensor that is not static", second
                )
                return None
            resolved[position] = dim
        return resolved

    def cancel_squeezes(self, graph: gs.Graph, first: gs.Node, second: gs.Node) -> bool:
        """Squeeze then Unsqueeze of the same axes, or the reverse, give the input back."""
        source, middle = first.inputs[0], first.outputs[0]
        squeeze, unsqueeze = (first, second) if first.op == "Squeeze" else (second, first)
        _, unsqueeze_axes = _ints_param(unsqueeze, self.opset, "axes", 1, 13)
        if unsqueeze_axes is None:
            return False
        # Both sets of axes count in the rank of the tensor that has the unit dims.
        if first.op == "Squeeze":
            wide = source
            rank = _first_known(_rank(source), _rank(second.outputs[0]))
        else:
            wide = middle
            rank = _rank(source)
            rank = _first_known(_rank(middle), None if rank is None else rank + len(unsqueeze_axes))
        squeeze_axes = _squeeze_axes(squeeze, wide, rank, self.opset)
        unsqueeze_axes = _normalized_axes(unsqueeze_axes, rank)
        if squeeze_axes is None or unsqueeze_axes is None:
            return False
        if sorted(squeeze_axes) != sorted(unsqueeze_axes) or not bypass(graph, second, source):
            return False
        _disconnect(first)
        return True

    def merge_slices(self, graph: gs.Graph, first: gs.Node, second: gs.Node) -> bool:
        """Slices of disjoint axes become one; on a shared axis both must step by 1, and the
        indices must be non-negative or the dim static."""
        source = first.inputs[0]
        specs = (_SliceSpec.of(first, self.opset), _SliceSpec.of(second, self.opset))
        if specs[0] is None or specs[1] is None:
            return False
        rank, dims = _rank(source), _dims(source)
        by_axis1, by_axis2 = specs[0].by_axis(rank), specs[1].by_axis(rank)
        if by_axis1 is None or by_axis2 is None:
            return False
        merged = {**by_axis1, **by_axis2}
        for axis in by_axis1.keys() & by_axis2.keys():
            (start1, end1, step1), (start2, end2, step2) = by_axis1[axis], by_axis2[axis]
            if step1 != 1 or step2 != 1:
                return False
            dim = static_dim(dims[axis]) if dims is not None and axis < len(dims) else None
            bounds = _merged_range((start1, end1), (start2, end2), dim)
            if bounds is None:
                return False
            merged[axis] = (*bounds, 1)
        second.inputs[0] = source
        _disconnect(first)
        axes = sorted(merged)
        columns = {
            "starts": [merged[a][0] for a in axes],
            "ends": [merged[a][1] for a in axes],
            "axes": axes,
            "steps": [merged[a][2] for a in axes],
        }
        if self.opset < 10:  # no steps before opset 10: they are all 1 here
            del columns["steps"]
        for index, (name, values) in enumerate(columns.items(), 1):
            self.set_ints(second, name, index, 10, values)
        return True


def _first_known(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def _squeeze_axes(node: gs.Node, wide: gs.Tensor, rank: int | None, opset: int) -> list[int] | None:
    """The axes a Squeeze removes from ``wide``, counted from 0; without an axes parameter,
    the unit dims, which must then all be static."""
    given, axes = _ints_param(node, opset, "axes", 1, 13)
    if given:
        return None if axes is None else _normalized_axes(axes, rank)
    dims = _dims(wide)
    if dims is None or any(static_dim(d) is None for d in dims):
        return None
    return [i for i, d in enumerate(dims) if d == 1]


_ChainRule = tuple[frozenset[str], Callable[[_Chains, gs.Graph, gs.Node, gs.Node], bool]]

_CHAIN_RULES: dict[str, _ChainRule] = {
    "Transpose": (frozenset({"Transpose"}), _Chains.merge_transposes),
    "Reshape": (
        frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"}),
        _Chains.merge_reshapes,
    ),
    "Unsqueeze": (frozenset({"Squeeze"}), _Chains.cancel_squeezes),
    "Squeeze": (frozenset({"Unsqueeze"}), _Chains.cancel_squeezes),
    "Slice": (frozenset({"Slice"}), _Chains.merge_slices),
}
