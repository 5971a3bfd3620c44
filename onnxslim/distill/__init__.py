"""Knowledge distillation on ONNX graphs with onnxruntime-training.

The original model is the teacher, a compressed one (pruned, or smaller) the student; the
student's weights are fine-tuned on the teacher's outputs directly on its ONNX graph, then
written back into it unchanged in structure. Needs the ``train`` extra (onnxruntime-training),
which lives in its own environment; everything else in onnxslim works without it.
"""

from __future__ import annotations

from onnxslim.distill.api import DistillOptions, DistillReport, distill, distill_model
from onnxslim.distill.errors import (
    DistillDataError,
    DistillError,
    DistillOptionError,
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
    "OutputMismatchError",
    "QuantizedStudentError",
    "TrainingRuntimeMissingError",
    "UnsupportedVersionError",
]
