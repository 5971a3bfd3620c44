"""Rules and rule sets: a rewrite stated as an anchor, a match and a replacement.

A :class:`Rule` names the op(s) it starts from (``anchors``), says in ``match`` whether the
node and its neighbourhood form its pattern (a :class:`Match` with what the rewrite needs, or
:func:`fail` with the reason), and edits the graph in ``rewrite``. A :class:`RuleSet` is the
pass that runs rules: it walks every graph (If/Loop/Scan bodies too), offers each node of a
rule's domains to the rules anchored at its op, rewrites each match at once (so no two matches
share a node, and later matches see earlier rewrites), and ends with the reasons worth telling
in the pass record: ``left N node(s) because ...``.

>>> import numpy as np
>>> from onnx import helper
>>> class NoopCast(Rule):
...     '''A Cast to the type its input already has.'''
...     anchors = ("Cast",)
...     def match(self, node, scope):
...         source, to = node.inputs[0], helper.tensor_dtype_to_np_dtype(node.attrs["to"])
...         if source.dtype is None or np.dtype(source.dtype) != to:
...             return fail("it changes the type")
...         return Match(node, source=source)
...     def rewrite(self, match):
...         return match.scope.bypass(match.node, match.source)
>>> class DropNoopCast(RuleSet):  # add @register_pass("drop-noop-cast") to use it by name
...     '''Remove Casts to the type their input already has.'''
...     rules = (NoopCast,)
"""

from __future__ import annotations

import weakref
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx_graphsurgeon as gs

from onnxslim import opsets
from onnxslim.errors import PassError
from onnxslim.pipeline import Pass, PassContext
from onnxslim.rewrite.nodes import STANDARD_DOMAINS
from onnxslim.rewrite.scope import Scope

__all__ = [
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
]

# Retries of one node after a rewrite that kept it (a merged node may merge again).
_MAX_REWRITES_PER_NODE = 64
# Binary ops whose operands may be swapped.
COMMUTATIVE_OPS = frozenset(
    {"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal"}
)


class Match:
    """What a rule found at a node: the nodes its rewrite consumes, and named values.

    ``Match(node, source=x)`` or ``Match([a, b, c], axis=-1)``; the values read back as
    attributes (``match.source``). The rule set fills in ``node`` (the anchor), ``scope``
    and ``rule`` before calling ``rewrite``.
    """

    node: gs.Node
    scope: Scope
    rule: Rule

    def __init__(self, nodes: gs.Node | Iterable[gs.Node], **values: Any) -> None:
        self.nodes = [nodes] if isinstance(nodes, gs.Node) else list(nodes)
        self.commuted = False
        self.__dict__.update(values)

    @property
    def graph(self) -> gs.Graph:
        return self.scope.graph_of(self.node)

    def __repr__(self) -> str:
        return f"Match({', '.join(n.op for n in self.nodes)})"


@dataclass(frozen=True)
class Miss:
    """Why a rule does not match a node. With ``tell``, the reason ends up in the pass record
    (``left N node(s) because REASON``); without, it only explains the miss to a rule's author
    (:func:`onnxslim.testing.explain`)."""

    reason: str
    tell: bool = False

    def __bool__(self) -> bool:
        return False


MatchResult = Match | Miss


def fail(reason: str, *, tell: bool = False) -> Miss:
    """A miss with its reason: ``return fail("the scale is not a constant")``."""
    return Miss(reason, tell)


class Rule:
    """One rewrite, matched at nodes of the ``anchors`` ops.

    Subclasses set the class attributes and implement ``match`` and ``rewrite``:

    * ``anchors``: the op types a match starts from (the node ``match`` receives);
    * ``domains``: the domains of those nodes (default: the standard ONNX domain);
    * ``min_opset`` / ``max_opset``: the default-domain opsets the rule applies at. Below
      ``min_opset`` a :class:`FusionSet` raises the model's opset when asked to
      (``--target-opset``), or notes what raising it would fuse;
    * ``commute``: match a commutative binary anchor with its operands either way round;
    * ``produces``: the op the rule writes, named in notes.

    ``match`` must not change the graph. ``rewrite`` edits it through ``match.scope`` and
    returns False when it changed nothing after all (True or None: it did). Per-run state may
    live on the rule: a rule set makes new rule objects for every run.
    """

    anchors: ClassVar[tuple[str, ...]] = ()
    domains: ClassVar[tuple[str | None, ...]] = STANDARD_DOMAINS
    min_opset: ClassVar[int] = 1
    max_opset: ClassVar[int | None] = None
    commute: ClassVar[bool] = False
    produces: ClassVar[str] = ""

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        raise NotImplementedError(f"{type(self).__name__} must implement match(node, scope)")

    def rewrite(self, match: Match) -> bool | None:
        raise NotImplementedError(f"{type(self).__name__} must implement rewrite(match)")

    def finish(self, scope: Scope) -> bool:
        """Called after every node was offered: for rewrites decided over all matches of a run
        (sharing one new constant, say). True when it changed the graph."""
        return False

    @property
    def name(self) -> str:
        return type(self).__name__

    def not_past(self, opset: int) -> bool:
        """Whether ``opset`` is not above ``max_opset``."""
        return self.max_opset is None or opset <= self.max_opset


