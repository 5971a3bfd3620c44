"""Which of the student's initializers train.

Both backends train float32 initializers minus those matched by ``freeze`` patterns
(shell-style: ``head.*``, ``*bias``, ``onnx::Conv_53``); they differ in how they tell weights
from other constants:

* native: every initializer with more than one element that some node reads through a
  differentiable input (the gradient rules say which inputs are). Scalars are constants of the
  architecture (``1/√d``, ``ε``, GELU's ``0.5``), never weights. Initializers the loss turns
  out not to depend on are dropped later, when the backward pass is built.
* ort-training: initializers read only through the inputs where onnxruntime-training
  propagates gradients to a weight.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence

import onnx

from onnxslim.distill.autodiff.registry import rule_for

__all__ = ["is_frozen", "native_parameters", "ort_training_parameters"]

# Inputs (by position) through which onnxruntime-training propagates gradients to a weight.
_ORT_TRAINABLE_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Mul": (0, 1),
    "Div": (0, 1),
    "BatchNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "Gather": (0,),
    "PRelu": (1,),
}


def is_frozen(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _readers(proto: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in proto.graph.node:
        for position, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, position))
    return readers


def _float_initializers(
    proto: onnx.ModelProto, freeze: Sequence[str]
) -> Iterator[onnx.TensorProto]:
    for tensor in proto.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and not is_frozen(tensor.name, freeze):
            yield tensor


def native_parameters(proto: onnx.ModelProto, freeze: Sequence[str] = ()) -> list[str]:
    """Candidate parameters for the native backend, in graph order."""
    readers = _readers(proto)
    names = []
    for tensor in _float_initializers(proto, freeze):
        size = 1
        for dim in tensor.dims:
            size *= dim
        if size <= 1:
            continue
        uses = readers.get(tensor.name, [])
        rules = [(rule_for(node), position) for node, position in uses]
        if any(rule is None or rule.differentiable(position) for rule, position in rules):
            names.append(tensor.name)
    return names


def ort_training_parameters(proto: onnx.ModelProto, freeze: Sequence[str] = ()) -> list[str]:
    """Parameters for onnxruntime-training, in graph order."""
    readers = _readers(proto)
    names = []
    for tensor in _float_initializers(proto, freeze):
        uses = readers.get(tensor.name)
        if uses and all(
            position in _ORT_TRAINABLE_INPUTS.get(node.op_type, ()) for node, position in uses
        ):
            names.append(tensor.name)
    return names
