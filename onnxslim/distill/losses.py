"""Distillation losses as plain ONNX nodes, appended to the student's graph for training.

onnxruntime-training ships MSE, cross-entropy, BCE and L1 blocks, but nothing that compares two
distributions, so the losses are written here as ordinary ONNX ops whose gradients
onnxruntime-training knows (LogSoftmax, Exp, Mul, Sub, Div, Sqrt, ReduceSum, ReduceMean,
Transpose, SoftmaxCrossEntropyLoss). Being plain ONNX, the same nodes also run in an inference
session: :func:`loss_model` wraps them into a standalone model, which is how they are tested
against numpy without the training runtime.

* ``kl``: ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, summed over the class (last)
  axis and averaged over every other position, plus ``alpha`` × cross-entropy of the student's
  raw logits with hard labels when the data has labels (first matched output only).
* ``mse``: the mean squared difference.
* ``cosine``: the mean of ``1 - cos(student, teacher)`` along the last axis.
* ``ce``: cross-entropy with the hard labels alone, no teacher: plain fine-tuning, the
  baseline that distillation has to beat.

Several matched outputs add up to one loss. A position **mask** (a student input such as a
transformer's ``attention_mask``, ``[batch, positions]``) weighs the positions of each output
shaped ``[batch, positions, features]``: padding carries no meaning, and matching the
teacher's values there spends the student's capacity on nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import onnx
from onnx import TensorProto, helper

from onnxslim.distill.emitter import GraphEmitter

__all__ = [
    "LossKind",
    "LOSS_KINDS",
    "LossGraph",
    "PositionMask",
    "build_loss",
    "loss_model",
    "target_name",
    "LABELS_INPUT",
    "LOSS_OUTPUT",
    "CROSS_ENTROPY_OPSET",
]

LossKind = Literal["kl", "mse", "cosine", "ce"]
LOSS_KINDS: tuple[str, ...] = ("kl", "mse", "cosine", "ce")
LABELS_INPUT = "distill/labels"
LOSS_OUTPUT = "distill/loss"
_PREFIX = "distill/"
# Keeps the cosine's denominator away from zero for all-zero vectors.
_COSINE_EPS = 1e-12
# Keeps a masked mean finite for a batch whose mask is all zero.
_MASK_EPS = 1e-12
# The opset that brought SoftmaxCrossEntropyLoss.
CROSS_ENTROPY_OPSET = 12


def target_name(output: str) -> str:
    """The graph input carrying the teacher's values for student output ``output``."""
    return f"{_PREFIX}teacher/{output}"


class LossGraph(GraphEmitter):
    """Nodes, constants and new inputs (teacher targets, labels) computing one scalar loss."""

    def __init__(self, opset: int) -> None:
        super().__init__(_PREFIX, opset)
        self.inputs: list[onnx.ValueInfoProto] = []
        self.output = LOSS_OUTPUT

    def append_to(self, graph: onnx.GraphProto) -> None:
        """Add the loss to ``graph`` (whose outputs the loss reads)."""
        graph.node.extend(self.nodes)
        graph.initializer.extend(self.initializers)
        graph.input.extend(self.inputs)

    def mean_over(self, tensor: str, weights: str | None) -> str:
        """The mean of ``tensor``, or its mean weighted by ``weights`` (same shape)."""
        if weights is None:
            return self.mean_all(tensor)
        weighted = self.mean_all(self.op("Mul", [tensor, weights]))
        total = self.op("Add", [self.mean_all(weights), self.constant(_MASK_EPS)])
        return self.op("Div", [weighted, total])

    def sum_last_axis(self, tensor: str) -> str:
        return self.reduce("ReduceSum", tensor, [-1], keepdims=False)

    def mean_all(self, tensor: str) -> str:
        return self.reduce("ReduceMean", tensor, None, keepdims=False)

    def scaled(self, tensor: str, factor: float) -> str:
        return tensor if factor == 1.0 else self.op("Mul", [tensor, self.constant(factor)])


@dataclass(frozen=True)
class PositionMask:
    """A student input weighing positions in the loss: ``name``, of ``rank`` axes (batch
    first). It applies to outputs of one more axis (the features)."""

    name: str
    rank: int

    def applies_to(self, output: onnx.ValueInfoProto) -> bool:
        return len(output.type.tensor_type.shape.dim) == self.rank + 1


def _kl(
    graph: LossGraph, student: str, teacher: str, temperature: float, weights: str | None
) -> str:
    inverse = graph.constant(1.0 / temperature)
    log_student = graph.op("LogSoftmax", [graph.op("Mul", [student, inverse])], axis=-1)
    log_teacher = graph.op("LogSoftmax", [graph.op("Mul", [teacher, inverse])], axis=-1)
    gap = graph.op("Sub", [log_teacher, log_student])
    pointwise = graph.op("Mul", [graph.op("Exp", [log_teacher]), gap])
    return graph.scaled(graph.mean_over(graph.sum_last_axis(pointwise), weights), temperature**2)


