"""distill: fine-tune the model on a teacher's outputs, as a step of a compression recipe.

In a recipe such as prune → distill → quantize the model being compressed is the student and
the original model the teacher: ``teacher=`` names another one, otherwise the pipeline's
untouched input model (``ctx.original_path()``) teaches. Relative paths in a recipe are read
from the recipe's folder. A quantized (QDQ) model trains through its fake quantization and
stays quantized, so prune → quantize → distill works too; see :mod:`onnxslim.distill`.
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

_DEFAULTS = DistillOptions()


@register_pass("distill")
class Distill(Pass):
    """Fine-tune the weights on a teacher's outputs (lossy; QDQ models stay quantized).

    ``data`` is a .npz (the model's input names, optional ``labels``) or a folder of .npy;
    ``teacher`` a model path (default: the pipeline's original, untouched model). ``loss`` is
    kl (temperature-scaled, plus ``alpha`` × cross-entropy with labels), mse, cosine, or ce
    (hard labels alone); ``outputs`` lists outputs to match (``a|b``, ``student=teacher``);
    ``mask`` an input that leaves padded positions out of the loss (``auto``: attention_mask).
    ``backend`` native (any onnxruntime, ``provider`` cpu or cuda) or ort-training. The
    weights of the best validation epoch are written back; the graph keeps its structure.
    """

    lossless = False
    needs_original = True

    data: Path | None = None
    teacher: Path | None = None
    loss: Literal["kl", "mse", "cosine", "ce"] = _DEFAULTS.loss
    outputs: list[str] = field(default_factory=list)
    temperature: float = _DEFAULTS.temperature
    alpha: float = _DEFAULTS.alpha
    mask: str = _DEFAULTS.mask
    epochs: int = _DEFAULTS.epochs
    batch_size: int = _DEFAULTS.batch_size
    lr: float = _DEFAULTS.lr
    optimizer: Literal["adamw", "sgd"] = _DEFAULTS.optimizer
    weight_decay: float = _DEFAULTS.weight_decay
    schedule: Literal["cosine", "constant"] = _DEFAULTS.schedule
    warmup: float = _DEFAULTS.warmup
    freeze: list[str] = field(default_factory=list)
    val_split: float = _DEFAULTS.val_split
    patience: int = _DEFAULTS.patience
    seed: int = _DEFAULTS.seed
    threads: int = _DEFAULTS.threads
    backend: Literal["native", "ort-training"] = _DEFAULTS.backend
    provider: Literal["cpu", "cuda"] = "cpu"

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
    "warmup",
    "backend",
    "provider",
    "temperature",
    "alpha",
    "mask",
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