class NoopRule(Rule):
    """A rule for nodes whose output equals one of their inputs: ``source`` says which one
    (or why none does), and the rewrite bypasses the node, keeping graph output names."""

    def source(self, node: gs.Node, scope: Scope) -> gs.Tensor | Miss:
        raise NotImplementedError(f"{type(self).__name__} must implement source(node, scope)")

    def match(self, node: gs.Node, scope: Scope) -> MatchResult:
        if not node.inputs:
            return fail("it has no inputs")
        source = self.source(node, scope)
        if isinstance(source, Miss):
            return source
        if not scope.can_bypass(node, source):
            return fail("its output is a graph output that only it can name")
        return Match(node, source=source)

    def rewrite(self, match: Match) -> bool:
        return match.scope.bypass(match.node, match.source)


def match_at(rule: Rule, node: gs.Node, scope: Scope) -> MatchResult:
    """``rule.match``, then, for a commuting rule, the same with the anchor's operands
    swapped (kept swapped when that matched; the op is commutative, so nothing changes)."""
    result = rule.match(node, scope)
    if result or not rule.commute or node.op not in COMMUTATIVE_OPS or len(node.inputs) != 2:
        return result
    _swap(node)
    second = rule.match(node, scope)
    if second:
        second.commuted = True
        return second
    _swap(node)
    return result


def _swap(node: gs.Node) -> None:
    first, second = node.inputs
    node.inputs[0], node.inputs[1] = second, first


