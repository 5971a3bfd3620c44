"""How close a quantized model stays to the float one, on samples calibration never saw.

Calibration ranges fit the samples they were measured on; judging the result on those same
samples flatters it. Quantize therefore holds some samples out (see
:func:`split_held_out`) and measures on them, per float output:

* the cosine similarity with the float model's output, per sample (mean and worst), which
  is what embeddings, logits and feature maps are judged by;
* for classifiers (outputs shaped ``(batch, classes)`` that come from a linear layer, maybe
  through a softmax) and integer outputs, how often the prediction is the same (top-1
  agreement);
* for probability maps (outputs a Sigmoid computes, such as a text detector's per-pixel
  map), how often an element falls on the same side of 0.5, also reported as top-1
  agreement: most of such a map is near 0, where small absolute errors weigh heavily in
  the cosine (PP-OCR's detector, every layer quantized: cosine 0.82 while 99.8% of the
  pixels decide alike).

Where the model takes one attention mask (an input named ``*mask*`` of rank 2, batch by
sequence), positions it marks as padding are left out of outputs shaped ``(batch, sequence,
...)``: no user reads them, and they would judge the model on what it computes for nothing.

A :class:`QualityFloor` says what is good enough: ``min_cosine`` for the former,
``min_top1`` for the latter. A result meets it by a *lower confidence bound*, not by its mean:
a mean over 16 held-out samples is a noisy estimate, and a search that stops at the first
variant whose mean reaches the floor picks the variant that was lucky on those samples
(the PP-OCR recognizer's guard accepted mean cosine 0.9907 on 16 text lines; 64 other lines
gave 0.9815). The cosine's bound is the mean less :data:`Z` standard errors over the samples;
top-1 agreement's is the Wilson score bound, also at :data:`Z`.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.calibration import batched
from onnxslim.inputs import input_specs
from onnxslim.model import Model
from onnxslim.rewrite import STANDARD_DOMAINS
from onnxslim.runtime import open_session, run
from onnxslim.validate import cosine_similarity

__all__ = [
    "QualityFloor",
    "OutputQuality",
    "Quality",
    "SqnrAccumulator",
    "ShapesChanged",
    "HeldOut",
    "split_held_out",
    "classifier_outputs",
    "HELD_OUT_MAX",
    "BATCH",
    "Z",
    "mean_lower_bound",
    "probability_outputs",
    "wilson_lower_bound",
]

HELD_OUT_MAX = 32  # samples held out of calibration to measure the result on
BATCH = 16  # samples per run; dynamic quantization runs one at a time (its ranges span a batch)
# Ops between a classifier's last linear layer and its output.
_PASS_THROUGH = ("Softmax", "LogSoftmax", "Identity", "Flatten", "Reshape", "Squeeze")
_LINEAR = ("Gemm", "MatMul", "Conv")
# Ops between a probability map's Sigmoid and its output.
_SHAPE_ONLY = ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose")
# Standard errors below the estimate that the floor is checked at: one-sided, about 97.7%.
Z = 2.0


def mean_lower_bound(values: Sequence[float]) -> float:
    """The mean of ``values`` less :data:`Z` standard errors (sample standard deviation over
    the square root of their count): what the mean is, with ~97.7% confidence, at least. One
    value gives no spread; its bound is itself."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean
    return mean - Z * float(np.std(values, ddof=1)) / math.sqrt(len(values))


def wilson_lower_bound(hits: int, count: int) -> float:
    """The Wilson score lower bound of a proportion, ``hits`` of ``count``, at :data:`Z`.
    Unlike ``p - Z * stderr`` it stays informative at p = 1: 16 of 16 gives 0.80, not 1."""
    if count == 0:
        return 1.0
    p, z2 = hits / count, Z * Z
    centre = p + z2 / (2 * count)
    spread = Z * math.sqrt(p * (1 - p) / count + z2 / (4 * count * count))
    return max(0.0, (centre - spread) / (1 + z2 / count))


@dataclass(frozen=True)
class QualityFloor:
    """The least a quantized model must keep: mean cosine similarity with the float model's
    outputs, and top-1 agreement for classifier (and integer) outputs."""

    min_cosine: float | None = 0.99
    min_top1: float | None = 0.98