def _mse(graph: LossGraph, student: str, teacher: str, weights: str | None) -> str:
    difference = graph.op("Sub", [student, teacher])
    squared = graph.op("Mul", [difference, difference])
    if weights is None:
        return graph.mean_all(squared)
    per_position = graph.reduce("ReduceMean", squared, [-1], keepdims=False)
    return graph.mean_over(per_position, weights)


def _cosine(graph: LossGraph, student: str, teacher: str, weights: str | None) -> str:
    dot = graph.sum_last_axis(graph.op("Mul", [student, teacher]))
    norms = graph.op(
        "Mul",
        [
            graph.sum_last_axis(graph.op("Mul", [student, student])),
            graph.sum_last_axis(graph.op("Mul", [teacher, teacher])),
        ],
    )
    denominator = graph.op("Sqrt", [graph.op("Add", [norms, graph.constant(_COSINE_EPS)])])
    mean_cosine = graph.mean_over(graph.op("Div", [dot, denominator]), weights)
    return graph.op("Sub", [graph.constant(1.0), mean_cosine])


def _cross_entropy(graph: LossGraph, student: str, rank: int) -> str:
    """Mean cross-entropy of raw logits (classes on the last axis) with integer labels."""
    logits = student
    if rank > 2:  # SoftmaxCrossEntropyLoss wants the classes on axis 1
        logits = graph.op("Transpose", [student], perm=[0, rank - 1, *range(1, rank - 1)])
    # Gradient builders read the second output (log-probabilities), so it must exist.
    loss, _ = graph.op_multi("SoftmaxCrossEntropyLoss", [logits, LABELS_INPUT], 2, reduction="mean")
    return loss


def _value_info(name: str, like: onnx.ValueInfoProto, drop_last: bool = False, elem=None):
    info = onnx.ValueInfoProto()
    info.CopyFrom(like)
    info.name = name
    if elem is not None:
        info.type.tensor_type.elem_type = elem
    if drop_last and info.type.tensor_type.HasField("shape"):
        del info.type.tensor_type.shape.dim[-1]
    return info


def build_loss(
    outputs: list[onnx.ValueInfoProto],
    kind: LossKind,
    *,
    opset: int,
    temperature: float = 4.0,
    alpha: float = 0.0,
    labels: bool = False,
    mask: PositionMask | None = None,
) -> LossGraph:
    """The loss over the student outputs ``outputs`` (value infos with type and shape).

    Each output ``o`` gets a graph input :func:`target_name` (o) of the same type for the
    teacher's values (except for ``ce``); with ``labels`` (``kl``) and for ``ce`` an int64
    input :data:`LABELS_INPUT` shaped like the first output without its class axis. With
    ``mask``, the outputs it applies to average over positions weighted by it.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss {kind!r}; choose one of {', '.join(LOSS_KINDS)}")
    graph = LossGraph(opset=opset)
    weights = None
    if mask is not None and any(mask.applies_to(o) for o in outputs):
        weights = graph.op("Cast", [mask.name], to=TensorProto.FLOAT)
    terms = []
    for output in outputs if kind != "ce" else ():
        teacher = target_name(output.name)
        graph.inputs.append(_value_info(teacher, output))
        masked = weights if mask is not None and mask.applies_to(output) else None
        if kind == "kl":
            terms.append(_kl(graph, output.name, teacher, temperature, masked))
        elif kind == "mse":
            terms.append(_mse(graph, output.name, teacher, masked))
        else:
            terms.append(_cosine(graph, output.name, teacher, masked))
    if kind == "ce" or (labels and kind == "kl" and alpha > 0):
        first = outputs[0]
        graph.inputs.append(
            _value_info(LABELS_INPUT, first, drop_last=True, elem=TensorProto.INT64)
        )
        rank = len(first.type.tensor_type.shape.dim)
        weight = 1.0 if kind == "ce" else alpha
        terms.append(graph.scaled(_cross_entropy(graph, first.name, rank), weight))
    total = terms[0]
    for term in terms[1:]:
        total = graph.op("Add", [total, term])
    graph.op("Identity", [total], output=graph.output)
    return graph


def loss_model(
    outputs: list[onnx.ValueInfoProto],
    graph: LossGraph,
    student_inputs: Sequence[onnx.ValueInfoProto] = (),
) -> onnx.ModelProto:
    """A standalone model: the student outputs, the loss's inputs and the ``student_inputs``
    it reads (a position mask) in, the loss out."""
    body = helper.make_graph(
        [],
        "distill_loss",
        [*outputs, *student_inputs],
        [helper.make_tensor_value_info(graph.output, TensorProto.FLOAT, [])],
    )
    graph.append_to(body)
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", graph.opset)])
