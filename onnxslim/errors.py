"""Errors that onnxslim raises on purpose.

Every one of them is meant to reach a person as one line: the CLI prints ``str(error)`` and
exits with the error's ``exit_code``, so each message says what went wrong *and* what to do
about it. The exit codes, for every command:

- 0: success;
- 1: the result misses its quality bar (outputs differ, a quality floor is not met): nothing
  is written;
- 2: bad input (missing or invalid model, unknown option, unavailable provider, bad data);
- 3: an internal error (a bug in onnxslim or a pass: please report it);
- 4: nothing to do: the command would change nothing, so nothing is written.
"""

from __future__ import annotations

__all__ = [
    "OnnxSlimError",
    "ModelLoadError",
    "ModelSaveError",
    "InvalidModelError",
    "PipelineSpecError",
    "PassError",
    "PassCrashError",
    "VerificationError",
    "RuntimeMissingError",
    "ProviderUnavailableError",
    "InputDataError",
    "QualityFloorError",
    "NothingChangedError",
    "EXIT_OK",
    "EXIT_QUALITY",
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "EXIT_UNCHANGED",
]

EXIT_OK = 0
EXIT_QUALITY = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_UNCHANGED = 4


class OnnxSlimError(Exception):
    """Base class: an error whose message is fit to show a user as it is."""

    exit_code: int = EXIT_BAD_INPUT


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


class PassCrashError(PassError):
    """A pass raised an exception it did not mean to (a bug in onnxslim or in the pass, not in
    the model): an internal error. The message names the pass; the original exception is
    chained as ``__cause__`` for ``--debug``."""

    exit_code = EXIT_INTERNAL


class VerificationError(OnnxSlimError):
    """``verify_each`` found a pass that produced an invalid or numerically different model."""


class RuntimeMissingError(OnnxSlimError):
    """The onnxruntime build a command needs is not installed."""


class ProviderUnavailableError(OnnxSlimError):
    """A requested execution provider is not available in the installed onnxruntime."""


class InputDataError(OnnxSlimError):
    """Input data (``--inputs``, ``--input-shape``) does not fit the model's signature."""


class QualityFloorError(OnnxSlimError):
    """A lossy result falls below the quality floor it was asked to keep (e.g. output cosine
    under ``min_cosine``); the message gives the figure and what to try."""

    exit_code = EXIT_QUALITY


class NothingChangedError(OnnxSlimError):
    """The command would change nothing (no prunable group, no weight to quantize...); the
    message says why, and nothing is written."""

    exit_code = EXIT_UNCHANGED