@dataclass
class OutputQuality:
    """One output's agreement with the float model over the held-out samples.

    ``top1`` is set for classifiers (argmax agreement) and integer outputs (share of equal
    values), over ``top1_count`` predictions; integer outputs have no cosine. The floor is
    checked against the lower bounds (:attr:`cosine_low`, :attr:`top1_low`), not the means.
    ``cosine_bound`` is None where the spread is unknown: the mean then stands for it.
    """

    name: str
    cosine: float | None
    worst_cosine: float | None
    top1: float | None = None
    cosine_bound: float | None = None
    top1_count: int = 0

    @property
    def cosine_low(self) -> float | None:
        """The mean cosine less :data:`Z` standard errors (the mean where unknown)."""
        return self.cosine if self.cosine_bound is None else self.cosine_bound

    @property
    def top1_low(self) -> float | None:
        """The Wilson lower bound of the top-1 agreement (the agreement where no count)."""
        if self.top1 is None or not self.top1_count:
            return self.top1
        return wilson_lower_bound(round(self.top1 * self.top1_count), self.top1_count)

    def top1_floor(self, floor: QualityFloor) -> float | None:
        """``floor.min_top1``, capped at the bound of full agreement: 16 predictions cannot
        bound agreement above 0.80, however many agree, so there every one must agree."""
        if floor.min_top1 is None or not self.top1_count:
            return floor.min_top1
        return min(floor.min_top1, wilson_lower_bound(self.top1_count, self.top1_count))

    def misses(self, floor: QualityFloor) -> str | None:
        """Why this output is below ``floor``, or None. A classifier passes with either its
        top-1 agreement or its cosine: on a few held-out samples one prediction that flips
        between near-tied logits moves agreement by whole percents, not the logits' cosine."""
        low, top1_low, top1_floor = self.cosine_low, self.top1_low, self.top1_floor(floor)
        cosine_ok = low is None or floor.min_cosine is None or low >= floor.min_cosine
        top1_ok = top1_low is None or top1_floor is None or top1_low >= top1_floor
        cosine = None if self.cosine is None else f"cosine {self._cosine_text()}"
        if self.top1 is None and not cosine_ok:
            return f"'{self.name}' {cosine} < {floor.min_cosine}"
        if self.top1 is not None and not top1_ok and (self.cosine is None or not cosine_ok):
            text = f"'{self.name}' top-1 agreement {self._top1_text()} < {top1_floor:.2%}"
            if cosine is not None:
                text += f" and {cosine} < {floor.min_cosine}"
            return text
        return None

    def margin(self, floor: QualityFloor) -> float:
        """How far the lower bounds are above the floor (negative: below)."""
        margins = []
        if self.cosine_low is not None:
            margins.append(self.cosine_low - (floor.min_cosine or 0.0))
        if self.top1_low is not None:
            margins.append(self.top1_low - (self.top1_floor(floor) or 0.0))
        return max(margins, default=0.0)

    def describe(self) -> str:
        parts = []
        if self.top1 is not None:
            parts.append(f"top-1 agreement {self.top1:.2%}")
        if self.cosine is not None:
            parts.append(f"cosine {self.cosine:.4f} (worst sample {self.worst_cosine:.4f})")
        return ", ".join(parts)

    def describe_bounds(self) -> str:
        """The lower bounds the floor is checked against ("" when they are the means)."""
        parts = []
        if self.top1 is not None and self.top1_count:
            parts.append(f"top-1 {self.top1_low:.2%} of {self.top1_count}")
        if self.cosine is not None and self.cosine_bound is not None:
            parts.append(f"cosine {self.cosine_bound:.4f}")
        return ", ".join(parts)

    def _cosine_text(self) -> str:
        if self.cosine_bound is None:
            return f"{self.cosine:.4f}"
        return f"{self.cosine:.4f} (lower bound {self.cosine_bound:.4f})"

    def _top1_text(self) -> str:
        if not self.top1_count:
            return f"{self.top1:.2%}"
        return f"{self.top1:.2%} (lower bound {self.top1_low:.2%} of {self.top1_count})"


