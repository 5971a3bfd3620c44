"""The teacher's outputs on the training data, from an onnxruntime inference session.

When all outputs fit in ``cache_bytes`` they are computed once, batch by batch, before
training (every epoch then reads them for free); otherwise each mini-batch runs the teacher
again, which keeps memory flat for large vocabularies or long sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxslim.distill.data import TrainingData
from onnxslim.distill.errors import DistillDataError
from onnxslim.progress import progress_bar
from onnxslim.runtime import run

__all__ = ["TeacherTargets", "DEFAULT_CACHE_BYTES"]

DEFAULT_CACHE_BYTES = 512 * 2**20


class TeacherTargets:
    """Teacher outputs ``names`` for any subset of ``data``, cached when small enough."""

    def __init__(
        self,
        session: Any,
        data: TrainingData,
        names: Sequence[str],
        *,
        batch_size: int,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        progress: bool = True,
    ) -> None:
        self.session = session
        self.data = data
        self.names = list(names)
        self.batch_size = batch_size
        wanted = [i.name for i in session.get_inputs()]
        missing = [name for name in wanted if name not in data.inputs]
        if missing:
            raise DistillDataError(
                f"the teacher's input '{missing[0]}' is not in the training data "
                f"(it holds: {', '.join(data.inputs)})"
            )
        self._inputs = wanted
        self.cache: dict[str, np.ndarray] | None = None
        probe = self._run(np.arange(1))
        per_sample = sum(array.nbytes for array in probe.values())
        if per_sample * len(data) <= cache_bytes:
            self.cache = self._run_all(progress)

    @property
    def cached(self) -> bool:
        return self.cache is not None

    def _run(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {name: self.data.inputs[name][indices] for name in self._inputs}
        outputs = run(self.session, feeds)
        return {name: outputs[name] for name in self.names}

    def _run_all(self, progress: bool) -> dict[str, np.ndarray]:
        count = len(self.data)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        with progress_bar("teacher outputs", count, enabled=progress) as advance:
            for start in range(0, count, self.batch_size):
                indices = np.arange(start, min(start + self.batch_size, count))
                for name, value in self._run(indices).items():
                    parts[name].append(value)
                advance(len(indices))
        return {name: np.concatenate(values) for name, values in parts.items()}

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The teacher outputs for the samples at ``indices``, by output name."""
        if self.cache is not None:
            return {name: values[indices] for name, values in self.cache.items()}
        return self._run(indices)
