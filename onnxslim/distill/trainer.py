"""The training loop, over any backend that can take a step and evaluate.

Mini-batches are drawn in a seeded random order each epoch; the learning rate is set per step:
a linear warm-up over the first ``warmup`` share of the steps, then a cosine decay to zero (or
constant). After every epoch the held-out split is scored with the backend's eval model. The
weights of the best epoch are kept, and training stops early when the score has not improved
for ``patience`` epochs, so a long schedule cannot end worse than it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from onnxslim.distill.data import TrainingData
from onnxslim.distill.losses import LABELS_INPUT, target_name
from onnxslim.distill.teacher import TeacherTargets
from onnxslim.progress import progress_bar

__all__ = [
    "Schedule",
    "TrainOptions",
    "EpochRecord",
    "TrainResult",
    "Metric",
    "TrainingBackend",
    "learning_rate",
    "train",
]

Schedule = Literal["cosine", "constant"]
# metric(student outputs, teacher outputs, labels or None) -> score, higher is better
Metric = Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]


class TrainingBackend(Protocol):
    """What the loop needs from a backend (``native``, ``ort-training``)."""

    name: str

    def train_step(self, feeds: Mapping[str, np.ndarray], lr: float) -> float:
        """One optimizer step on a batch; the batch's loss."""

    def evaluate(self, feeds: Mapping[str, np.ndarray]) -> tuple[float, list[np.ndarray]]:
        """The loss and the matched student outputs (first one first) on a batch."""

    def snapshot(self) -> dict[str, np.ndarray]:
        """The trained parameters' current values."""


@dataclass(frozen=True)
class TrainOptions:
    """How to train: ``warmup`` is the share of all steps spent raising the learning rate
    linearly to ``lr``; ``patience`` 0 turns early stopping off."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    schedule: Schedule = "cosine"
    warmup: float = 0.0
    patience: int = 3
    seed: int = 0
    progress: bool = True


@dataclass
class EpochRecord:
    """One epoch: mean training loss, validation loss and metric (None without a split),
    the learning rate of its first step, wall and process CPU seconds (on a busy machine the
    CPU time is the steadier measure)."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_metric: float | None
    lr: float
    seconds: float
    cpu_seconds: float = 0.0


@dataclass
class TrainResult:
    """The epochs run, the best one (0: none beat the untrained student), and the parameters
    of the best epoch."""

    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    metric_before: float | None = None
    stopped_early: bool = False
    parameters: dict[str, np.ndarray] = field(default_factory=dict)


def _batches(count: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(count) if rng is not None else np.arange(count)
    return [order[start : start + batch_size] for start in range(0, count, batch_size)]


def learning_rate(options: TrainOptions, step: int, total: int) -> float:
    """The learning rate of ``step`` (0-based) out of ``total``."""
    warmup = round(options.warmup * total)
    if step < warmup:
        return options.lr * (step + 1) / warmup
    if options.schedule == "constant" or total - warmup <= 1:
        return options.lr
    progress = (step - warmup) / (total - warmup)
    return options.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _feeds(
    data: TrainingData,
    indices: np.ndarray,
    teacher: TeacherTargets,
    targets: Mapping[str, str],
) -> dict[str, np.ndarray]:
    """The inputs of a batch by name: the student's inputs, the teacher's values for each
    matched output (``targets``: student output -> teacher output) and the labels."""
    feeds = {name: np.ascontiguousarray(values[indices]) for name, values in data.inputs.items()}
    outputs = teacher.batch(indices)
    for student_output, teacher_output in targets.items():
        feeds[target_name(student_output)] = outputs[teacher_output]
    if data.labels is not None:
        feeds[LABELS_INPUT] = data.labels[indices]
    return feeds


def _evaluate(
    backend: TrainingBackend,
    data: TrainingData,
    indices: np.ndarray,
    teacher: TeacherTargets,
    targets: Mapping[str, str],
    metric: Metric,
    batch_size: int,
) -> tuple[float, float]:
    """Loss and metric of the eval model on the samples ``indices``."""
    losses, students, teachers = [], [], []
    first = target_name(next(iter(targets)))
    for batch in _batches(len(indices), batch_size, None):
        chosen = indices[batch]
        feeds = _feeds(data, chosen, teacher, targets)
        loss, outputs = backend.evaluate(feeds)
        losses.append(loss * len(chosen))
        students.append(outputs[0])
        teachers.append(feeds[first])
    labels = None if data.labels is None else data.labels[indices]
    score = metric(np.concatenate(students), np.concatenate(teachers), labels)
    return sum(losses) / len(indices), score


def train(
    backend: TrainingBackend,
    data: TrainingData,
    teacher: TeacherTargets,
    targets: Mapping[str, str],
    *,
    train_indices: np.ndarray,
    val_indices: np.ndarray,
    metric: Metric,
    options: TrainOptions,
) -> TrainResult:
    """Train with ``backend`` on ``data`` against ``teacher``'s outputs.

    ``targets`` maps each matched student output to the teacher output it learns; the first
    one's values are what ``metric`` scores on ``val_indices`` after every epoch.
    """
    rng = np.random.default_rng(options.seed)
    result = TrainResult()
    validate = len(val_indices) > 0
    # Epoch 0 is the student as it came: training keeps it unless an epoch scores better
    # (by metric, then by validation loss).
    best = (-math.inf, -math.inf)
    result.best_epoch, result.parameters = 0, backend.snapshot()

    def score() -> tuple[float, float]:
        return _evaluate(backend, data, val_indices, teacher, targets, metric, options.batch_size)

    if validate:
        loss_before, result.metric_before = score()
        best = (result.metric_before, -loss_before)
    steps = math.ceil(len(train_indices) / options.batch_size)
    total = options.epochs * steps
    step = 0
    with progress_bar("distilling", total, enabled=options.progress) as advance:
        for epoch in range(1, options.epochs + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            first_lr = learning_rate(options, step, total)
            running = 0.0
            for batch in _batches(len(train_indices), options.batch_size, rng):
                chosen = train_indices[batch]
                lr = learning_rate(options, step, total)
                loss = backend.train_step(_feeds(data, chosen, teacher, targets), lr)
                step += 1
                running += loss * len(chosen)
                advance(description=f"epoch {epoch}/{options.epochs} loss {loss:.4f}")
            val_loss = value = None
            if validate:
                val_loss, value = score()
            result.epochs.append(
                EpochRecord(
                    epoch=epoch,
                    train_loss=running / len(train_indices),
                    val_loss=val_loss,
                    val_metric=value,
                    lr=first_lr,
                    seconds=time.perf_counter() - start,
                    cpu_seconds=time.process_time() - cpu_start,
                )
            )
            if value is None or (value, -val_loss) > best:
                best = (-math.inf, -math.inf) if value is None else (value, -val_loss)
                result.best_epoch = epoch
                result.parameters = backend.snapshot()
            elif options.patience and epoch - result.best_epoch >= options.patience:
                result.stopped_early = epoch < options.epochs
                break
    return result
