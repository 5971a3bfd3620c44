"""onnxslim: graph-level ONNX optimization and compression.

The public API, for post-export steps and for pass authors::

    import onnxslim
    model, report = onnxslim.optimize("model.onnx", output="model.slim.onnx", validate=True)
"""

from __future__ import annotations

from onnxslim.api import ModelSummary, OptimizeReport, OptimizeResult, ValidationOptions, optimize
from onnxslim.checking import check_model
from onnxslim.errors import (
    InputDataError,
    InvalidModelError,
    ModelLoadError,
    ModelSaveError,
    OnnxSlimError,
    PassError,
    PipelineSpecError,
    ProviderUnavailableError,
    RuntimeMissingError,
    VerificationError,
)
from onnxslim.model import Model, load, save, to_proto
from onnxslim.pipeline import FixedPoint, Pass, PassContext, PassManager, PassRecord
from onnxslim.registry import parse_pipeline, register_pass, registered_passes

__version__ = "0.1.0"

__all__ = [
    "optimize",
    "validate",
    "load",
    "save",
    "to_proto",
    "check_model",
    "Model",
    "OptimizeResult",
    "OptimizeReport",
    "ModelSummary",
    "ValidationOptions",
    "Pass",
    "PassContext",
    "PassManager",
    "PassRecord",
    "FixedPoint",
    "register_pass",
    "registered_passes",
    "parse_pipeline",
    "OnnxSlimError",
    "ModelLoadError",
    "ModelSaveError",
    "InvalidModelError",
    "PipelineSpecError",
    "PassError",
    "VerificationError",
    "RuntimeMissingError",
    "ProviderUnavailableError",
    "InputDataError",
]


def validate(reference, candidate, **options):
    """Compare ``candidate`` with ``reference`` under onnxruntime; see onnxslim.validate."""
    from onnxslim.validate import validate as _validate

    return _validate(reference, candidate, **options)
