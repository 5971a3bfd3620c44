"""Streaming calibration: the value ranges of chosen tensors over representative inputs.

Quantization needs, for every activation it quantizes, the range of values that tensor takes
on real data. Collecting all activations and computing ranges afterwards (as many tools do)
makes memory grow with the number of samples; here the float model runs batch by batch with
the chosen tensors exposed as extra outputs, and each batch only *updates* per-tensor
statistics, then is dropped. Peak memory is one batch of activations plus fixed-size
histograms, whatever the number of samples.

Statistics per tensor are the running minimum and maximum and, for the ``percentile`` and
``entropy`` methods, a histogram over a symmetric range ``[-bound, bound]`` that doubles (and
merges neighbouring bins) whenever a batch exceeds it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx

from onnxslim.errors import InputDataError
from onnxslim.inputs import (
    InputSpec,
    conform_feeds,
    input_specs,
    load_inputs,
    split_rows,
    synthesize_inputs,
)
from onnxslim.model import Model
from onnxslim.progress import progress_bar
from onnxslim.runtime import open_session, run

__all__ = [
    "CalibrationMethod",
    "CALIBRATION_METHODS",
    "TensorStats",
    "SYNTHETIC_WARNING",
    "SynthesizedSamples",
    "calibration_samples",
    "batched",
    "calibrate",
]

CalibrationMethod = Literal["minmax", "percentile", "entropy"]
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
HISTOGRAM_BINS = 8192  # a multiple of 4, so that doubling the range merges bins exactly
BATCH_MEMORY = 128 * 2**20  # bytes of exposed tensors one calibration batch may hold
_ENTROPY_STEP = 16  # candidate thresholds every this many bins (a full scan is 16x slower)
ENTROPY_LEVELS = 128  # quantization levels the KL search compares with (as TensorRT and ORT)
SYNTHETIC_WARNING = (
    "WARNING: no calibration data given: activation ranges come from random inputs, which "
    "say nothing about real data; accuracy may be poor (give --calib data.npz)"
)


@dataclass
class TensorStats:
    """Running statistics of one tensor: min, max and, when asked for, a histogram, and the
    min and max of each channel of the last axis (what SmoothQuant needs).

    Infinite and NaN values do not enter the range, but are counted in ``nonfinite``: a tensor
    that holds ``-inf`` (a causal mask) is not an activation to quantize.
    """

    with_histogram: bool = False
    with_channels: bool = False
    minimum: float = float("inf")
    maximum: float = float("-inf")
    count: int = 0
    empty: int = 0  # batches in which the tensor held no values (a data-dependent size)
    nonfinite: int = 0
    bound: float = 0.0
    histogram: np.ndarray | None = field(default=None, repr=False)
    channel_min: np.ndarray | None = field(default=None, repr=False)
    channel_max: np.ndarray | None = field(default=None, repr=False)

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        if values.size == 0:
            self.empty += 1
            return
        low, high = float(values.min()), float(values.max())
        finite = values
        if not (np.isfinite(low) and np.isfinite(high)):  # rare: pay for the filter only then
            mask = np.isfinite(values)
            self.nonfinite += int(values.size - np.count_nonzero(mask))
            finite = values[mask]
            if finite.size == 0:
                return
            low, high = float(finite.min()), float(finite.max())
        self.minimum = min(self.minimum, low)
        self.maximum = max(self.maximum, high)
        self.count += int(finite.size)
        if self.with_histogram:
            self._add_to_histogram(finite, max(abs(low), abs(high)))
        if self.with_channels and values.ndim and finite is values:
            self._add_to_channels(values)

    def _add_to_channels(self, values: np.ndarray) -> None:
        rows = values.reshape(-1, values.shape[-1])
        low, high = rows.min(axis=0), rows.max(axis=0)
        if self.channel_min is None or self.channel_min.shape != low.shape:
            self.channel_min, self.channel_max = low, high
            return
        np.minimum(self.channel_min, low, out=self.channel_min)
        np.maximum(self.channel_max, high, out=self.channel_max)

    def _add_to_histogram(self, values: np.ndarray, absmax: float) -> None:
        if self.histogram is None:
            self.histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
            self.bound = absmax if absmax > 0 else 1.0
        while absmax > self.bound:
            # Twice the range: bins i and i+1 merge into one, centred in the new histogram.
            merged = self.histogram.reshape(-1, 2).sum(axis=1)
            self.histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
            quarter = HISTOGRAM_BINS // 4
            self.histogram[quarter : quarter + merged.size] = merged
            self.bound *= 2
        width = 2 * self.bound / HISTOGRAM_BINS
        index = ((values.astype(np.float32).ravel() + self.bound) / width).astype(np.int64)
        np.clip(index, 0, HISTOGRAM_BINS - 1, out=index)
        self.histogram += np.bincount(index, minlength=HISTOGRAM_BINS)

    def range(
        self, method: CalibrationMethod, percentile: float = 99.99, levels: int = ENTROPY_LEVELS
    ) -> tuple[float, float]:
        """The range to quantize to; always contains zero.

        ``percentile`` keeps that share of the values, clipping half of the rest at each end.
        ``entropy`` picks the clipping threshold whose ``levels``-level quantization of the
        histogram of magnitudes loses the least information (smallest KL divergence).
        """
        if self.count == 0:
            return 0.0, 0.0
        low, high = min(self.minimum, 0.0), max(self.maximum, 0.0)
        if method == "minmax" or self.histogram is None:
            return low, high
        if method == "percentile":
            cumulative = np.cumsum(self.histogram) / self.histogram.sum()
            tail = (1.0 - percentile / 100.0) / 2.0
            edges = np.linspace(-self.bound, self.bound, HISTOGRAM_BINS + 1)
            clipped_low = float(edges[int(np.searchsorted(cumulative, tail, side="right"))])
            upper = int(np.searchsorted(cumulative, 1.0 - tail, side="left")) + 1
            clipped_high = float(edges[min(upper, HISTOGRAM_BINS)])
            return max(low, min(clipped_low, 0.0)), min(high, max(clipped_high, 0.0))
        threshold = _entropy_threshold(self._magnitudes(), self.bound, levels)
        return max(low, -threshold), min(high, threshold)

    def _magnitudes(self) -> np.ndarray:
        """The histogram of |x| over ``[0, bound]``."""
        half = HISTOGRAM_BINS // 2
        return self.histogram[half:] + self.histogram[:half][::-1]


def _entropy_threshold(histogram: np.ndarray, bound: float, levels: int) -> float:
    """The clipping threshold that minimizes KL(P || Q), P the clipped distribution of
    magnitudes and Q its quantization to ``levels`` levels (TensorRT's calibration)."""
    bins = histogram.size
    if histogram.sum() == 0 or bins <= levels:
        return bound
    best, best_divergence = bins, np.inf
    for stop in range(levels, bins + 1, _ENTROPY_STEP):
        inside = histogram[:stop].astype(np.float64)
        reference = inside.copy()
        reference[-1] += histogram[stop:].sum()  # P: what clipping at this threshold keeps
        # Q: the values inside the threshold merged into `levels` chunks, each chunk's mass
        # spread evenly over its non-empty bins; clipped outliers are what Q cannot represent.
        starts = np.linspace(0, stop, levels + 1).astype(np.int64)[:-1]
        sizes = np.diff(np.append(starts, stop))
        occupied = (inside > 0).astype(np.float64)
        mass = np.add.reduceat(inside, starts)
        filled = np.add.reduceat(occupied, starts)
        per_bin = np.divide(mass, filled, out=np.zeros_like(mass), where=filled > 0)
        candidate = np.repeat(per_bin, sizes) * occupied
        p = reference / reference.sum()
        q = candidate / candidate.sum()
        mask = p > 0
        divergence = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if divergence < best_divergence:
            best, best_divergence = stop, divergence
    return bound * best / bins


# ------------------------------------------------------------------------------- input data


def calibration_samples(
    model: Model | onnx.ModelProto,
    source: str | os.PathLike | Sequence[Mapping[str, np.ndarray]] | None,
    count: int,
    *,
    seed: int = 0,
    warn: Callable[[str], None] | None = None,
) -> Sequence[dict[str, np.ndarray]]:
    """Up to ``count`` samples for ``model``: read from a .npz or a folder of .npy/.npz
    (checked against the model's inputs; a batch counts as its rows, see
    :data:`~onnxslim.inputs.DATA_LAYOUT`), taken from a list of feeds, or synthesized.

    Synthesized samples call ``warn`` with :data:`SYNTHETIC_WARNING`: ranges measured on
    random data mean little, and a user must not mistake them for calibration.
    """
    if count < 1:
        raise InputDataError(f"calibration needs at least one sample, not {count}")
    specs = input_specs(model)
    if source is None:
        if warn is not None:
            warn(SYNTHETIC_WARNING)
        return SynthesizedSamples(specs, count, seed)
    if isinstance(source, str | os.PathLike):
        return split_rows(load_inputs(source, specs), specs)[:count]
    samples = [conform_feeds(feed, specs, "calibration data") for feed in list(source)[:count]]
    if not samples:
        raise InputDataError("calibration data holds no samples")
    return samples


class SynthesizedSamples(Sequence):
    """Random samples made when asked for, so that calibrating on many of them holds one
    batch in memory, not all of them."""

    def __init__(self, specs: list[InputSpec], count: int, seed: int) -> None:
        self.specs, self.count, self.seed = specs, count, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not -self.count <= index < self.count:
            raise IndexError(index)
        return synthesize_inputs(self.specs, seed=self.seed, sample_index=index % self.count)


def batched(
    samples: Iterable[Mapping[str, np.ndarray]], specs: Sequence[InputSpec], batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Samples stacked along axis 0 into batches of up to ``batch_size``, with their count.

    Only inputs whose first dimension is dynamic (and whose samples agree in shape) can be
    stacked; otherwise every sample is its own batch.
    """
    stackable = batch_size > 1 and all(
        spec.shape is not None and spec.shape and not isinstance(spec.shape[0], int)
        for spec in specs
    )
    pending: list[Mapping[str, np.ndarray]] = []
    for sample in samples:
        if not stackable:
            yield dict(sample), 1
            continue
        if pending and any(sample[k].shape != pending[0][k].shape for k in sample):
            yield _stack(pending), len(pending)
            pending = []
        pending.append(sample)
        if len(pending) == batch_size:
            yield _stack(pending), len(pending)
            pending = []
    if pending:
        yield _stack(pending), len(pending)


def _stack(samples: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([s[name] for s in samples], axis=0) for name in samples[0]}


# ------------------------------------------------------------------------------ running


def calibrate(
    model: Model | onnx.ModelProto,
    tensors: Sequence[str],
    samples: Sequence[Mapping[str, np.ndarray]],
    *,
    histograms: bool = False,
    channels: Collection[str] = (),
    batch_size: int = 16,
    memory: int = BATCH_MEMORY,
    provider: str = "cpu",
) -> dict[str, TensorStats]:
    """Statistics of each tensor in ``tensors`` (intermediates or graph inputs) over
    ``samples``, updated batch by batch with a progress bar that shows samples per second.
    Tensors named in ``channels`` also get per-channel ranges along their last axis.

    The first sample runs alone; its exposed tensors' size sets how many samples the next
    batches hold (at most ``batch_size``), so that one batch of them stays within ``memory``
    bytes: a 224x224 CNN exposes megabytes per sample, a small encoder kilobytes.
    """
    channels = set(channels)
    stats = {
        name: TensorStats(with_histogram=histograms, with_channels=name in channels)
        for name in tensors
    }
    specs = input_specs(model)
    started = time.perf_counter()
    done = 0

    def update(session, feed: dict[str, np.ndarray], count: int) -> int:
        nonlocal done
        outputs = run(session, feed)
        exposed = 0
        for name, tensor_stats in stats.items():
            value = outputs.get(name, feed.get(name))
            if value is not None:
                tensor_stats.update(value)
                exposed += np.asarray(value).nbytes
        del outputs
        done += count
        rate = done / max(time.perf_counter() - started, 1e-9)
        advance(count, description=f"calibrating ({rate:,.0f} samples/s)")
        return exposed

    with (
        open_session(model, provider, expose=tensors) as session,
        progress_bar("calibrating", len(samples)) as advance,
    ):
        exposed = 0
        for feed, count in batched(samples[:1], specs, 1):
            exposed = update(session, feed, count)
        size = max(1, min(batch_size, memory // max(exposed, 1)))
        for feed, count in batched(samples[1:], specs, size):
            update(session, feed, count)
    return stats
