"""The default pipeline over third-party graphs: onnx's backend test models.

Every model that onnxruntime can run must, after ``onnxslim.optimize``, pass onnx.checker and
still give the outputs recorded beside it; and fold-constants alone must never make its file
larger (both files written by ``onnxslim.model.save``, the other without any pass).

The models are the ones the onnx wheel ships
(``onnx/backend/test/data/{node,simple,pytorch-converted,pytorch-operator}``); newer onnx
wheels no longer ship the node tests but still carry the code that generates them, so there
they are written to a temporary folder first.

Skipped, with the reason counted: models that onnxruntime cannot run as they are, and models
whose data cannot be fed to onnxruntime as numpy arrays (sequences, optionals, maps, element
types numpy lacks). Set ``ONNXSLIM_CORPUS_REPORT=path.json`` to get the counts as JSON.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import tempfile
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.backend.test
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxslim import optimize
from onnxslim.model import load, save
from onnxslim.pipeline import PassManager
from onnxslim.registry import parse_pipeline

KINDS = ("node", "simple", "pytorch-converted", "pytorch-operator")
RTOL = 1e-3
ATOL = 1e-4
SKIP_NOT_RUNNABLE = "onnxruntime cannot run the original"
SKIP_NON_TENSOR = "sequence, optional or map inputs/outputs"
SKIP_DATA_TYPE = "unsupported data type in .pb files"
# Element types without a numpy twin: onnxruntime's Python API cannot take or return them.
NUMPY_LACKS = ("BFLOAT16", "FLOAT8", "FLOAT4", "INT4", "UINT4", "INT2", "UINT2")
REPORT_ENV = "ONNXSLIM_CORPUS_REPORT"

# Models that break the ONNX spec where onnxruntime does not look unless an If condition is
# constant, which folding makes it: in 2-D, the AffineGrid expansions feed Range with
# [1]-shaped tensors where the spec wants scalars. Once the condition is constant,
# onnxruntime's optimizer inlines the If and its shape inference rejects the Range. Their
# optimized versions run with onnxruntime's optimizer off, and must match all the same.
SPEC_VIOLATIONS = frozenset(
    {"node/test_affine_grid_2d_expanded", "node/test_affine_grid_2d_align_corners_expanded"}
)


@dataclass
class CaseResult:
    name: str
    status: str  # "passed", "skipped" or "failed"
    reason: str = ""
    detail: str = ""
    nodes_before: int = 0
    nodes_after: int = 0
    saved_bytes: int = 0  # the model written as loaded
    folded_bytes: int = 0  # the model written after fold-constants alone


class UnsupportedData(Exception):
    """A .pb file holds something that cannot be fed to onnxruntime as a numpy array."""


# ------------------------------------------------------------------------------ the corpus


def corpus_dirs(scratch: Path) -> list[Path]:
    """Folders holding ``model.onnx`` and ``test_data_set_*``, generating the node tests if
    this onnx wheel does not ship them."""
    data = Path(onnx.backend.test.__file__).parent / "data"
    dirs = [
        d
        for kind in KINDS
        if (data / kind).is_dir()
        for d in sorted((data / kind).iterdir())
        if (d / "model.onnx").is_file()
    ]
    if not (data / "node").is_dir():
        dirs += write_node_cases(scratch / "node")
    return dirs


def write_node_cases(root: Path) -> list[Path]:
    """Write onnx's node test cases in the layout of the shipped ones; return their folders."""
    from onnx.backend.test.case import node

    with np.errstate(all="ignore"):  # the generators compute inf and nan on purpose
        cases = node.collect_testcases(None)
    dirs = []
    for case in cases:
        if case.model is None or not case.data_sets:
            continue
        directory = root / case.name
        directory.mkdir(parents=True)
        (directory / "model.onnx").write_bytes(case.model.SerializeToString())
        graph = case.model.graph
        for index, (inputs, outputs) in enumerate(case.data_sets):
            data_set = directory / f"test_data_set_{index}"
            data_set.mkdir()
            _write_tensors(data_set, "input", graph.input, inputs)
            _write_tensors(data_set, "output", graph.output, outputs)
        dirs.append(directory)
    return dirs


def _write_tensors(folder: Path, prefix: str, infos, values) -> None:
    for position, (info, value) in enumerate(zip(infos, values, strict=False)):
        if not info.type.HasField("tensor_type"):
            continue  # such models are skipped before their data is read
        if not isinstance(value, onnx.TensorProto):
            value = numpy_helper.from_array(np.asarray(value), info.name)
        (folder / f"{prefix}_{position}.pb").write_bytes(value.SerializeToString())


