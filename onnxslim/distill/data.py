"""Training data: the student's inputs stacked along their batch axis, and optional labels.

Unlike validation inputs (one sample per file entry), training data is a batch to be cut
into mini-batches, so every array holds all samples along axis 0, which must be the student
input's batch axis. The same checks as everywhere else apply (``conform_feeds``: names, ranks,
static dims, dtypes), on the first sample, since every sample of an array shares its shape.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxslim.distill.errors import DistillDataError
from onnxslim.errors import InputDataError
from onnxslim.inputs import LABELS_KEY, InputSpec, conform_feeds

__all__ = ["LABELS_KEY", "TrainingData", "load_training_data"]


@dataclass
class TrainingData:
    """``inputs`` by input name, each ``[N, ...]``; ``labels`` ``[N, ...]`` int64 or None."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, indices: np.ndarray) -> TrainingData:
        """The samples at ``indices``."""
        return TrainingData(
            {name: array[indices] for name, array in self.inputs.items()},
            None if self.labels is None else self.labels[indices],
        )


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DistillDataError(f"{path}: no such file or folder")
    try:
        if path.is_file():
            if path.suffix != ".npz":
                raise DistillDataError(f"{path}: expected a .npz file or a folder of .npy files")
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        files = sorted(path.glob("*.npy"))
        if not files:
            raise DistillDataError(f"{path}: no .npy files in this folder")
        return {file.stem: np.load(file, allow_pickle=False) for file in files}
    except (OSError, ValueError) as exc:
        raise DistillDataError(f"{path}: cannot read ({exc})") from exc


def _batch_axis_is_free(spec: InputSpec, source: str) -> None:
    if spec.rank == 0:
        raise DistillDataError(f"{source}: input '{spec.name}' is a scalar and has no batch axis")
    if spec.shape and isinstance(spec.shape[0], int):
        raise DistillDataError(
            f"{source}: the student's input '{spec.name}' has a fixed batch size of "
            f"{spec.shape[0]}; export it with a dynamic batch axis to train on mini-batches"
        )


def _checked_labels(labels: np.ndarray, count: int, classes: int | None, source: str) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer):
        raise DistillDataError(f"{source}: 'labels' must hold integers, got {labels.dtype}")
    if len(labels) != count:
        raise DistillDataError(
            f"{source}: 'labels' has {len(labels)} entries but the inputs hold {count} samples"
        )
    if classes is not None and labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DistillDataError(
            f"{source}: 'labels' must lie in [0, {classes}), got values from "
            f"{labels.min()} to {labels.max()}"
        )
    return labels.astype(np.int64)


def load_training_data(
    path: str | os.PathLike | Mapping[str, np.ndarray],
    specs: list[InputSpec],
    *,
    classes: int | None = None,
) -> TrainingData:
    """Read and check training data for a student with inputs ``specs``.

    ``path`` is a ``.npz`` whose keys are the input names (plus an optional ``labels``), a
    folder of ``<input>.npy`` (and ``labels.npy``), or such arrays in a dict. ``classes``
    bounds the labels when known.
    """
    source = "data" if isinstance(path, Mapping) else str(path)
    arrays = dict(path) if isinstance(path, Mapping) else _read_arrays(Path(path))
    labels = arrays.pop(LABELS_KEY, None)
    counts = set()
    for spec in specs:
        _batch_axis_is_free(spec, source)
        if spec.name in arrays:
            array = np.asarray(arrays[spec.name])
            if array.ndim == 0 or len(array) == 0:
                raise DistillDataError(f"{source}: input '{spec.name}' holds no samples")
            counts.add(len(array))
    try:
        first = conform_feeds({k: np.asarray(v)[:1] for k, v in arrays.items()}, specs, source)
    except InputDataError as exc:
        raise DistillDataError(str(exc)) from exc
    if len(counts) > 1:
        raise DistillDataError(f"{source}: inputs hold different numbers of samples: {counts}")
    inputs = {name: np.asarray(arrays[name]).astype(first[name].dtype) for name in first}
    count = counts.pop()
    if labels is not None:
        labels = _checked_labels(np.asarray(labels), count, classes, source)
    return TrainingData(inputs, labels)
