"""Do two models compute the same thing? Run both on onnxruntime and compare their outputs.

Both models run on the same execution provider with the same inputs, so a difference is the
rewrite's and not the hardware's. Metrics are accumulated sample by sample (running sums), so
only one sample's outputs are held at a time whatever the number of samples.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxslim.errors import InputDataError, OnnxSlimError
from onnxslim.inputs import (
    InputSpec,
    conform_feeds,
    input_specs,
    load_inputs,
    synthesize_inputs,
)
from onnxslim.model import PROTOBUF_LIMIT, Model, ModelSource, load, load_skeleton, save
from onnxslim.progress import progress_bar
from onnxslim.runtime import check_provider, create_session, run

__all__ = [
    "Tolerances",
    "OutputComparison",
    "ValidationReport",
    "validate",
    "cosine_similarity",
    "sqnr_db",
]

Feeds = Mapping[str, np.ndarray]

# Outputs are compared in float64 blocks of this many elements, so that the temporaries of a
# comparison stay small next to the outputs themselves.
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Tolerances:
    """An output passes when ``|cand - ref| <= atol + rtol * |ref|`` everywhere (and its
    cosine similarity is at least ``min_cosine`` when that is given)."""

    atol: float
    rtol: float
    min_cosine: float | None = None


@dataclass
class OutputComparison:
    """How one output of the candidate compares with the reference's on one provider.

    Float outputs get the error metrics (over all samples) and ``mismatches`` = elements
    outside the tolerance; other outputs are compared exactly and only ``mismatches`` is set.
    ``max_rel`` is the largest ``|cand - ref| / |ref|`` where ``ref != 0``; ``cosine`` and
    ``sqnr_db`` treat all samples as one flattened vector (NaN/inf positions left out).
    ``top1_agreement`` is the fraction of rows with the same argmax, for (N, C) float outputs.
    ``reason`` says why a failing output failed.
    """

    provider: str
    name: str
    shape: tuple[int, ...] | None
    dtype: str | None
    max_abs: float | None = None
    mean_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    sqnr_db: float | None = None
    top1_agreement: float | None = None
    mismatches: int | None = None
    passed: bool = False
    reason: str | None = None


@dataclass
class ValidationReport:
    """The comparison of every reference output, per provider.

    ``samples`` counts rows where inputs have a symbolic batch axis (a batch of 450 images is
    450 samples), else runs; ``inputs`` says where they came from (a path, or "synthesized").
    """

    providers: list[str]
    samples: int
    tolerances: Tolerances
    outputs: list[OutputComparison] = field(default_factory=list)
    inputs: str = "synthesized"

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs)

    @property
    def atol(self) -> float:
        return self.tolerances.atol

    @property
    def rtol(self) -> float:
        return self.tolerances.rtol

    @property
    def min_cosine(self) -> float | None:
        return self.tolerances.min_cosine

    def failures(self) -> list[OutputComparison]:
        return [output for output in self.outputs if not output.passed]

    def failure_summary(self) -> str:
        """One line naming each failing output (and provider) with the reason it failed."""
        failures = self.failures()
        if not failures:
            return (
                f"all {len(self.outputs)} outputs within tolerance on "
                f"{', '.join(self.providers)} ({self.samples} samples)"
            )
        return "; ".join(f"'{o.name}' on {o.provider}: {o.reason}" for o in failures)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: infinities become "inf"/"-inf", NaN becomes None."""
        data = _json_safe(asdict(self))
        data["passed"] = self.passed
        return data


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


