"""A test kit for pass and rule authors: graphs from ONNX text, one call to run a rule or a pass,
and output comparison on real onnxruntime sessions.

>>> from onnxslim.rewrite import Match, Rule, RuleSet, fail
>>> class DropIdentity(Rule):
...     anchors = ("Identity",)
...     def match(self, node, scope):
...         return Match(node) if scope.can_bypass(node) else fail("it names a graph output")
...     def rewrite(self, match):
...         return match.scope.bypass(match.node)
>>> model = parse_model('''
...     <ir_version: 8, opset_import: ["" : 17]>
...     g (float[2] x) => (float[2] y) {
...         t = Identity(x)
...         y = Relu(t)
...     }''')
>>> result = apply(DropIdentity, model)
>>> result.ops
Counter({'Relu': 1})
>>> assert_same_outputs(model, result.model)
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.parser

from onnxslim.model import ModelSource, iter_graphs, load, to_proto
from onnxslim.pipeline import FixedPoint, Pass, PassContext, PassManager, PassRecord
from onnxslim.registry import registered_passes
from onnxslim.rewrite.rules import FusionSet, Rule, RuleSet, match_at
from onnxslim.rewrite.scope import Scope

__all__ = [
    "parse_model",
    "apply",
    "Applied",
    "explain",
    "run_outputs",
    "assert_same_outputs",
    "op_counts",
]


def parse_model(text: str, *, check: bool = True) -> onnx.ModelProto:
    """A model from ONNX's textual syntax (``onnx.parser``), checked with onnx.checker.

    Initializers go in the graph header, e.g. ``g (float[2] x) => (float[2] y)
    <float[1] c = {2.0}> { y = Mul(x, c) }``.
    """
    proto = onnx.parser.parse_model(text)
    if check:
        onnx.checker.check_model(proto, full_check=True)
    return proto


@dataclass
class Applied:
    """What :func:`apply` gives back: the rewritten model and what the run said."""

    model: onnx.ModelProto
    changed: bool
    notes: list[str] = field(default_factory=list)
    records: list[PassRecord] = field(default_factory=list)

    @property
    def ops(self) -> Counter:
        """How many nodes of each op the result has, subgraphs included."""
        return op_counts(self.model)


def _as_pass(step: Pass | Rule | type[Rule] | type[Pass]) -> Pass:
    if isinstance(step, Pass):
        return step
    if isinstance(step, type) and issubclass(step, Pass):
        return step()
    rule = step if isinstance(step, type) else type(step)
    base = FusionSet if rule.min_opset > 1 else RuleSet
    wrapper = type(f"{rule.__name__}Pass", (base,), {"rules": (step,), "__doc__": rule.__doc__})
    wrapper.name = rule.__name__
    return wrapper()


def apply(
    step: Pass | Rule | type[Rule] | type[Pass] | Sequence[Pass | Rule | type],
    model: ModelSource | str,
    *,
    infer_shapes: bool = True,
    target_opset: int | None = None,
    until_fixed_point: bool = False,
    check: bool = True,
) -> Applied:
    """Run a rule (wrapped in a rule set of its own), a pass, or a list of them on ``model``
    (ONNX text, a path, bytes, a ModelProto or a Model; it is not modified) the way the pass
    manager does, and return the result as a ModelProto with the run's notes.

    ``infer_shapes`` runs infer-shapes first (rules read shapes). ``target_opset`` is the
    pipeline's ``--target-opset``. ``until_fixed_point`` repeats the steps until nothing
    changes. ``check`` runs onnx.checker with full shape inference on the result.
    """
    if isinstance(model, str) and "{" in model:
        model = parse_model(model)
    loaded = load(model)
    steps = [_as_pass(s) for s in (step if isinstance(step, list | tuple) else [step])]
    if infer_shapes:
        steps.insert(0, registered_passes()["infer-shapes"]())
    manager = PassManager([FixedPoint(steps)] if until_fixed_point else steps)
    records = manager.run(loaded, PassContext(model=loaded, target_opset=target_opset))
    proto = to_proto(loaded)
    if check:
        onnx.checker.check_model(proto, full_check=True)
    return Applied(
        model=proto,
        changed=any(r.changed for r in records if not r.name.startswith("infer-shapes")),
        notes=[note for record in records for note in record.notes],
        records=records,
    )


def explain(rule: Rule | type[Rule], model: ModelSource | str) -> list[str]:
    """For every node the rule anchors at, ``Op 'name': matches`` or ``Op 'name': REASON``:
    why a rule does (not) fire, without changing anything."""
    if isinstance(model, str) and "{" in model:
        model = parse_model(model)
    loaded = load(model)
    registered_passes()["infer-shapes"]().run(loaded.graph, PassContext(model=loaded))
    instance = rule() if isinstance(rule, type) else rule
    scope = Scope(loaded.graph, opset=loaded.opset)
    lines = []
    for graph in scope.graphs:
        for node in graph.nodes:
            if node.op in instance.anchors and node.domain in instance.domains:
                result = match_at(instance, node, scope)
                said = "matches" if result else result.reason
                lines.append(f"{node.op} '{node.name}': {said}")
    return lines


def op_counts(model: onnx.ModelProto) -> Counter:
    """Nodes per op type in ``model`` and its subgraphs."""
    graph = load(model).graph
    return Counter(node.op for g in iter_graphs(graph) for node in g.nodes)


def run_outputs(
    model: ModelSource,
    feeds: Mapping[str, np.ndarray] | None = None,
    *,
    seed: int = 0,
    optimize: bool = False,
) -> dict[str, np.ndarray]:
    """The outputs of ``model`` on onnxruntime's CPU provider, by name. Without ``feeds``,
    inputs are synthesized from the signature (``onnxslim.inputs``). onnxruntime's own graph
    optimizations are off unless ``optimize``, so that they cannot hide a rewrite's mistake."""
    from onnxslim.inputs import input_specs, synthesize_inputs
    from onnxslim.runtime import open_session, run

    source = model if isinstance(model, str | os.PathLike) else to_proto(load(model))
    if feeds is None:
        feeds = synthesize_inputs(input_specs(source), seed=seed)
    with open_session(source, optimize=optimize) as session:
        wanted = {i.name for i in session.get_inputs()}
        return run(session, {name: value for name, value in feeds.items() if name in wanted})


def assert_same_outputs(
    reference: ModelSource,
    candidate: ModelSource,
    feeds: Mapping[str, np.ndarray] | None = None,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    seed: int = 0,
    optimize: bool = False,
) -> None:
    """Run both models on the same inputs (given, or synthesized from the reference's
    signature) and assert that every output of the reference has an equal output of the
    same name in the candidate, within ``atol`` + ``rtol`` * |reference|."""
    from onnxslim.inputs import input_specs, synthesize_inputs

    reference = to_proto(load(reference))
    if feeds is None:
        feeds = synthesize_inputs(input_specs(reference), seed=seed)
    expected = run_outputs(reference, feeds, optimize=optimize)
    actual = run_outputs(candidate, feeds, optimize=optimize)
    assert list(actual) == list(expected), f"outputs differ: {list(actual)} != {list(expected)}"
    for name, value in expected.items():
        np.testing.assert_allclose(
            actual[name], value, atol=atol, rtol=rtol, err_msg=f"output '{name}'"
        )
