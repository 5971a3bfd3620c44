"""Why ``distill`` refuses to start: each a one-line OnnxSlimError that says what to do."""

from __future__ import annotations

from onnxslim.errors import InputDataError, OnnxSlimError, RuntimeMissingError

__all__ = [
    "DistillError",
    "TrainingRuntimeMissingError",
    "QuantizedStudentError",
    "OutputMismatchError",
    "DistillDataError",
    "UnsupportedVersionError",
    "DistillOptionError",
    "GradientError",
    "TRAIN_INSTALL_HINT",
]

TRAIN_INSTALL_HINT = (
    "install the `train` extra in its own venv: pip install -e '.[train]' torch==2.13.0 in "
    "your onnxslim checkout, or make .venv-train/.installed"
)


class DistillError(OnnxSlimError):
    """Base class of the refusals below."""


class TrainingRuntimeMissingError(DistillError, RuntimeMissingError):
    """``onnxruntime.training`` cannot be imported (an inference build is installed)."""


class QuantizedStudentError(DistillError):
    """The student holds quantized ops: its int8 weights cannot be trained."""


class OutputMismatchError(DistillError):
    """Teacher and student outputs cannot be paired (names, types or shapes differ)."""


class DistillDataError(DistillError, InputDataError):
    """The training data does not fit the student (inputs, shapes, dtypes, labels)."""


class UnsupportedVersionError(DistillError):
    """A model's IR version or opset is newer than onnxruntime-training can run."""


class DistillOptionError(DistillError):
    """An option value is out of range (loss name, epochs, learning rate, ...)."""


class GradientError(DistillError):
    """The student holds an op (or an op's form) that has no gradient rule: raised while the
    training graph is built, before any training, naming the op and the node."""
