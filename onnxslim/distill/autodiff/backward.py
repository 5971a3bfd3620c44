"""Reverse-mode differentiation of an ONNX graph into more ONNX nodes.

Given a forward graph whose last nodes compute a scalar loss, :func:`build_backward` writes
the nodes that compute the gradient of the loss with respect to chosen tensors (the
parameters). It walks the forward nodes in reverse topological order; each node on a path
from a parameter to the loss hands the gradients of its outputs to its op's rule
(:mod:`onnxslim.distill.autodiff.rules`), which writes the gradients of its inputs. A tensor
read by several nodes sums what each of them sends back.

Everything that could stop this is found before a single node is written: a node on such a
path whose op has no rule raises :class:`~onnxslim.distill.errors.GradientError` naming
every such op and node.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import onnx

from onnxslim.distill.autodiff import rules as _rules  # noqa: F401  (registers the rules)
from onnxslim.distill.autodiff.registry import GradientContext, rule_for
from onnxslim.distill.autodiff.tensors import TensorTable
from onnxslim.distill.emitter import GraphEmitter
from onnxslim.distill.errors import GradientError

__all__ = ["Backward", "build_backward", "differentiable_tensors"]


@dataclass
class Backward:
    """The backward pass of a graph.

    ``forward`` are copies of the forward nodes, some with outputs added that the backward
    nodes read (a MaxPool's indices); run them instead of the originals. ``gradients`` maps
    each parameter to its gradient tensor; ``without_gradient`` lists the parameters that the
    loss does not depend on through differentiable inputs (they cannot be trained).
    """

    forward: list[onnx.NodeProto]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    gradients: dict[str, str] = field(default_factory=dict)
    without_gradient: list[str] = field(default_factory=list)


def _active(
    nodes: Sequence[onnx.NodeProto], sources: Collection[str], table: TensorTable
) -> set[str]:
    """Tensors that depend on ``sources`` through differentiable inputs and are floats."""
    active = set(sources)
    for node in nodes:
        rule = rule_for(node)
        if not any(
            name in active and (rule is None or rule.differentiable(position))
            for position, name in enumerate(node.input)
        ):
            continue
        integers = rule is not None and rule.integer_outputs
        for output in node.output:
            if output and (integers or table.elem_type(output) is None or table.is_float(output)):
                active.add(output)
    return active


def _ancestors(nodes: Sequence[onnx.NodeProto], target: str) -> set[str]:
    needed = {target}
    for node in reversed(nodes):
        if any(output in needed for output in node.output):
            needed.update(name for name in node.input if name)
    return needed


def differentiable_tensors(
    nodes: Sequence[onnx.NodeProto], sources: Collection[str], target: str, table: TensorTable
) -> set[str]:
    """Tensors on a differentiable path from one of ``sources`` to ``target``."""
    return _active(nodes, sources, table) & _ancestors(nodes, target)


def _check_rules(nodes: Sequence[onnx.NodeProto], relevant: set[str]) -> None:
    missing = []
    for node in nodes:
        if rule_for(node) is not None:
            continue
        if any(name in relevant for name in node.input) and any(
            name in relevant for name in node.output
        ):
            label = f"{node.op_type} (node '{node.name}')" if node.name else node.op_type
            if node.domain not in ("", "ai.onnx"):
                label = f"{node.domain}.{label}"
            missing.append(label)
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise GradientError(
            f"no gradient rule for {shown}: the trained weights reach the loss through "
            "it; freeze the weights before it (freeze=...) or train with backend='ort-training'"
        )


def build_backward(
    graph: onnx.GraphProto,
    loss: str,
    parameters: Sequence[str],
    *,
    opset: int,
    table: TensorTable | None = None,
    straight_through: Collection[str] = (),
    prefix: str = "grad/",
) -> Backward:
    """The nodes computing d``loss``/d``p`` for each ``p`` in ``parameters``.

    ``graph`` holds the forward nodes in topological order, ``loss`` names its scalar loss.
    ``table`` describes its tensors (built from ``graph``, which should then carry inferred
    shapes, when not given). Round nodes named in ``straight_through`` pass gradients through
    unchanged (fake quantization's straight-through estimator) instead of blocking them.
    """
    table = table or TensorTable.of(graph)
    forward = [_copy(node) for node in graph.node]
    relevant = differentiable_tensors(forward, parameters, loss, table)
    _check_rules(forward, relevant)
    emit = GraphEmitter(prefix, opset)
    grads: dict[str, list[str]] = {}
    if loss in relevant:
        dtype = table.dtype(loss)
        grads[loss] = [emit.constant(1.0, "float32" if dtype is None else dtype)]

    def total(name: str) -> str | None:
        parts = grads.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            grads[name] = [emit.op("Sum", parts)]
        return grads[name][0]

    for node in reversed(forward):
        if not any(output in grads for output in node.output):
            continue
        rule = rule_for(node)
        wants = [
            bool(name) and name in relevant and rule.differentiable(position)
            for position, name in enumerate(node.input)
        ]
        if not any(wants):
            continue
        context = GradientContext(
            node,
            [total(output) if output else None for output in node.output],
            wants,
            emit,
            table,
            straight_through=node.name in straight_through,
        )
        for position, gradient in enumerate(rule.build(context)):
            if gradient is not None and position < len(wants) and wants[position]:
                grads.setdefault(node.input[position], []).append(gradient)

    result = Backward(forward=forward)
    for parameter in parameters:
        gradient = total(parameter)
        if gradient is None:
            result.without_gradient.append(parameter)
        else:
            result.gradients[parameter] = gradient
    result.nodes = emit.nodes
    result.initializers = emit.initializers
    return result


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy
