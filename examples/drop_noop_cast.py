"""An example plugin: ``onnxslim optimize model.onnx --plugin examples/drop_noop_cast.py``.

It removes Cast nodes that convert a tensor to the type it already has, which exporters
emit around dtype-generic code. ``tests/test_examples.py`` tests it with ``onnxslim.testing``.
"""

from __future__ import annotations

from onnxslim import Match, Rule, RuleSet, fail, register_pass


class NoopCast(Rule):
    """A Cast to the element type its input already has."""

    anchors = ("Cast",)

    def match(self, node, scope):
        source = node.inputs[0]
        if scope.element_type(source) != node.attrs["to"]:
            return fail("it changes the type")
        if not scope.can_bypass(node):
            return fail("its output is a graph output that only it can name", tell=True)
        return Match(node, source=source)

    def rewrite(self, match):
        match.scope.bypass(match.node, match.source)


@register_pass("drop-noop-cast")
class DropNoopCast(RuleSet):
    """Remove Cast nodes whose input already has the target type."""

    rules = (NoopCast,)