class _Accumulator:
    """Running sums for one output on one provider, fed one sample at a time."""

    def __init__(self, provider: str, name: str, tolerances: Tolerances) -> None:
        self.provider, self.name, self.tolerances = provider, name, tolerances
        self.shape: tuple[int, ...] | None = None
        self.dtype: str | None = None
        self.failure: str | None = None
        self.is_float = False
        self.count = 0
        self.mismatches = 0
        self.nonfinite_mismatches = 0
        self.abs_sum = self.max_abs = self.max_rel = 0.0
        self.dot = self.ref_sq = self.cand_sq = self.err_sq = 0.0
        self.top1_hits = self.top1_rows = 0

    def add(self, ref: np.ndarray, cand: np.ndarray | None) -> None:
        ref = np.asarray(ref)
        if self.shape is None:
            self.shape, self.dtype = tuple(ref.shape), str(ref.dtype)
            self.is_float = np.issubdtype(ref.dtype, np.floating)
        if self.failure is not None:
            return
        if cand is None:
            self.failure = "missing from the candidate's outputs"
            return
        cand = np.asarray(cand)
        if cand.dtype != ref.dtype:
            self.failure = f"dtype {cand.dtype} differs from the reference's {ref.dtype}"
        elif cand.shape != ref.shape:
            self.failure = f"shape {cand.shape} differs from the reference's {ref.shape}"
        elif self.is_float:
            self._add_float(ref, cand)
        else:
            self.count += ref.size
            self.mismatches += int(np.count_nonzero(ref != cand))

    def _add_float(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if ref.ndim == 2 and ref.shape[1] > 1:
            self.top1_hits += int(np.count_nonzero(ref.argmax(1) == cand.argmax(1)))
            self.top1_rows += ref.shape[0]
        flat_ref, flat_cand = ref.reshape(-1), cand.reshape(-1)
        for start in range(0, flat_ref.size, _CHUNK):
            stop = start + _CHUNK
            self._add_chunk(
                flat_ref[start:stop].astype(np.float64), flat_cand[start:stop].astype(np.float64)
            )

    def _add_chunk(self, ref: np.ndarray, cand: np.ndarray) -> None:
        tol = self.tolerances
        same = (ref == cand) | (np.isnan(ref) & np.isnan(cand))
        finite = np.isfinite(ref) & np.isfinite(cand)
        comparable = finite & ~same
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.where(comparable, np.abs(cand - ref), 0.0)
        ref0, cand0 = np.where(finite, ref, 0.0), np.where(finite, cand, 0.0)

        # np.isclose(equal_nan=True), without its warning when a tolerance is infinite
        # (--atol inf lets --min-cosine decide alone)
        with np.errstate(invalid="ignore", over="ignore"):
            within = finite & (err <= tol.atol + tol.rtol * np.abs(ref0))
        self.count += ref.size
        self.mismatches += int(np.count_nonzero(~same & ~within))
        self.nonfinite_mismatches += int(np.count_nonzero(~same & ~finite))
        self.max_abs = max(self.max_abs, float(err.max()))
        self.abs_sum += float(err.sum())
        nonzero = comparable & (ref != 0)
        if nonzero.any():
            self.max_rel = max(self.max_rel, float((err[nonzero] / np.abs(ref[nonzero])).max()))
        self.dot += float(ref0 @ cand0)
        self.ref_sq += float(ref0 @ ref0)
        self.cand_sq += float(cand0 @ cand0)
        self.err_sq += float(err @ err)

    def _cosine(self) -> float:
        if self.ref_sq == 0.0 and self.cand_sq == 0.0:
            return 1.0
        if self.ref_sq == 0.0 or self.cand_sq == 0.0:
            return 0.0
        return max(-1.0, min(1.0, self.dot / math.sqrt(self.ref_sq * self.cand_sq)))

    def _sqnr_db(self) -> float:
        if self.err_sq == 0.0:
            return math.inf
        if self.ref_sq == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.ref_sq / self.err_sq)

    def result(self) -> OutputComparison:
        comparison = OutputComparison(self.provider, self.name, self.shape, self.dtype)
        if self.failure is not None:
            comparison.reason = self.failure
            return comparison
        comparison.mismatches = self.mismatches
        if not self.is_float:
            comparison.passed = self.mismatches == 0
            if not comparison.passed:
                comparison.reason = f"{self.mismatches} of {self.count} elements differ"
            return comparison

        comparison.max_abs = self.max_abs
        comparison.mean_abs = self.abs_sum / self.count if self.count else 0.0
        comparison.max_rel = self.max_rel
        comparison.cosine = self._cosine()
        comparison.sqnr_db = self._sqnr_db()
        if self.top1_rows:
            comparison.top1_agreement = self.top1_hits / self.top1_rows
        comparison.reason = self._float_reason(comparison.cosine) or None
        comparison.passed = comparison.reason is None
        return comparison

    def _float_reason(self, cosine: float) -> str:
        tol = self.tolerances
        reasons = []
        if self.mismatches:
            reason = (
                f"{self.mismatches} of {self.count} elements outside atol={tol.atol:g} "
                f"rtol={tol.rtol:g} (max_abs {self.max_abs:.3g}, max_rel {self.max_rel:.3g})"
            )
            if self.nonfinite_mismatches:
                reason += f", {self.nonfinite_mismatches} NaN/inf where the other model differs"
            reasons.append(reason)
        if tol.min_cosine is not None and cosine < tol.min_cosine:
            reasons.append(f"cosine {cosine:.6f} < min_cosine {tol.min_cosine:g}")
        return "; ".join(reasons)


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity of two arrays taken as flat vectors, in float64 (1 for two zero
    vectors, as for any two that are allclose)."""
    a = np.ravel(reference).astype(np.float64)
    b = np.ravel(candidate).astype(np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else float(np.allclose(a, b))


_SQNR_CHUNK = 1 << 22  # values per float64 chunk


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB, in float64 (inf when the two are equal,
    -inf when the reference is zero and they are not)."""
    reference, approximation = np.ravel(reference), np.ravel(approximation)
    noise = signal = 0.0
    for start in range(0, reference.size, _SQNR_CHUNK):  # float64 copies of a chunk only
        part = reference[start : start + _SQNR_CHUNK].astype(np.float64)
        error = part - approximation[start : start + _SQNR_CHUNK].astype(np.float64)
        noise, signal = noise + float(error @ error), signal + float(part @ part)
    if noise == 0:
        return float("inf")
    return 10.0 * float(np.log10(signal / noise)) if signal else float("-inf")


