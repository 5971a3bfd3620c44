"""distill: fine-tune the model on a teacher's outputs, as a step of a compression recipe.

In a recipe such as prune → distill → quantize the model being compressed is the student and
the original model the teacher: ``teacher=`` names another one, otherwise the pipeline's
untouched input model (``ctx.original_path()``) teaches. Relative paths in a recipe are read
from the recipe's folder. Training needs
onnxruntime-training (the ``train`` extra); see :mod:`onnxslim.distill`.
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Literal

import onnx_graphsurgeon as gs

from onnxslim.distill import DistillOptions, distill_model
from onnxslim.errors import PipelineSpecError
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass

__all__ = ["Distill"]


@register_pass("distill")
class Distill(Pass):
    """Fine-tune the weights on a teacher's outputs with onnxruntime-training (lossy).

    ``data`` is a .npz (the model's input names, optional ``labels``) or a folder of .npy;
    ``teacher`` a model path (default: the pipeline's original, untouched model). ``loss`` is
    kl (temperature-scaled, plus ``alpha`` × cross-entropy with labels), mse, cosine, or ce
    (hard labels alone); ``outputs`` lists outputs to match (``a|b``, ``student=teacher``).
    The weights of the best validation epoch are written back; the graph keeps its structure.
    """

    lossless = False
    needs_original = True

    data: Path | None = None
    teacher: Path | None = None
    loss: Literal["kl", "mse", "cosine", "ce"] = "kl"
    outputs: list[str] = field(default_factory=list)
    temperature: float = 4.0
    alpha: float = 0.5
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    freeze: list[str] = field(default_factory=list)
    val_split: float = 0.1
    patience: int = 3
    seed: int = 0
    threads: int = 0

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        if self.data is None:
            raise PipelineSpecError("distill needs data=PATH (a .npz or a folder of .npy)")
        teacher = self.teacher or ctx.original_path()
        options = DistillOptions(
            **{name: getattr(self, name) for name in _OPTION_NAMES},
            outputs=tuple(self.outputs),
            freeze=tuple(self.freeze),
        )
        report = distill_model(teacher, ctx.model, self.data, options)
        table = report.epoch_table()
        ctx.table(table.title, table.columns, table.rows)
        ctx.log(report.summary())
        for note in report.notes:
            ctx.log(note)
        return report.best_epoch > 0


_OPTION_NAMES = (
    "loss",
    "temperature",
    "alpha",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "schedule",
    "val_split",
    "patience",
    "seed",
    "threads",
)
