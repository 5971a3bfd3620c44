"""Measuring a model between the steps of a compression recipe.

A recipe such as prune → distill → quantize trades accuracy for size and speed at every step;
the user needs to see that trade per stage, in one table. :func:`measure_stage` writes the
model as it is at that point, and records its file size, parameters, estimated FLOPs, CPU
latency and quality: top-1 accuracy when the data carries ``labels``, otherwise the cosine
similarity of its outputs with the original model's.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxslim.errors import InputDataError
from onnxslim.inputs import (
    LABELS_KEY,
    InputSpec,
    conform_feeds,
    input_specs,
    read_npz,
    synthesize_inputs,
)
from onnxslim.model import Model, save
from onnxslim.runtime import create_session, run
from onnxslim.summary import describe
from onnxslim.validate import validate

__all__ = ["StageMeasurement", "measure_stage", "read_labelled_data"]


@dataclass
class StageMeasurement:
    """One row of a recipe's stage table."""

    label: str
    file_bytes: int
    parameters: int
    flops: int
    latency_ms: float
    latency_batch: int
    accuracy: float | None = None
    cosine: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_labelled_data(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The input arrays of a ``.npz`` (one sample per row) and its ``labels`` if it has them."""
    arrays = read_npz(path)
    return arrays, arrays.pop(LABELS_KEY, None)


def measure_stage(
    model: Model,
    label: str,
    *,
    data: Path | None = None,
    original: Path | None = None,
    batch: int = 1,
    runs: int = 20,
    provider: str = "cpu",
) -> StageMeasurement:
    """Write ``model`` to a scratch file and measure it (see the module docstring).

    ``data`` is a ``.npz`` whose keys are the model's input names (plus ``labels`` for
    accuracy); without it, inputs are synthesized and quality is the cosine with ``original``.
    Latency is the median of ``runs`` runs on ``batch`` samples.
    """
    with tempfile.TemporaryDirectory(prefix="onnxslim-stage-") as scratch:
        path = save(model, Path(scratch) / "stage.onnx")
        facts = describe(path)
        session = create_session(path, provider)
        specs = input_specs(str(path))
        feeds, labels = _evaluation_feeds(specs, data)
        measurement = StageMeasurement(
            label=label,
            file_bytes=facts.file_bytes or 0,
            parameters=facts.parameters,
            flops=facts.flops,
            latency_ms=_median_latency(session, feeds, batch, runs),
            latency_batch=batch,
        )
        if labels is not None:
            logits = next(iter(run(session, feeds).values()))
            measurement.accuracy = float((logits.argmax(axis=-1) == labels).mean())
        elif original is not None:
            report = validate(original, path, providers=(provider,), inputs=[feeds], progress=False)
            cosines = [o.cosine for o in report.outputs if o.cosine is not None]
            measurement.cosine = min(cosines) if cosines else None
        return measurement


def _evaluation_feeds(
    specs: list[InputSpec], data: Path | None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """A batch of inputs (the whole data file, or one synthesized sample) and its labels."""
    if data is None:
        return synthesize_inputs(specs), None
    arrays, labels = read_labelled_data(data)
    feeds = conform_feeds(arrays, specs, str(data))
    if labels is not None and any(len(a) != len(labels) for a in feeds.values()):
        raise InputDataError(f"{data}: 'labels' and the inputs hold different numbers of rows")
    return feeds, labels


def _median_latency(session: Any, feeds: dict[str, np.ndarray], batch: int, runs: int) -> float:
    sample = {name: array[:batch] for name, array in feeds.items()}
    run(session, sample)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, sample)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000