def _model_file(
    model: ModelSource, scratch: Path, label: str
) -> tuple[str | bytes, onnx.ModelProto]:
    """Something onnxruntime can open (a path where there is one, else bytes or a saved copy)
    and the model's skeleton (see :func:`~onnxslim.model.load_skeleton`) for its signature.

    A path or bytes given by the caller goes to onnxruntime as it is, after the skeleton's
    checks: onnxruntime would otherwise follow external data wherever the file says.
    """
    if isinstance(model, Model):
        model = str(save(model, scratch / f"{label}.onnx"))
    elif isinstance(model, onnx.ModelProto):
        path = scratch / f"{label}.onnx"
        if model.ByteSize() < PROTOBUF_LIMIT and not _uses_external_data(model):
            onnx.save_model(model, str(path))
        else:  # onnx.save would rewrite the caller's proto to external data in place
            save(load(model), path)
        model = str(path)
    elif isinstance(model, bytes | bytearray):
        model = bytes(model)
    else:
        model = os.fspath(model)
    return model, load_skeleton(model)


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def _check_same_inputs(reference: list[InputSpec], candidate: list[InputSpec]) -> None:
    ref_types = {spec.name: spec.type_name for spec in reference}
    cand_types = {spec.name: spec.type_name for spec in candidate}
    if ref_types == cand_types:
        return
    for name in sorted(ref_types.keys() | cand_types.keys()):
        if name not in cand_types:
            problem = f"input '{name}' of the reference is missing from the candidate"
        elif name not in ref_types:
            problem = f"the candidate has an extra input '{name}'"
        elif ref_types[name] != cand_types[name]:
            problem = (
                f"input '{name}' is {cand_types[name]} in the candidate, "
                f"{ref_types[name]} in the reference"
            )
        else:
            continue
        raise InputDataError(f"the models take different inputs: {problem}")


def _sample_source(
    specs: list[InputSpec],
    inputs: str | os.PathLike | Sequence[Feeds] | None,
    input_shapes: Mapping[str, list[int]] | None,
    samples: int,
    seed: int,
) -> tuple[int, Callable[[int], dict[str, np.ndarray]]]:
    """How many samples there are, and a function giving sample ``i``."""
    if inputs is None:
        if samples < 1:
            raise InputDataError(f"samples must be at least 1, got {samples}")
        return samples, lambda index: synthesize_inputs(specs, input_shapes, seed, index)
    if input_shapes:
        raise InputDataError(
            "input shapes apply to synthesized inputs only; give input data or shapes, not both"
        )
    if isinstance(inputs, str | os.PathLike):
        loaded = load_inputs(inputs, specs)
    else:
        loaded = [
            conform_feeds(feeds, specs, f"input sample {i}") for i, feeds in enumerate(inputs)
        ]
    if not loaded:
        raise InputDataError("no input samples were given")
    return len(loaded), loaded.__getitem__


