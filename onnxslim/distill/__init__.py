"""Knowledge distillation on ONNX graphs, with any onnxruntime build.

The original model is the teacher, a compressed one (pruned, quantized, or smaller) the
student; the student's weights are fine-tuned on the teacher's outputs directly on its ONNX
graph, then written back into it unchanged in structure. The ``native`` backend (default)
differentiates the graph itself (:mod:`onnxslim.distill.autodiff`) and trains in plain
onnxruntime inference sessions, on the CPU or on CUDA; the ``ort-training`` backend uses
onnxruntime-training (the ``train`` extra) where it is installed.
"""

from __future__ import annotations

from onnxslim.distill.api import DistillOptions, DistillReport, distill, distill_model
from onnxslim.distill.errors import (
    DistillDataError,
    DistillError,
    DistillOptionError,
    GradientError,
    OutputMismatchError,
    QuantizedStudentError,
    TrainingRuntimeMissingError,
    UnsupportedVersionError,
)

__all__ = [
    "distill",
    "distill_model",
    "DistillOptions",
    "DistillReport",
    "DistillError",
    "DistillDataError",
    "DistillOptionError",
    "GradientError",
    "OutputMismatchError",
    "QuantizedStudentError",
    "TrainingRuntimeMissingError",
    "UnsupportedVersionError",
]
