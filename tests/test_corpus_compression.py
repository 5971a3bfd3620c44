"""The compression passes over third-party graphs: onnx's backend test models.

Compression changes numerics on purpose, so outputs are not compared with the recorded ones.
What must hold for every model onnxruntime can run: after each compression pass the model
passes onnx.checker (strictly when the original does) and runs in onnxruntime on the recorded
inputs, giving as many outputs of the same shapes. Pruning at ratio 0 changes nothing, so its
outputs must also equal the original's. A pass that cannot handle a model must leave it
untouched (and say why), never break it.

The models, their inputs and onnxruntime's own failures are read as in ``test_corpus``.
"""

from __future__ import annotations

import tempfile
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxslim.passes.quantize import AlreadyQuantizedError
from test_corpus import (
    ORT_ERRORS,
    _compare,
    _passes_full_check,
    _read_data_sets,
    _run_all,
    _tolerance,
    check_corpus,
    load_case,
    report_lines,
)

from onnxslim import optimize
from onnxslim.errors import QualityFloorError
from onnxslim.model import save

# Each pass on its own, as a user would run it after export. quantize calibrates on
# synthesized inputs (the corpus has too few samples to mean more) and warns about it.
SPECS = (
    "quantize",
    "quantize(weights=int4, activations=none)",
    "prune-channels(ratio=0.5)",
    "float16",
    "prune-weights(sparsity=0.5, sparse_storage=true, min_size=16)",
    "cluster-weights(bits=4, min_size=16)",
)
IDENTITY = "prune-channels(ratio=0.0)"
# quantize refuses, writing nothing, a model below its quality floor on the (synthesized)
# held-out samples, and a model that is already quantized.
REFUSALS = (QualityFloorError, AlreadyQuantizedError)


@dataclass
class CompressionResult:
    name: str
    runnable: bool = True
    changed: Counter = field(default_factory=Counter)  # spec -> 1 when the pass changed it
    refused: Counter = field(default_factory=Counter)  # spec -> 1 when the pass refused it
    failures: list[str] = field(default_factory=list)


def check_case(case_dir: str) -> CompressionResult:
    ort.set_default_logger_severity(3)
    warnings.simplefilter("ignore")  # synthesized calibration data warns, on purpose
    directory = Path(case_dir)
    result = CompressionResult(f"{directory.parent.name}/{directory.name}")
    try:
        _check(directory, result)
    except Exception as exc:  # a bug of the harness or the library: report, never hide
        result.failures.append(f"harness: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    return result


def _check(directory: Path, result: CompressionResult) -> None:
    try:
        case = load_case(directory)
    except ORT_ERRORS:
        result.runnable = False
        return
    model_path, proto, data_sets = case.model_path, case.proto, case.data_sets
    raw_outputs, reference = case.raw_outputs, case.reference
    strict = _passes_full_check(proto)
    with tempfile.TemporaryDirectory(prefix="onnxslim-corpus-compress-") as scratch:
        for spec in (*SPECS, IDENTITY):
            try:
                model, report = optimize(model_path, spec, prepare=False)  # the pass alone
                path = save(model, Path(scratch) / "compressed.onnx")
                onnx.checker.check_model(str(path), full_check=strict)
                # Fresh inputs for every run: onnxruntime may write into a feed in place
                # (BatchNormalization in training mode updates its running mean).
                fresh = _read_data_sets(directory, proto)
                outputs = _run_all(onnx.load(str(path)), fresh, raw_outputs)
            except REFUSALS:
                result.refused[spec] += 1  # an answer by design: nothing written
                continue
            except Exception as exc:
                result.failures.append(f"{spec}: {type(exc).__name__}: {_first_line(exc)}")
                continue
            result.changed[spec] += int(any(record.changed for record in report.passes))
            problem = _shape_problem(reference, outputs)
            if spec == IDENTITY and problem is None:
                problem = _value_problem(proto, data_sets, reference, outputs)
            if problem:
                result.failures.append(f"{spec}: {problem}")


def _shape_problem(reference: list, outputs: list) -> str | None:
    for data_set, (expected, actual) in enumerate(zip(reference, outputs, strict=True)):
        if len(expected) != len(actual):
            return f"data set {data_set}: {len(actual)} outputs instead of {len(expected)}"
        for position, (want, got) in enumerate(zip(expected, actual, strict=True)):
            if isinstance(want, np.ndarray) and want.shape != np.asarray(got).shape:
                return f"output {position}: shape {np.asarray(got).shape} instead of {want.shape}"
    return None


def _value_problem(proto, data_sets, reference: list, outputs: list) -> str | None:
    """The outputs against the recorded ones, as the default pipeline's corpus test checks."""
    tolerances = [_tolerance(o.type) for o in proto.graph.output]
    for index, (data_set, original, actual) in enumerate(
        zip(data_sets, reference, outputs, strict=True)
    ):
        rows = zip(actual, data_set.expected, original, tolerances, strict=False)
        for position, row in enumerate(rows):
            if problem := _compare(*row):
                return f"data set {index}, output {position}: {problem}"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


@pytest.fixture(scope="module")
def compression_results(tmp_path_factory) -> list[CompressionResult]:
    return check_corpus(check_case, tmp_path_factory)


def test_compression_passes_leave_every_backend_test_model_valid_and_runnable(
    compression_results, request
):
    ran = [r for r in compression_results if r.runnable]
    assert len(ran) >= len(compression_results) // 2, "most models should run"
    changed, refused = Counter(), Counter()
    for result in ran:
        changed.update(result.changed)
        refused.update(result.refused)
    report_lines(
        request,
        [
            f"corpus (compression): {len(ran)} models ran through {len(SPECS) + 1} passes each; "
            "models each pass changed: "
            + ", ".join(f"{spec}: {changed[spec]}" for spec in (*SPECS, IDENTITY)),
            "refused (below the quality floor, or already quantized): "
            + ", ".join(f"{spec}: {refused[spec]}" for spec in SPECS if refused[spec]),
        ],
    )
    assert changed[IDENTITY] == 0, "pruning at ratio 0 must change nothing"
    failures = [f"{r.name}: {failure}" for r in ran for failure in r.failures]
    if failures:
        pytest.fail(
            f"{len(failures)} compressed model(s) broken:\n" + "\n".join(failures), pytrace=False
        )