@dataclass
class Quality:
    """Agreement of every float (or integer) output with the float model's."""

    outputs: list[OutputQuality]
    samples: int

    def misses(self, floor: QualityFloor) -> list[str]:
        return [m for o in self.outputs if (m := o.misses(floor)) is not None]

    def meets(self, floor: QualityFloor) -> bool:
        return not self.misses(floor)

    @property
    def cosine(self) -> float:
        """The smallest mean cosine over the float outputs (1.0 when none)."""
        return min((o.cosine for o in self.outputs if o.cosine is not None), default=1.0)

    @property
    def cosine_bound(self) -> float:
        """The smallest lower bound of a mean cosine over the float outputs (1.0 when none)."""
        return min((o.cosine_low for o in self.outputs if o.cosine is not None), default=1.0)

    @property
    def top1(self) -> float | None:
        values = [o.top1 for o in self.outputs if o.top1 is not None]
        return min(values) if values else None

    @property
    def top1_bound(self) -> float | None:
        values = [o.top1_low for o in self.outputs if o.top1 is not None]
        return min(values) if values else None

    def score(self, floor: QualityFloor) -> float:
        """How far from failing (positive: above the floor), for comparing two results."""
        return min((o.margin(floor) for o in self.outputs), default=0.0)

    def describe(self) -> str:
        if len(self.outputs) == 1:
            text = self.outputs[0].describe()
            bounds = self.outputs[0].describe_bounds()
        else:
            text = "; ".join(f"'{o.name}' {o.describe()}" for o in self.outputs)
            bounds = "; ".join(
                f"'{o.name}' {b}" for o in self.outputs if (b := o.describe_bounds())
            )
        text = f"{text} on {self.samples} held-out sample(s)"
        return f"{text}; lower bounds: {bounds}" if bounds else text


class ShapesChanged(Exception):
    """The quantized model computes outputs of other shapes than the float one."""


