"""Training artifacts for the student: training, eval and optimizer models plus a checkpoint.

``onnxruntime.training.artifacts.generate_artifacts`` builds the gradient graph; the loss is
an onnxblock that appends the nodes of :mod:`onnxslim.distill.losses` to the student's graph.
Which initializers train is :func:`onnxslim.distill.parameters.ort_training_parameters`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import onnx

from onnxslim.distill.errors import (
    TRAIN_INSTALL_HINT,
    DistillOptionError,
    TrainingRuntimeMissingError,
)
from onnxslim.distill.losses import LossGraph
from onnxslim.distill.optimizers import OPTIMIZERS, OptimizerKind

__all__ = [
    "Artifacts",
    "require_training",
    "build_artifacts",
]


def require_training() -> ModuleType:
    """``onnxruntime.training``, or TrainingRuntimeMissingError saying how to install it."""
    try:
        import onnxruntime.training.api  # noqa: F401
        import onnxruntime.training.artifacts  # noqa: F401
        from onnxruntime import training
    except ImportError as exc:
        raise TrainingRuntimeMissingError(
            f"onnxruntime.training is not installed: {TRAIN_INSTALL_HINT}"
        ) from exc
    return training


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Drop what native code writes on stderr meanwhile.

    The gradient graph builder logs every graph transformer at info level through a logger
    that no Python setting reaches; its failures still arrive as Python exceptions.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True)
class Artifacts:
    """Where ``build_artifacts`` wrote the four artifacts, and what they train."""

    folder: Path
    parameters: list[str]

    @property
    def training_model(self) -> Path:
        return self.folder / "training_model.onnx"

    @property
    def eval_model(self) -> Path:
        return self.folder / "eval_model.onnx"

    @property
    def optimizer_model(self) -> Path:
        return self.folder / "optimizer_model.onnx"

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoint"


def build_artifacts(
    student: onnx.ModelProto,
    loss: LossGraph,
    parameters: Sequence[str],
    folder: Path,
    *,
    optimizer: OptimizerKind = "adamw",
    weight_decay: float = 0.0,
    extra_outputs: Sequence[str] = (),
) -> Artifacts:
    """Write the training artifacts of ``student`` with ``loss`` into ``folder``.

    ``extra_outputs`` (student output names) come out of the training and eval models beside
    the loss, for validation metrics.
    """
    require_training()
    from onnxruntime.training import artifacts, onnxblock

    if not parameters:
        raise DistillOptionError(
            "nothing to train: the student has no float32 weights left after freeze="
        )

    class AppendLoss(onnxblock.Block):
        """The distillation loss as an onnxblock: its nodes go onto the student's graph."""

        def build(self, *output_names: str) -> str:
            loss.append_to(self.base.graph)
            return loss.output

    if optimizer == "adamw":
        optimizer_block = onnxblock.optim.AdamW(weight_decay=weight_decay)
    elif optimizer == "sgd":
        optimizer_block = onnxblock.optim.SGD()
    else:
        raise DistillOptionError(
            f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with _native_stderr_silenced():
        artifacts.generate_artifacts(
            student,
            requires_grad=list(parameters),
            loss=AppendLoss(),
            optimizer=optimizer_block,
            artifact_directory=folder,
            additional_output_names=list(extra_outputs) or None,
        )
    return Artifacts(folder=folder, parameters=list(parameters))
