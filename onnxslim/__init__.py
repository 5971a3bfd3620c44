"""onnxslim: graph-level ONNX optimization and compression.

The public API, for post-export steps and for pass authors (``Pass``, ``Rule``, ``RuleSet``,
``Scope``; see :mod:`onnxslim.rewrite` and :mod:`onnxslim.testing`)::

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
    PassCrashError,
    PassError,
    PipelineSpecError,
    ProviderUnavailableError,
    RuntimeMissingError,
    VerificationError,
)
from onnxslim.model import Model, load, save, to_proto
from onnxslim.pipeline import FixedPoint, Pass, PassContext, PassManager, PassRecord
from onnxslim.registry import parse_pipeline, register_pass, registered_passes
from onnxslim.rewrite import FusionSet, Match, Rule, RuleSet, Scope, fail

# Imported here, not lazily: loading the submodule ``onnxslim.validate`` later would rebind the
# package attribute ``validate`` from this function to the module. (onnxruntime itself is still
# imported only when a validation runs.)
from onnxslim.validate import ValidationReport, validate

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
    "ValidationReport",
    "Pass",
    "PassContext",
    "PassManager",
    "PassRecord",
    "FixedPoint",
    "register_pass",
    "registered_passes",
    "parse_pipeline",
    "Rule",
    "RuleSet",
    "FusionSet",
    "Match",
    "fail",
    "Scope",
    "OnnxSlimError",
    "ModelLoadError",
    "ModelSaveError",
    "InvalidModelError",
    "PipelineSpecError",
    "PassCrashError",
    "PassError",
    "VerificationError",
    "RuntimeMissingError",
    "ProviderUnavailableError",
    "InputDataError",
]