def split_held_out(
    samples: Sequence[Mapping[str, np.ndarray]], calibration: int
) -> tuple[Sequence, Sequence, bool]:
    """Calibration samples and held-out samples, and whether the two are disjoint.

    Samples beyond the first ``calibration`` are held out (up to :data:`HELD_OUT_MAX`); when
    there are no more than that, the last quarter is (at least one, at most the maximum).
    A single sample is used for both, and the caller says so.
    """
    if len(samples) > calibration:
        return samples[:calibration], samples[calibration : calibration + HELD_OUT_MAX], True
    if len(samples) < 2:
        return samples, samples, False
    held = min(HELD_OUT_MAX, max(1, len(samples) // 4))
    return samples[: len(samples) - held], samples[len(samples) - held :], True


def classifier_outputs(graph: gs.Graph) -> set[str]:
    """Float outputs shaped ``(batch, classes)`` computed by a linear layer (Gemm, MatMul or a
    1x1 Conv), perhaps through a softmax: judged by top-1 agreement, not cosine."""
    return {
        output.name
        for output in graph.outputs
        if output.shape is not None
        and len(output.shape) == 2
        and isinstance(output.shape[1], int)
        and output.shape[1] >= 2
        and _computed_by(output, _LINEAR, _PASS_THROUGH)
    }


def probability_outputs(graph: gs.Graph) -> set[str]:
    """Float outputs that a Sigmoid computes (perhaps through ops that only move its values):
    judged by decisions at 0.5 as well as by cosine."""
    return {
        output.name for output in graph.outputs if _computed_by(output, ("Sigmoid",), _SHAPE_ONLY)
    }


def _computed_by(output: gs.Tensor, ops: Sequence[str], through: Sequence[str]) -> bool:
    """Whether a standard op among ``ops`` computes ``output``, directly or through a chain
    of ``through`` ops (each read at its first input)."""
    tensor = output
    while tensor.inputs:
        producer = tensor.inputs[0]
        if producer.domain not in STANDARD_DOMAINS:
            return False
        if producer.op in ops:
            return True
        if producer.op not in through or not producer.inputs:
            return False
        tensor = producer.inputs[0]
    return False


class SqnrAccumulator:
    """Signal and noise power summed over batches, for a SQNR over all of them."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, name: str, reference: np.ndarray, approximation: np.ndarray) -> None:
        if reference.shape != approximation.shape or reference.dtype != np.float32:
            return
        ref = reference.ravel()
        error = ref - approximation.ravel()
        # float32 dot products (BLAS): accurate to far better than the 0.1 dB reported.
        self.signal[name] = self.signal.get(name, 0.0) + float(np.dot(ref, ref))
        self.noise[name] = self.noise.get(name, 0.0) + float(np.dot(error, error))

    def result(self) -> dict[str, float]:
        values = {}
        for name, signal in self.signal.items():
            noise = self.noise[name]
            if noise == 0:
                values[name] = math.inf
            else:
                values[name] = 10 * math.log10(signal / noise) if signal else -math.inf
        return values


@dataclass
class _OutputAccumulator:
    cosines: list[float] = field(default_factory=list)
    hits: int = 0
    rows: int = 0


class HeldOut:
    """The held-out samples and the float model's outputs on them.

    ``profile`` runs the float model (with extra tensors exposed), then a quantized one,
    sample by sample, and compares the layer outputs of both (the float ones wait on disk);
    ``quality`` compares another quantized variant's outputs with the stored float ones.
    """

    def __init__(
        self,
        float_model: Model,
        samples: Sequence[Mapping[str, np.ndarray]],
        batch_size: int = BATCH,
    ) -> None:
        specs = input_specs(float_model)
        self.batches = list(batched(samples, specs, batch_size))
        self.samples = len(samples)
        self.outputs = [o.name for o in float_model.graph.outputs]
        self.classifiers: set[str] = set()
        self.probabilities: set[str] = set()
        self.reference: list[dict[str, np.ndarray]] | None = None
        masks = [s.name for s in specs if "mask" in s.name.lower() and s.rank == 2]
        self.mask = masks[0] if len(masks) == 1 else None

    def profile(
        self,
        reference_model: Model,
        quantized: Model,
        pairs: Mapping[str, str],
        keys: Iterable[str],
    ) -> tuple[Quality, dict[str, float], dict[str, float]]:
        """Quality of ``quantized``, and two SQNRs per layer: of each ``pairs`` value (a
        shadow's output in ``reference_model``) against its key (the float output), and of
        each of ``keys`` in ``quantized`` against the float model's."""
        keys = list(keys)
        local, accumulated = SqnrAccumulator(), SqnrAccumulator()
        # One session at a time, each freed before the next (a session is held only by the
        # method that runs it): the float model's layer outputs wait on disk for the quantized
        # model's (for a 3 GB decoder, hundreds of MB per sample), and the sessions' weights
        # are never held together.
        with tempfile.TemporaryDirectory(prefix="onnxslim-heldout-") as folder:
            spill = _LayerOutputs(Path(folder), keys)
            self.reference = self._run_reference(reference_model, keys, pairs, spill, local)
            results = self._run_quantized(quantized, keys, spill, accumulated)
        return self._compare(results), local.result(), accumulated.result()

    def _run_reference(
        self,
        model: Model,
        keys: list[str],
        pairs: Mapping[str, str],
        spill: _LayerOutputs,
        local: SqnrAccumulator,
    ) -> list[dict[str, np.ndarray]]:
        """The float outputs per batch; each shadow's SQNR goes to ``local`` and the layer
        outputs to ``spill``."""
        reference = []
        with open_session(model, expose=[*keys, *pairs.values()], memory_pattern=False) as session:
            for feed, count in self.batches:
                # One sample at a time: the exposed tensors of a whole batch could be large.
                floats = []
                for single in _rows(feed, count):
                    exposed = run(session, single)
                    for key, shadow in pairs.items():
                        if key in exposed and shadow in exposed:
                            local.add(key, exposed[key], exposed[shadow])
                    spill.put(exposed)
                    floats.append({name: exposed[name] for name in self.outputs})
                    del exposed
                reference.append(_joined(floats, session, feed, self.outputs))
        return reference

    def _run_quantized(
        self,
        model: Model,
        keys: list[str],
        spill: _LayerOutputs,
        accumulated: SqnrAccumulator,
    ) -> list[dict[str, np.ndarray]]:
        """The quantized outputs per batch; each layer output's SQNR against the float one
        that ``spill`` holds goes to ``accumulated``."""
        results = []
        with open_session(model, expose=keys, memory_pattern=False) as session:
            sample = 0
            for feed, count in self.batches:
                values = []
                for single in _rows(feed, count):
                    exposed = run(session, single)
                    for key, stored in spill.get(sample):
                        if key in exposed:
                            accumulated.add(key, stored, exposed[key])
                    sample += 1
                    values.append({name: exposed[name] for name in self.outputs})
                    del exposed
                results.append(_joined(values, session, feed, self.outputs))
        return results

    def quality(self, model: Model) -> Quality:
        """The agreement of ``model``'s outputs with the float model's (after ``profile``)."""
        with open_session(model, memory_pattern=False) as session:
            results = [
                {name: value for name, value in run(session, feed).items() if name in self.outputs}
                for feed, _ in self.batches
            ]
        return self._compare(results)

    def _compare(self, results: list[dict[str, np.ndarray]]) -> Quality:
        assert self.reference is not None, "profile() first"
        accumulators = {name: _OutputAccumulator() for name in self.outputs}
        for (feed, count), reference, result in zip(
            self.batches, self.reference, results, strict=True
        ):
            mask = np.asarray(feed[self.mask]) != 0 if self.mask else None
            for name in self.outputs:
                want, got = np.asarray(reference[name]), np.asarray(result[name])
                if want.shape != got.shape:
                    raise ShapesChanged(
                        f"output '{name}' has shape {list(got.shape)} instead of "
                        f"{list(want.shape)} (a quantized value sets a size)"
                    )
                self._accumulate(accumulators[name], name, want, got, count, mask)
        outputs = []
        for name, acc in accumulators.items():
            if not acc.cosines and not acc.rows:
                continue
            top1 = acc.hits / acc.rows if acc.rows else None
            if acc.cosines:
                cosine, worst = float(np.mean(acc.cosines)), float(min(acc.cosines))
                bound = mean_lower_bound(acc.cosines)
            else:
                cosine = worst = bound = None
            outputs.append(OutputQuality(name, cosine, worst, top1, bound, acc.rows))
        return Quality(outputs, self.samples)

    def _accumulate(
        self,
        acc: _OutputAccumulator,
        name: str,
        want: np.ndarray,
        got: np.ndarray,
        count: int,
        mask: np.ndarray | None,
    ) -> None:
        rows = want.ndim > 0 and want.shape[0] == count  # a scalar output has no rows
        if mask is not None and rows and want.shape[: mask.ndim] == mask.shape:
            # Padded positions (attention mask 0) are not part of any result a user reads.
            pairs = [(w[m], g[m]) for w, g, m in zip(want, got, mask, strict=True) if m.any()]
            if np.issubdtype(want.dtype, np.floating):
                acc.cosines.extend(_cosine(a, b) for a, b in pairs)
                return
        if np.issubdtype(want.dtype, np.integer) or want.dtype == np.bool_:
            acc.hits += int(np.count_nonzero(want == got))
            acc.rows += want.size
            return
        if not np.issubdtype(want.dtype, np.floating):
            return
        if name in self.classifiers:
            acc.hits += int(np.count_nonzero(want.argmax(-1) == got.argmax(-1)))
            acc.rows += want.shape[0]
        elif name in self.probabilities:
            acc.hits += int(np.count_nonzero((want > 0.5) == (got > 0.5)))
            acc.rows += want.size
        pairs = zip(want, got, strict=True) if rows else [(want, got)]
        acc.cosines.extend(_cosine(a, b) for a, b in pairs)


class _LayerOutputs:
    """The float model's values of ``keys``, one file per sample in ``folder``, read back
    memory-mapped."""

    def __init__(self, folder: Path, keys: list[str]) -> None:
        self.folder = folder
        self.keys = keys
        self.count = 0

    def put(self, exposed: Mapping[str, np.ndarray]) -> None:
        present = [key for key in self.keys if key in exposed]
        with open(self.folder / f"{self.count}.npz", "wb") as handle:
            np.savez(handle, *(exposed[key] for key in present))
        (self.folder / f"{self.count}.json").write_text(json.dumps(present))
        self.count += 1

    def get(self, index: int) -> Iterator[tuple[str, np.ndarray]]:
        """Sample ``index``'s values, one at a time."""
        present = json.loads((self.folder / f"{index}.json").read_text())
        with np.load(self.folder / f"{index}.npz") as stored:
            for i, key in enumerate(present):
                yield key, stored[f"arr_{i}"]


def _rows(feed: Mapping[str, np.ndarray], count: int) -> list[dict[str, np.ndarray]]:
    """A batch of ``count`` samples (stacked along axis 0) as one feed per sample."""
    if count == 1:
        return [dict(feed)]
    return [{name: value[i : i + 1] for name, value in feed.items()} for i in range(count)]


def _joined(
    rows: list[dict[str, np.ndarray]], session, feed: Mapping[str, np.ndarray], names: list[str]
) -> dict[str, np.ndarray]:
    """The outputs of the whole batch from those of its samples, concatenated along axis 0;
    run again as a batch when an output has no such axis."""
    if len(rows) == 1:
        return rows[0]
    if all(row[n].ndim and row[n].shape[0] == 1 for row in rows for n in names):
        return {n: np.concatenate([row[n] for row in rows]) for n in names}
    outputs = run(session, feed)
    return {n: outputs[n] for n in names}


def _cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity where both are finite (masked logits are -inf in both); 0 when one
    is infinite where the other is not (a mask lost or invented)."""
    finite_a, finite_b = np.isfinite(reference), np.isfinite(candidate)
    if finite_a.all() and finite_b.all():
        return cosine_similarity(reference, candidate)
    if (finite_a != finite_b).any():
        return 0.0
    return cosine_similarity(reference[finite_a], candidate[finite_b])
