"""The rewrite layer: Scope's facts and edits, rules and rule sets, the test kit."""

from __future__ import annotations

import doctest

import numpy as np
import onnx_graphsurgeon as gs
import pytest

import onnxslim.rewrite.rules
import onnxslim.rewrite.scope
import onnxslim.rewrite.shapes
import onnxslim.testing
from onnxslim.model import iter_graphs, load
from onnxslim.rewrite import (
    DimOf,
    Match,
    NoopRule,
    Rule,
    RuleSet,
    Scope,
    fail,
    same_dim,
    shape_entries,
)
from onnxslim.testing import apply, assert_same_outputs, explain, parse_model


@pytest.mark.parametrize(
    "module",
    [onnxslim.rewrite.rules, onnxslim.rewrite.scope, onnxslim.rewrite.shapes, onnxslim.testing],
)
def test_docstring_examples_run(module):
    failures, _ = doctest.testmod(module)
    assert failures == 0


class AddZero(Rule):
    """Add of a zero constant, second operand only: commuted operands are the framework's job."""

    anchors = ("Add",)
    commute = True

    def match(self, node, scope):
        if not scope.is_scalar(node.inputs[1], 0.0):
            return fail("the second operand is not zero", tell=True)
        return Match(node, source=node.inputs[0])

    def rewrite(self, match):
        return match.scope.bypass(match.node, match.source)


ADDS = """
<ir_version: 8, opset_import: ["" : 17]>
adds (float[3] x) => (float[3] y) <float zero = {0.0}, float one = {1.0}> {
    a = Add (x, zero)
    b = Add (zero, a)
    c = Add (b, one)
    y = Relu (c)
}
"""


def test_commuted_operands_match_either_way_round():
    model = parse_model(ADDS)

    result = apply(AddZero, model)

    assert result.ops == {"Add": 1, "Relu": 1}
    assert_same_outputs(model, result.model)


def test_misses_worth_telling_end_in_the_notes_grouped_by_reason():
    result = apply(AddZero, ADDS)

    assert result.notes == [
        "AddZero: left 1 node(s) because the second operand is not zero: Add 'c'"
    ]


def test_explain_says_why_each_anchor_matches_or_not():
    assert explain(AddZero, ADDS) == [
        "Add '': matches",
        "Add '': matches",
        "Add '': the second operand is not zero",
    ]


BRANCHES = """
<ir_version: 8, opset_import: ["" : 17]>
branches (bool c, float[2] x) => (float[2] y) {
    y = If (c) <
        then_branch = then_graph () => (float[2] t) { i = Identity (x)
                                                     t = Neg (i) },
        else_branch = else_graph () => (float[2] e) { j = Identity (x)
                                                     e = Abs (j) }
    >
}
"""


class DropIdentity(NoopRule):
    anchors = ("Identity",)

    def source(self, node, scope):
        return node.inputs[0]


def test_rule_sets_walk_subgraphs():
    model = parse_model(BRANCHES)

    result = apply(DropIdentity, model)

    assert result.ops == {"If": 1, "Neg": 1, "Abs": 1}
    for flag in (True, False):
        feeds = {"c": np.array(flag), "x": np.array([1.5, -2.0], np.float32)}
        assert_same_outputs(model, result.model, feeds)


def test_rule_sets_are_dataclasses_whose_fields_are_options():
    class Choosy(RuleSet):
        keep_adds: bool = False
        rules = (AddZero,)

        def make_rules(self):
            return [] if self.keep_adds else super().make_rules()

    assert apply(Choosy(keep_adds=True), ADDS).ops["Add"] == 3
    assert apply(Choosy(), ADDS).ops["Add"] == 1
    assert [spec.name for spec in Choosy.options()] == ["keep_adds"]


# ----------------------------------------------------------------------------------- Scope

OUTER_READ = """
<ir_version: 8, opset_import: ["" : 17]>
outer (bool c, float[2] x) => (float[2] y) {
    s = Relu (x)
    y = If (c) <
        then_branch = then_graph () => (float[2] t) { t = Identity (s) },
        else_branch = else_graph () => (float[2] e) { e = Neg (s) }
    >
}
"""


def _scope(text: str) -> tuple[Scope, dict[str, gs.Tensor], list[gs.Graph]]:
    graph = load(parse_model(text)).graph
    graphs = list(iter_graphs(graph))
    tensors = {name: t for g in graphs for name, t in g.tensors().items()}
    return Scope(graph), tensors, graphs


def test_scope_protects_every_graphs_inputs_and_outputs():
    scope, tensors, _ = _scope(OUTER_READ)

    assert scope.is_protected(tensors["x"]) and scope.is_protected(tensors["y"])
    assert scope.is_protected(tensors["t"]) and scope.is_protected(tensors["e"])
    assert not scope.is_protected(tensors["s"])


def test_a_reader_in_another_graph_is_no_sole_reader():
    scope, tensors, graphs = _scope(OUTER_READ)

    relu_output = tensors["s"]

    # Neg in the else branch is its only node reader, but lives in another graph.
    assert scope.readers(relu_output)
    assert scope.sole_reader(relu_output) is None


def test_fresh_names_avoid_names_of_every_graph():
    scope, _, _ = _scope(OUTER_READ)

    assert scope.fresh_name("t") == "t_1"
    assert scope.fresh_name("t") == "t_2"
    assert scope.fresh_name("new") == "new"


HEAD_SPLIT = """
<ir_version: 8, opset_import: ["" : 17]>
split (float[batch, seq, 32] x) => (float[batch, seq, 4, 8] y) {
    shape = Shape (x)
    zero = Constant <value = int64 {0}> ()
    one = Constant <value = int64 {1}> ()
    b = Gather (shape, zero)
    s = Gather (shape, one)
    axes = Constant <value = int64[1] {0}> ()
    b1 = Unsqueeze (b, axes)
    s1 = Unsqueeze (s, axes)
    heads = Constant <value = int64[2] {4, 8}> ()
    target = Concat <axis = 0> (b1, s1, heads)
    y = Reshape (x, target)
}
"""


def test_shape_entries_read_dims_and_constants_of_a_computed_shape():
    scope, tensors, _ = _scope(HEAD_SPLIT)
    x = tensors["x"]

    entries = shape_entries(tensors["target"])

    assert entries == [DimOf(x, 0), DimOf(x, 1), 4, 8]
    assert same_dim(DimOf(tensors["y"], 1), DimOf(x, 1))
    assert not same_dim(DimOf(tensors["y"], 0), DimOf(x, 1))


def test_only_feeds_follows_shape_chains_into_removed_nodes():
    scope, tensors, graphs = _scope(HEAD_SPLIT)
    reshape = next(n for n in graphs[0].nodes if n.op == "Reshape")

    # x feeds the Reshape and, through Shape -> Gather -> Concat, only its target.
    assert scope.only_feeds(tensors["x"], [reshape]) is False  # x is a graph input
    assert scope.only_feeds(tensors["b1"], [reshape])
    assert not scope.only_feeds(tensors["b1"], [])
