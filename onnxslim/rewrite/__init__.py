"""The rewrite layer: what pass authors build rewrites from.

* :class:`Scope`: facts about every graph of a model, gathered once per pass run (producers,
  sole readers, the tensors no rewrite may remove, constants and scalars, fresh names) and the
  edits that keep them true (bypass, replace, detach);
* :class:`Rule`, :class:`Match`, :func:`fail`: a rewrite stated as an anchor op, a match that
  returns what the rewrite needs or the reason it does not apply, and the rewrite;
* :class:`RuleSet`, :class:`FusionSet`: the passes that run rules over every graph;
* :func:`shape_entries` and :func:`same_dim`: reading shape arithmetic (which dims a Reshape
  target is made of, and whether two dims are provably equal);
* the helpers beneath them, usable on their own: :func:`bypass`, :func:`replace_input`,
  :func:`element_type`, :func:`constant_value`, :func:`is_scalar`, :func:`fresh_name`...

See "Writing a pass" in the README, and :mod:`onnxslim.testing` for testing rules.
"""

from __future__ import annotations

from onnxslim.rewrite.edits import (
    bypass,
    can_bypass,
    detach,
    fresh_name,
    replace_input,
    replace_uses,
)
from onnxslim.rewrite.nodes import (
    ELEMENTWISE_OPS,
    NONDETERMINISTIC_OPS,
    STANDARD_DOMAINS,
    describe_nodes,
    is_op,
)
from onnxslim.rewrite.rules import (
    FusionSet,
    Match,
    MatchResult,
    Miss,
    NoopRule,
    Rule,
    RuleSet,
    fail,
    match_at,
    sweep,
)
from onnxslim.rewrite.scope import Scope
from onnxslim.rewrite.shapes import (
    DimOf,
    dim_aliases,
    dim_source,
    same_dim,
    shape_entries,
    static_size,
)
from onnxslim.rewrite.tensors import (
    NUMPY_NATIVE_TYPES,
    Dims,
    broadcast_keeps,
    constant_ints,
    constant_node_value,
    constant_value,
    dims,
    element_type,
    float_dtype,
    is_scalar,
    normalized_axes,
    rank,
    scalar_value,
    static_dim,
    static_shape,
)

__all__ = [
    "Scope",
    "DimOf",
    "shape_entries",
    "same_dim",
    "dim_aliases",
    "static_size",
    "dim_source",
    "Rule",
    "NoopRule",
    "Match",
    "Miss",
    "MatchResult",
    "fail",
    "match_at",
    "RuleSet",
    "FusionSet",
    "sweep",
    "bypass",
    "can_bypass",
    "replace_input",
    "replace_uses",
    "detach",
    "fresh_name",
    "element_type",
    "describe_nodes",
    "static_dim",
    "static_shape",
    "dims",
    "rank",
    "float_dtype",
    "Dims",
    "NUMPY_NATIVE_TYPES",
    "constant_value",
    "constant_node_value",
    "constant_ints",
    "scalar_value",
    "is_scalar",
    "normalized_axes",
    "broadcast_keeps",
    "is_op",
    "NONDETERMINISTIC_OPS",
    "ELEMENTWISE_OPS",
    "STANDARD_DOMAINS",
]
