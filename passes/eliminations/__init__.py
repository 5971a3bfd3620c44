"""Eliminations: rules that remove nodes computing nothing, one rule per module, and the
passes that run them.

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

from onnxslim.passes.eliminations.cancel_squeezes import CancelSqueezes
from onnxslim.passes.eliminations.dropout import RemoveDropout
from onnxslim.passes.eliminations.identity import RemoveIdentity
from onnxslim.passes.eliminations.merge_reshapes import MergeReshapes
from onnxslim.passes.eliminations.merge_slices import MergeSlices
from onnxslim.passes.eliminations.merge_transposes import MergeTransposes
from onnxslim.passes.eliminations.merge_unsqueezes import MergeUnsqueezes
from onnxslim.passes.eliminations.neutral_arithmetic import NeutralArithmetic
from onnxslim.passes.eliminations.noop_cast import NoopCast
from onnxslim.passes.eliminations.noop_concat import NoopConcat
from onnxslim.passes.eliminations.noop_expand import NoopExpand
from onnxslim.passes.eliminations.noop_pad import NoopPad
from onnxslim.passes.eliminations.noop_reshape import NoopReshape
from onnxslim.passes.eliminations.noop_resize import NoopResize
from onnxslim.passes.eliminations.noop_slice import NoopSlice
from onnxslim.passes.eliminations.noop_split import NoopSplit
from onnxslim.passes.eliminations.noop_transpose import NoopTranspose
from onnxslim.passes.eliminations.static_shape_values import StaticShapeValues
from onnxslim.passes.eliminations.symbolic_expand import SymbolicExpandShape
from onnxslim.passes.eliminations.symbolic_reshape import SymbolicReshapeTarget
from onnxslim.passes.eliminations.transpose_reshape import TransposeAcrossReshape
from onnxslim.passes.eliminations.transpose_through import TransposeThrough
from onnxslim.passes.eliminations.unit_axis_transpose import UnitAxisTranspose

from onnxslim.registry import register_pass
from onnxslim.rewrite import RuleSet

__all__ = [
    "EliminateNoops",
    "CollapseChains",
    "SimplifyShapes",
    "SymbolicShapes",
    "NoopCast",
    "NoopReshape",
    "NoopTranspose",
    "NoopExpand",
    "NoopPad",
    "NoopSlice",
    "NoopConcat",
    "NoopSplit",
    "NoopResize",
    "NeutralArithmetic",
    "MergeTransposes",
    "MergeReshapes",
    "MergeUnsqueezes",
    "CancelSqueezes",
    "MergeSlices",
    "RemoveIdentity",
    "RemoveDropout",
    "StaticShapeValues",
    "SymbolicReshapeTarget",
    "SymbolicExpandShape",
    "TransposeThrough",
    "TransposeAcrossReshape",
    "UnitAxisTranspose",
]


@register_pass("eliminate-noops")
class EliminateNoops(RuleSet):
    """Remove nodes whose output equals one of their inputs.

    Cast and CastLike to the input's own type; Reshape to the input's shape; Transpose with the
    identity permutation; Expand, Pad, Slice and Resize that keep every element in place;
    Concat of one input and Split into one output; Mul and Div by 1, Add of 0, Sub of 0, And
    with True and Or with False where the constant does not broadcast the other operand to a
    larger shape. Graph outputs
    keep their names; a node that is the only way to give an output its name stays.
    """

    rules = (
        NoopCast,
        NoopReshape,
        NoopTranspose,
        NoopExpand,
        NoopPad,
        NoopSlice,
        NoopConcat,
        NoopSplit,
        NoopResize,
        NeutralArithmetic,
    )


@register_pass("collapse-chains")
class CollapseChains(RuleSet):
    """Merge a node into the one that feeds it, where the pair is one op or none.

    Transpose after Transpose becomes one Transpose (none when they cancel); Reshape after
    Reshape, Flatten, Squeeze or Unsqueeze becomes one Reshape; Unsqueeze after Unsqueeze
    becomes one; Squeeze and Unsqueeze of the same axes cancel (either order); Slice after
    Slice becomes one Slice when their axes are disjoint or both step by 1. The first node
    must feed only the second and must not be a graph output, so that merging removes it. An
    elementwise op, Softmax or reduction between Transposes runs on the untransposed tensors
    (constants permuted, axes renumbered) where that leaves fewer Transposes: the
    permutations compose with the one after it, or vanish. Transposes on both sides of a
    Reshape that only splits or merges axes they keep together compose across it into one
    Transpose, or none; a Transpose that moves only axes of size 1 next to a Reshape becomes
    a Reshape and merges with it.
    """

    rules = (
        MergeTransposes,
        MergeReshapes,
        MergeUnsqueezes,
        CancelSqueezes,
        MergeSlices,
        TransposeThrough,
        TransposeAcrossReshape,
        UnitAxisTranspose,
    )


@register_pass("simplify-shapes")
class SimplifyShapes(RuleSet):
    """Replace Gather and Slice of a Shape, and Shape with start/end, by constants where
    every dim they select is static.

    ``Gather(Shape(x), i)`` (constant indices, negative ones counted from the end, axis 0),
    ``Slice(Shape(x), starts, ends, axes, steps)`` with constant parameters and
    ``Shape(x, start, end)`` become int64 constants. The consumers read the constant; a
    tensor that is a graph output keeps its node, so that its name survives.
    """

    rules = (StaticShapeValues,)


@register_pass("symbolic-shapes")
class SymbolicShapes(RuleSet):
    """Write Reshape targets and Expand shapes computed from runtime shapes as constants.

    A Reshape target entry equal to the input's dim at its position becomes 0 (copy, with
    ``allowzero=0``), a static dim its size, and one entry left over -1; an Expand shape entry
    equal to the input's dim it lines up with becomes 1. Where more than one Reshape entry (or
    any Expand entry) stays unknown, the node keeps its computed shape. The default pipeline
    runs it after the fusions, which read head counts from the computed shapes. A -1 next to an
    entry that is 0 at run time (an empty batch) is undecided where the computed target was
    not: leave this pass out for models that run empty batches (``--skip symbolic-shapes``).
    """

    rules = (SymbolicReshapeTarget, SymbolicExpandShape)