# ------------------------------------------------------------------------- one model, run


def _numbered(directory: Path, prefix: str) -> list[Path]:
    files = directory.glob(f"{prefix}_*.pb")
    return sorted(files, key=lambda p: int(re.search(r"_(\d+)\.pb$", p.name).group(1)))


def _read_tensor(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    type_name = onnx.TensorProto.DataType.Name(tensor.data_type)
    if type_name.startswith(NUMPY_LACKS):
        raise UnsupportedData(f"{path.name}: {type_name}")
    return numpy_helper.to_array(tensor)


def _data_sets(directory: Path, proto: onnx.ModelProto) -> list[tuple[dict, list[np.ndarray]]]:
    initializers = {t.name for t in proto.graph.initializer}
    input_names = [i.name for i in proto.graph.input if i.name not in initializers]
    sets = []
    for data_set in sorted(directory.glob("test_data_set_*")):
        inputs = [_read_tensor(p) for p in _numbered(data_set, "input")]
        outputs = [_read_tensor(p) for p in _numbered(data_set, "output")]
        sets.append((dict(zip(input_names, inputs, strict=False)), outputs))
    return sets


def _run_all(path: Path, data_sets, *, ort_optimizer: bool = True) -> list[list[np.ndarray]]:
    options = ort.SessionOptions()
    if not ort_optimizer:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, feeds) for feeds, _ in data_sets]


