"""The training loop over onnxruntime-training's Module and Optimizer.

Mini-batches are drawn in a seeded random order each epoch; the learning rate follows a
cosine decay (or stays constant); after every epoch the held-out split is scored with the
eval model. The weights of the best epoch are kept, and training stops early when the score
has not improved for ``patience`` epochs, so a long schedule cannot end worse than it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from onnxslim.distill.artifacts import Artifacts
from onnxslim.distill.data import TrainingData
from onnxslim.distill.losses import LABELS_INPUT, target_name
from onnxslim.distill.teacher import TeacherTargets
from onnxslim.progress import progress_bar

__all__ = ["Schedule", "TrainOptions", "EpochRecord", "TrainResult", "Metric", "train"]

Schedule = Literal["cosine", "constant"]
# metric(student outputs, teacher outputs, labels or None) -> score, higher is better
Metric = Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]


@dataclass(frozen=True)
class TrainOptions:
    """How to train: ``patience`` 0 turns early stopping off; ``threads`` 0 lets
    onnxruntime choose how many threads a step uses."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    schedule: Schedule = "cosine"
    patience: int = 3
    seed: int = 0
    threads: int = 0
    progress: bool = True


@dataclass
class EpochRecord:
    """One epoch: mean training loss, validation loss and metric (None without a split)."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_metric: float | None
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """The epochs run, the best one (0: none beat the untrained student), and the parameters
    of the best epoch."""

    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    metric_before: float | None = None
    stopped_early: bool = False
    parameters: dict[str, np.ndarray] = field(default_factory=dict)


class _Session:
    """The artifacts loaded into onnxruntime-training, fed by input name."""

    def __init__(
        self,
        artifacts: Artifacts,
        teacher: TeacherTargets,
        outputs: Sequence[str],
        threads: int,
    ) -> None:
        from onnxruntime import SessionOptions
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        options = SessionOptions()
        options.intra_op_num_threads = threads
        self.state = CheckpointState.load_checkpoint(str(artifacts.checkpoint))
        self.module = Module(
            str(artifacts.training_model),
            self.state,
            str(artifacts.eval_model),
            device="cpu",
            session_options=options,
        )
        self.optimizer = Optimizer(str(artifacts.optimizer_model), self.module)
        self.parameters = artifacts.parameters
        self.teacher = teacher
        self.targets = {target_name(name): name for name in outputs}
        self.teacher_names = dict(zip(outputs, teacher.names, strict=True))

    def feeds(self, data: TrainingData, indices: np.ndarray, teacher: dict[str, np.ndarray]):
        values = []
        for name in self.module.input_names():
            if name in self.targets:
                values.append(teacher[self.teacher_names[self.targets[name]]])
            elif name == LABELS_INPUT:
                values.append(data.labels[indices])
            else:
                values.append(np.ascontiguousarray(data.inputs[name][indices]))
        return values

    def snapshot(self) -> dict[str, np.ndarray]:
        return {name: np.array(self.state.parameters[name].data) for name in self.parameters}


def _batches(count: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(count) if rng is not None else np.arange(count)
    return [order[start : start + batch_size] for start in range(0, count, batch_size)]


def _learning_rate(options: TrainOptions, epoch: int) -> float:
    if options.schedule == "constant" or options.epochs == 1:
        return options.lr
    return options.lr * 0.5 * (1 + math.cos(math.pi * epoch / options.epochs))


def _evaluate(
    session: _Session,
    data: TrainingData,
    indices: np.ndarray,
    metric: Metric,
    batch_size: int,
) -> tuple[float, float]:
    """Loss and metric of the eval model on the samples ``indices``."""
    session.module.eval()
    losses, students, teachers = [], [], []
    for batch in _batches(len(indices), batch_size, None):
        chosen = indices[batch]
        teacher = session.teacher.batch(chosen)
        loss, student, *_ = session.module(*session.feeds(data, chosen, teacher))
        losses.append(float(loss) * len(chosen))
        students.append(student)
        teachers.append(teacher[session.teacher.names[0]])
    labels = None if data.labels is None else data.labels[indices]
    score = metric(np.concatenate(students), np.concatenate(teachers), labels)
    return sum(losses) / len(indices), score


def train(
    artifacts: Artifacts,
    data: TrainingData,
    teacher: TeacherTargets,
    outputs: Sequence[str],
    *,
    train_indices: np.ndarray,
    val_indices: np.ndarray,
    metric: Metric,
    options: TrainOptions,
) -> TrainResult:
    """Train the student of ``artifacts`` on ``data`` against ``teacher``'s ``outputs``.

    ``outputs`` are the student's matched outputs; the eval model returns the first of them
    beside the loss, which ``metric`` scores on ``val_indices`` after every epoch.
    """
    session = _Session(artifacts, teacher, outputs, options.threads)
    rng = np.random.default_rng(options.seed)
    result = TrainResult()
    validate = len(val_indices) > 0
    # Epoch 0 is the student as it came: training keeps it unless an epoch scores better
    # (by metric, then by validation loss).
    best = (-math.inf, -math.inf)
    result.best_epoch, result.parameters = 0, session.snapshot()
    if validate:
        loss_before, result.metric_before = _evaluate(
            session, data, val_indices, metric, options.batch_size
        )
        best = (result.metric_before, -loss_before)
    steps = math.ceil(len(train_indices) / options.batch_size)
    with progress_bar("distilling", options.epochs * steps, enabled=options.progress) as advance:
        for epoch in range(1, options.epochs + 1):
            start = time.perf_counter()
            lr = _learning_rate(options, epoch - 1)
            session.optimizer.set_learning_rate(lr)
            session.module.train()
            total = 0.0
            for batch in _batches(len(train_indices), options.batch_size, rng):
                chosen = train_indices[batch]
                loss = session.module(*session.feeds(data, chosen, teacher.batch(chosen)))[0]
                session.optimizer.step()
                session.module.lazy_reset_grad()
                total += float(loss) * len(chosen)
                advance(description=f"epoch {epoch}/{options.epochs} loss {float(loss):.4f}")
            val_loss = score = None
            if validate:
                val_loss, score = _evaluate(session, data, val_indices, metric, options.batch_size)
            record = EpochRecord(
                epoch=epoch,
                train_loss=total / len(train_indices),
                val_loss=val_loss,
                val_metric=score,
                lr=lr,
                seconds=time.perf_counter() - start,
            )
            result.epochs.append(record)
            if score is None or (score, -val_loss) > best:
                best = (-math.inf, -math.inf) if score is None else (score, -val_loss)
                result.best_epoch = epoch
                result.parameters = session.snapshot()
            elif options.patience and epoch - result.best_epoch >= options.patience:
                result.stopped_early = epoch < options.epochs
                break
    return result
