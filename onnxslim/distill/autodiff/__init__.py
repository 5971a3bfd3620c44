"""Reverse-mode differentiation of ONNX graphs into ONNX graphs.

The backward pass of a model is written as ordinary ONNX nodes (MatMul, ConvTranspose,
ReduceSum, Where, ScatterND, ...), so any onnxruntime build runs it: the CPU wheel, or
onnxruntime-gpu on CUDA. :func:`build_backward` differentiates a graph with respect to chosen
tensors; the rules, one small function per op family, live in
:mod:`onnxslim.distill.autodiff.rules` and register themselves with
:func:`~onnxslim.distill.autodiff.registry.gradient`.
"""

from __future__ import annotations

from onnxslim.distill.autodiff.backward import Backward, build_backward, differentiable_tensors
from onnxslim.distill.autodiff.registry import RULES, GradientContext, gradient
from onnxslim.distill.autodiff.tensors import TensorTable

__all__ = [
    "Backward",
    "build_backward",
    "differentiable_tensors",
    "RULES",
    "GradientContext",
    "gradient",
    "TensorTable",
]