def _mismatch(actual: np.ndarray, expected: np.ndarray) -> str | None:
    """Why two outputs differ beyond tolerance, or None when they match."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return f"shape {actual.shape} != {expected.shape}"
    if actual.dtype.kind in "fc" and expected.dtype.kind in "fc":
        close = np.isclose(actual, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
        if close.all():
            return None
        worst = np.nanmax(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))
        return f"{np.count_nonzero(~close)} of {close.size} values differ, max |diff| {worst:.3g}"
    if np.array_equal(actual, expected):
        return None
    return f"values differ ({actual.dtype} vs {expected.dtype})"


def check_case(case_dir: str) -> CaseResult:
    ort.set_default_logger_severity(3)  # opset warnings of old test models are noise here
    directory = Path(case_dir)
    name = f"{directory.parent.name}/{directory.name}"
    try:
        return _check(directory, name)
    except Exception as exc:  # a bug of the harness or the library: report, never hide
        return CaseResult(
            name, "failed", detail=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
        )


def _check(directory: Path, name: str) -> CaseResult:
    model_path = directory / "model.onnx"
    proto = onnx.load(str(model_path))
    interface = list(proto.graph.input) + list(proto.graph.output)
    if any(not i.type.HasField("tensor_type") for i in interface):
        return CaseResult(name, "skipped", SKIP_NON_TENSOR)
    try:
        data_sets = _data_sets(directory, proto)
    except UnsupportedData as exc:
        return CaseResult(name, "skipped", SKIP_DATA_TYPE, str(exc))
    try:
        reference = _run_all(model_path, data_sets)
    except Exception as exc:
        return CaseResult(name, "skipped", SKIP_NOT_RUNNABLE, _first_line(exc))

    model, report = optimize(model_path)
    result = CaseResult(
        name, "passed", nodes_before=report.before.nodes, nodes_after=report.after.nodes
    )
    with tempfile.TemporaryDirectory(prefix="onnxslim-corpus-") as scratch:
        result.saved_bytes, result.folded_bytes = _file_sizes(model_path, Path(scratch))
        optimized_path = save(model, Path(scratch) / "optimized.onnx")
        try:
            onnx.checker.check_model(str(optimized_path), full_check=_passes_full_check(proto))
            actual = _run_all(optimized_path, data_sets, ort_optimizer=name not in SPEC_VIOLATIONS)
        except Exception as exc:
            return _failed(result, f"{type(exc).__name__}: {_first_line(exc)}")
    for index, ((_, expected), original, optimized) in enumerate(
        zip(data_sets, reference, actual, strict=True)
    ):
        for position, outputs in enumerate(zip(optimized, expected, original, strict=True)):
            if problem := _compare(*outputs):
                return _failed(result, f"data set {index}, output {position}: {problem}")
    return result


def _file_sizes(model_path: Path, scratch: Path) -> tuple[int, int]:
    """Bytes of the model saved as loaded, and saved after fold-constants alone (with the
    manager's cleanup, but no infer-shapes: its value_info would not be like for like)."""
    saved = save(load(model_path), scratch / "saved.onnx")
    model = load(model_path)
    PassManager(parse_pipeline("fold-constants")).run(model)
    folded = save(model, scratch / "folded.onnx")
    return saved.stat().st_size, folded.stat().st_size


def _passes_full_check(proto: onnx.ModelProto) -> bool:
    """Whether the original passes the strict checker: the optimized model must then too."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception:
        return False
    return True


def _compare(got: np.ndarray, expected: np.ndarray, got_original: np.ndarray) -> str | None:
    if got.dtype != got_original.dtype:
        return f"dtype {got.dtype} != {got_original.dtype}"
    problem = _mismatch(got, expected)
    # Where onnxruntime already deviates from the recorded data for the original model, hold
    # the optimized one to what onnxruntime gives for the original, with the same tolerances:
    # the optimizer must not change results, and cannot fix the runtime's.
    if problem and _mismatch(got_original, expected):
        problem = _mismatch(got, got_original)
    return problem


def _failed(result: CaseResult, detail: str) -> CaseResult:
    result.status, result.detail = "failed", detail
    return result


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__


# ------------------------------------------------------------------------------- the test


class _Summary:
    """A pytest plugin that prints the corpus line in the terminal summary."""

    def __init__(self, line: str) -> None:
        self.line = line

    def pytest_terminal_summary(self, terminalreporter) -> None:
        terminalreporter.write_line(self.line)


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory) -> list[CaseResult]:
    """Every model checked once, in a pool of worker processes, for all tests below."""
    dirs = corpus_dirs(tmp_path_factory.mktemp("corpus"))
    assert dirs, "the onnx wheel ships no backend test models"
    workers = max(1, min(os.cpu_count() or 1, 4))
    context = multiprocessing.get_context("spawn")  # the parent has onnxruntime threads
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = list(pool.map(check_case, [str(d) for d in dirs], chunksize=16))
    # Guard against a harness that quietly skips everything (a broken onnxruntime, say).
    ran = sum(1 for r in results if r.status != "skipped")
    assert ran >= len(dirs) // 2, f"only {ran} of {len(dirs)} models ran"
    return results


def fold_size_changes(results: list[CaseResult]) -> Counter:
    """How many model files fold-constants "shrank", left "unchanged" or made "grew"."""
    change = {-1: "shrank", 0: "unchanged", 1: "grew"}
    return Counter(
        change[np.sign(r.folded_bytes - r.saved_bytes)] for r in results if r.saved_bytes
    )


def report_line(request, line: str) -> None:
    print(line)
    request.config.pluginmanager.register(_Summary(line))


def test_default_pipeline_keeps_backend_test_models_correct(corpus_results, request):
    counts = Counter(r.status for r in corpus_results)
    reasons = Counter(r.reason for r in corpus_results if r.status == "skipped")
    failures = [r for r in corpus_results if r.status == "failed"]
    shrunk = sum(
        1 for r in corpus_results if r.status == "passed" and r.nodes_after < r.nodes_before
    )
    reason_text = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common())
    line = (
        f"corpus: {counts['passed'] + counts['failed']} models ran, {counts['skipped']} skipped "
        f"(reasons: {reason_text or 'none'}), {counts['failed']} failed; "
        f"{shrunk} lost nodes to optimization"
    )
    report_line(request, line)
    if report_path := os.environ.get(REPORT_ENV):
        Path(report_path).write_text(
            json.dumps(
                {
                    "onnx": onnx.__version__,
                    "onnxruntime": ort.__version__,
                    "ran": counts["passed"] + counts["failed"],
                    "passed": counts["passed"],
                    "skipped": counts["skipped"],
                    "failed": counts["failed"],
                    "shrunk": shrunk,
                    "fold_file_sizes": dict(fold_size_changes(corpus_results)),
                    "skip_reasons": dict(reasons),
                    "failures": [asdict(r) for r in failures],
                },
                indent=2,
            )
        )
    if failures:
        listing = "\n".join(f"{r.name}: {r.detail}" for r in failures)
        pytest.fail(f"{len(failures)} model(s) broken by optimization:\n{listing}", pytrace=False)


def test_fold_constants_never_makes_a_backend_test_model_file_larger(corpus_results, request):
    changes = fold_size_changes(corpus_results)
    line = (
        f"corpus: fold-constants alone shrank {changes['shrank']} model files, left "
        f"{changes['unchanged']} the same size and grew {changes['grew']}"
    )
    report_line(request, line)
    assert changes["shrank"], f"folding shrank no file, so this test proves nothing: {line}"
    grown = [r for r in corpus_results if r.folded_bytes > r.saved_bytes]
    assert not grown, "\n".join(
        f"{r.name}: {r.saved_bytes} -> {r.folded_bytes} bytes" for r in grown
    )
