"""Errors that onnxslim raises on purpose.

Every one of them is meant to reach a person as one line: the CLI prints ``str(error)`` and
exits non-zero, so each message says what went wrong *and* what to do about it.
"""

from __future__ import annotations

__all__ = [
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


class OnnxSlimError(Exception):
    """Base class: an error whose message is fit to show a user as it is."""


class ModelLoadError(OnnxSlimError):
    """The file is missing, unreadable, not ONNX, or its external data is missing."""


class ModelSaveError(OnnxSlimError):
    """The model could not be written (the destination is left untouched)."""


class InvalidModelError(OnnxSlimError):
    """The model was read but fails onnx.checker."""


class PipelineSpecError(OnnxSlimError):
    """A pipeline spec or recipe names an unknown pass or option, or a badly typed value."""


class PassError(OnnxSlimError):
    """A pass failed while rewriting a graph."""


class VerificationError(OnnxSlimError):
    """``verify_each`` found a pass that produced an invalid or numerically different model."""


class RuntimeMissingError(OnnxSlimError):
    """The onnxruntime build a command needs is not installed."""


class ProviderUnavailableError(OnnxSlimError):
    """A requested execution provider is not available in the installed onnxruntime."""


class InputDataError(OnnxSlimError):
    """Input data (``--inputs``, ``--input-shape``) does not fit the model's signature."""