def _labelled(label: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, with errors naming the model (reference or candidate)."""
    try:
        return call(*args, **kwargs)
    except OnnxSlimError as exc:
        raise type(exc)(f"{label} model: {exc}") from exc


def validate(
    reference: ModelSource,
    candidate: ModelSource,
    *,
    providers: Sequence[str] = ("cpu",),
    inputs: str | os.PathLike | Sequence[Feeds] | None = None,
    input_shapes: Mapping[str, list[int]] | None = None,
    samples: int = 1,
    seed: int = 0,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    min_cosine: float | None = None,
    tf32: bool = False,
    progress: bool = True,
) -> ValidationReport:
    """Compare ``candidate``'s outputs with ``reference``'s on each provider.

    Models are paths, bytes, ModelProtos or :class:`~onnxslim.model.Model`. ``inputs`` is a
    path for :func:`~onnxslim.inputs.load_inputs` or a list of feed dicts; without it,
    ``samples`` inputs are synthesized from ``seed`` (``input_shapes`` fixes symbolic dims).
    Outputs are matched by name; a reference output missing from the candidate fails.
    """
    tolerances = Tolerances(atol=atol, rtol=rtol, min_cosine=min_cosine)
    for name in providers:
        check_provider(name)  # an unknown or missing provider fails before any work
    with tempfile.TemporaryDirectory(prefix="onnxslim-validate-") as scratch:
        ref_file, ref_proto = _labelled(
            "reference", _model_file, reference, Path(scratch), "reference"
        )
        cand_file, cand_proto = _labelled(
            "candidate", _model_file, candidate, Path(scratch), "candidate"
        )
        specs = input_specs(ref_proto)
        _check_same_inputs(specs, input_specs(cand_proto))
        del ref_proto, cand_proto
        count, sample = _sample_source(specs, inputs, input_shapes, samples, seed)

        source = os.fspath(inputs) if isinstance(inputs, str | os.PathLike) else None
        if source is None and inputs is not None:
            source = "given feeds"
        report = ValidationReport(
            list(providers), count, tolerances, inputs=source or "synthesized"
        )
        counted = _RowCounter(specs, sample)
        with progress_bar("validating", len(providers) * count, enabled=progress) as advance:
            for provider in providers:
                report.outputs.extend(
                    _compare_on(
                        provider, ref_file, cand_file, count, counted, tolerances, tf32, advance
                    )
                )
        report.samples = counted.rows or count
    return report


class _RowCounter:
    """``sample(i)``, counting the rows of the samples it hands out the first time: the
    size of axis 0 of an input whose axis 0 is symbolic (a batch), else one per sample."""

    def __init__(self, specs: list[InputSpec], sample: Callable[[int], dict[str, np.ndarray]]):
        self._sample = sample
        self._batched = next(
            (spec.name for spec in specs if spec.shape and not isinstance(spec.shape[0], int)),
            None,
        )
        self._seen: set[int] = set()
        self.rows = 0

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        feeds = self._sample(index)
        if index not in self._seen:
            self._seen.add(index)
            array = feeds.get(self._batched) if self._batched else None
            self.rows += int(array.shape[0]) if array is not None and array.ndim else 1
        return feeds


def _compare_on(
    provider: str,
    ref_file: str | bytes,
    cand_file: str | bytes,
    count: int,
    sample: Callable[[int], dict[str, np.ndarray]],
    tolerances: Tolerances,
    tf32: bool,
    advance: Callable[..., None],
) -> list[OutputComparison]:
    ref_session = _labelled("reference", create_session, ref_file, provider, tf32=tf32)
    cand_session = _labelled("candidate", create_session, cand_file, provider, tf32=tf32)
    names = [output.name for output in ref_session.get_outputs()]
    accumulators = {name: _Accumulator(provider, name, tolerances) for name in names}
    for index in range(count):
        feeds = sample(index)
        expected = _labelled("reference", run, ref_session, feeds)
        actual = _labelled("candidate", run, cand_session, feeds)
        for name in names:
            accumulators[name].add(expected[name], actual.get(name))
        del expected, actual
        advance()
    return [accumulators[name].result() for name in names]