@dataclass
class RuleSet(Pass):
    """A pass made of rules (``rules``: Rule classes), run over every graph of the model.

    Subclass it, list the rules and register it::

        @register_pass("my-fusions")
        class MyFusions(RuleSet):
            '''What the rules do, for `onnxslim passes`.'''
            rules = (FuseThis, FuseThat)

    Override ``make_rules`` to choose rules by the pass's options.
    """

    rules: ClassVar[tuple[type[Rule] | Rule, ...]] = ()
    # Whether rules above the model's opset may raise it (FusionSet); else they sit out.
    raises_opset: ClassVar[bool] = False
    # Notes already given in a context: a note that every fixed-point round would repeat is
    # given once per pipeline run.
    _noted: tuple[weakref.ref, set[str]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Options are dataclass fields: a subclass that adds some must be a dataclass itself
        # (is_dataclass() is already true of it through its base, so nothing else would).
        super().__init_subclass__(**kwargs)
        if "__dataclass_fields__" not in cls.__dict__:
            dataclass(cls)

    def make_rules(self) -> list[Rule]:
        """The rules of one run: new objects, so that per-run state starts empty."""
        return [rule() if isinstance(rule, type) else rule for rule in self.rules]

    def raise_opset_to(self, ctx: PassContext) -> int | None:
        """The opset to raise the model to when rules above its opset would match."""
        return None

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        scope = Scope(graph, opset=ctx.model.opset)
        rules = [rule for rule in self.make_rules() if rule.not_past(scope.opset)]
        changed = False
        if self.raises_opset and any(rule.min_opset > scope.opset for rule in rules):
            raised = self._raise_for(rules, scope, graph, ctx)
            if raised:
                changed = True
                scope = Scope(graph, opset=ctx.model.opset)
                rules = [rule for rule in rules if rule.not_past(scope.opset)]
        ready = [rule for rule in rules if rule.min_opset <= scope.opset]
        if ready:
            changed |= bool(sweep(ready, scope))
            for rule in ready:
                changed |= rule.finish(scope)
        for line in scope.note_lines(self.name):
            self.note_once(ctx, line)
        return changed

    def _raise_for(
        self, rules: list[Rule], scope: Scope, graph: gs.Graph, ctx: PassContext
    ) -> bool:
        """Raise the opset when rules waiting for a higher one would match, or say what
        raising it would fuse. True when the opset was raised."""
        waiting = [rule for rule in rules if rule.min_opset > scope.opset]
        found = sweep(waiting, scope, rewrite=False)
        if not found:
            return False
        target = self.raise_opset_to(ctx)
        reachable = [rule for rule in waiting if found[rule] and target is not None]
        reachable = [rule for rule in reachable if rule.min_opset <= target]
        if reachable and ctx.model.graph is graph:
            what = _fused(reachable, found)
            opset = scope.opset
            try:
                opsets.convert(ctx.model, target)
            except PassError as exc:
                self.note_once(ctx, f"{what} left unfused: {exc}")
                return False
            ops = ", ".join(dict.fromkeys(rule.produces or rule.name for rule in reachable))
            ctx.log(f"raised the opset from {opset} to {target} to fuse {ops}")
            return True
        for rule in waiting:
            if found[rule]:
                needed = rule.min_opset
                self.note_once(
                    ctx,
                    f"{_fused([rule], found)} left unfused: {rule.produces or rule.name} needs "
                    f"opset {needed}, the model has {scope.opset}; --target-opset {needed} "
                    f"(or {self.name}(target_opset={needed})) would fuse them",
                )
        return False

    def note_once(self, ctx: PassContext, message: str) -> None:
        """``ctx.log(message)``, unless this pass already said it in this pipeline run."""
        if self._noted is None or self._noted[0]() is not ctx:
            self._noted = (weakref.ref(ctx), set())
        if message not in self._noted[1]:
            self._noted[1].add(message)
            ctx.log(message)


def _fused(rules: Sequence[Rule], found: Counter) -> str:
    counts = defaultdict(int)
    for rule in rules:
        counts[rule.produces or rule.name] += found[rule]
    return ", ".join(f"{count} decomposed {op}" for op, count in counts.items())


@dataclass
class FusionSet(RuleSet):
    """A rule set whose rules write ops of newer opsets: with ``target_opset`` (or the
    pipeline's ``--target-opset``) the model's opset is raised to fuse them."""

    target_opset: int | None = None
    raises_opset: ClassVar[bool] = True

    def raise_opset_to(self, ctx: PassContext) -> int | None:
        return self.target_opset if self.target_opset is not None else ctx.target_opset


def sweep(rules: Sequence[Rule], scope: Scope, rewrite: bool = True) -> Counter:
    """Offer every node of every graph to the rules anchored at its op; rewrite each match at
    once (``rewrite=False``: only count disjoint matches). Misses worth telling go to
    ``scope.leave``. Returns the number of matches per rule."""
    by_op: dict[str, list[Rule]] = defaultdict(list)
    for rule in rules:
        for op in rule.anchors:
            by_op[op].append(rule)
    found: Counter = Counter()
    claimed: set[int] = set()
    for graph in list(scope.graphs):
        for node in list(graph.nodes):
            candidates = by_op.get(node.op)
            if not candidates:
                continue
            for _ in range(_MAX_REWRITES_PER_NODE):
                if not node.outputs or id(node) in claimed:
                    break
                match = _first_match(candidates, node, scope, tell=rewrite)
                if match is None:
                    break
                found[match.rule] += 1
                if not rewrite:
                    claimed.update(id(n) for n in match.nodes)
                    if match.commuted:
                        _swap(node)
                    break
                if match.rule.rewrite(match) is False:
                    if match.commuted:
                        _swap(node)
                    found[match.rule] -= 1
                    break
    return +found


def _first_match(rules: list[Rule], node: gs.Node, scope: Scope, tell: bool) -> Match | None:
    misses = []
    for rule in rules:
        if node.domain not in rule.domains:
            continue
        result = match_at(rule, node, scope)
        if result:
            result.node, result.scope, result.rule = node, scope, rule
            return result
        misses.append(result)
    if tell:
        for miss in misses:
            if miss.tell and all(n is not node for n in scope.notes.get(miss.reason, ())):
                scope.leave(miss.reason, node)
    return None
