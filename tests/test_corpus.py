"""The default pipeline over third-party graphs: onnx's backend test models.

Every model that onnxruntime can run must, after ``onnxslim.optimize``, pass onnx.checker and
still give the outputs recorded beside it; and fold-constants alone must never make its file
larger (both files written by ``onnxslim.model.save``, the other without any pass).

The models are the ones the onnx wheel ships
(``onnx/backend/test/data/{node,simple,pytorch-converted,pytorch-operator}``); newer onnx
wheels no longer ship the node tests but still carry the code that generates them, so there
they are written to a temporary folder first.

Every recorded value is fed and compared: tensors of every element type, sequences, optionals
and maps. A model is skipped only when onnxruntime itself fails on the original (one of its
own error types, raised creating the session or running it); the summary counts onnxruntime's
most common errors. Set ``ONNXSLIM_CORPUS_REPORT=path.json`` to get the counts as JSON.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing
import os
import re
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import ml_dtypes
import numpy as np
import onnx
import onnx.backend.test
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from onnxslim import optimize
from onnxslim.model import load, save
from onnxslim.pipeline import PassManager
from onnxslim.registry import parse_pipeline

T = TypeVar("T")
KINDS = ("node", "simple", "pytorch-converted", "pytorch-operator")
RTOL = 1e-3
ATOL = 1e-4
SKIP_NOT_RUNNABLE = "onnxruntime cannot run the original"
REPORT_ENV = "ONNXSLIM_CORPUS_REPORT"
TOP_ERRORS = 5

# Element types numpy lacks, by TensorProto name: the ml_dtypes type of one element, and its
# bits. onnxruntime's Python API takes none of them as numpy arrays, and 1.19 has no call that
# makes such an OrtValue from bytes; so inputs of these types are given as initializers of the
# input's name, which onnxruntime takes as the input's value, and outputs are read as bytes.
RAW_TYPES = {
    "BFLOAT16": ("bfloat16", 16),
    "FLOAT8E4M3FN": ("float8_e4m3fn", 8),
    "FLOAT8E4M3FNUZ": ("float8_e4m3fnuz", 8),
    "FLOAT8E5M2": ("float8_e5m2", 8),
    "FLOAT8E5M2FNUZ": ("float8_e5m2fnuz", 8),
    "FLOAT8E8M0": ("float8_e8m0fnu", 8),
    "FLOAT6E2M3": ("float6_e2m3fn", 6),
    "FLOAT6E3M2": ("float6_e3m2fn", 6),
    "FLOAT4E2M1": ("float4_e2m1fn", 4),
    "INT4": ("int4", 4),
    "UINT4": ("uint4", 4),
    "INT2": ("int2", 2),
    "UINT2": ("uint2", 2),
}
# How each kind of recorded value is stored in a .pb file, and read back.
READERS = {
    "tensor_type": (onnx.TensorProto, numpy_helper.to_array),
    "sequence_type": (onnx.SequenceProto, numpy_helper.to_list),
    "optional_type": (onnx.OptionalProto, numpy_helper.to_optional),
    "map_type": (onnx.MapProto, numpy_helper.to_dict),
}
# The errors onnxruntime raises for its own failures (its status codes). Anything else a run
# raises (a ValueError for a missing feed, say) is the harness's fault and fails the model.
ORT_ERRORS = tuple(
    value
    for value in vars(ort_state).values()
    if isinstance(value, type)
    and issubclass(value, Exception)
    and value.__module__ == ort_state.__name__
)

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


@dataclass
class DataSet:
    """One ``test_data_set_N``: what to feed, and what the outputs must be."""

    feeds: dict[str, object] = field(default_factory=dict)
    defaults: list[onnx.TensorProto] = field(default_factory=list)  # inputs of RAW_TYPES
    expected: list[object] = field(default_factory=list)


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
    """Write onnx's node test cases in the layout of the shipped ones (as onnx's own
    ``backend-test-tools generate-data`` does); return their folders."""
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
            for prefix, infos, values in (
                ("input", graph.input, inputs),
                ("output", graph.output, outputs),
            ):
                for position, (info, value) in enumerate(zip(infos, values, strict=False)):
                    proto = _value_proto(value, info)
                    (data_set / f"{prefix}_{position}.pb").write_bytes(proto.SerializeToString())
        dirs.append(directory)
    return dirs


def _value_proto(value: object, info: onnx.ValueInfoProto):
    kind = info.type.WhichOneof("value")
    if kind == "sequence_type":
        return numpy_helper.from_list(value, info.name)
    if kind == "optional_type":
        return numpy_helper.from_optional(value, info.name)
    if kind == "map_type":
        return numpy_helper.from_dict(value, info.name)
    if isinstance(value, onnx.TensorProto):
        return value
    return numpy_helper.from_array(np.asarray(value), info.name)


# ------------------------------------------------------------------------ the recorded data


def _numbered(directory: Path, prefix: str) -> list[Path]:
    files = directory.glob(f"{prefix}_*.pb")
    return sorted(files, key=lambda p: int(re.search(r"_(\d+)\.pb$", p.name).group(1)))


def _raw_type(type_proto: onnx.TypeProto) -> str | None:
    """The element type's name when it is a tensor of one of RAW_TYPES."""
    if type_proto.WhichOneof("value") != "tensor_type":
        return None
    name = onnx.TensorProto.DataType.Name(type_proto.tensor_type.elem_type)
    return name if name in RAW_TYPES else None


def _bits(data_type: int) -> int:
    name = onnx.TensorProto.DataType.Name(data_type)
    if name in RAW_TYPES:
        return RAW_TYPES[name][1]
    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize * 8


def _read_data_sets(directory: Path, proto: onnx.ModelProto) -> list[DataSet]:
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    data_sets = []
    for folder in sorted(directory.glob("test_data_set_*")):
        data_set = DataSet()
        for info, path in zip(inputs, _numbered(folder, "input"), strict=False):
            if _raw_type(info.type):
                data_set.defaults.append(_recorded_tensor(path, info))
            else:
                data_set.feeds[info.name] = _read_value(path, info)
        outputs = zip(proto.graph.output, _numbered(folder, "output"), strict=False)
        data_set.expected = [_read_value(path, info) for info, path in outputs]
        data_sets.append(data_set)
    return data_sets


def _read_value(path: Path, info: onnx.ValueInfoProto) -> object:
    if raw := _raw_type(info.type):
        tensor = _recorded_tensor(path, info)
        return _decode(_stored_codes(tensor, raw), raw, tensor.dims)
    message_type, convert = READERS[info.type.WhichOneof("value")]
    message = message_type()
    message.ParseFromString(path.read_bytes())
    return convert(message)


def _recorded_tensor(path: Path, info: onnx.ValueInfoProto) -> onnx.TensorProto:
    """The tensor recorded for ``info``, under its name and declared type (as an initializer
    of that name, onnxruntime takes it as the input's value).

    Older onnx wheels record bfloat16 data as uint16: the bits are the same, only the type
    differs, so the declared type is put on them once the widths are seen to agree.
    """
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    declared = info.type.tensor_type.elem_type
    if _bits(tensor.data_type) != _bits(declared):
        raise ValueError(
            f"{path.name}: recorded as {onnx.TensorProto.DataType.Name(tensor.data_type)}, "
            f"declared {onnx.TensorProto.DataType.Name(declared)}"
        )
    tensor.name, tensor.data_type = info.name, declared
    return tensor


def _stored_codes(tensor: onnx.TensorProto, type_name: str) -> np.ndarray:
    """One unsigned code per element of a recorded tensor, as the ONNX spec lays them out:
    raw_data packs sub-byte elements LSB first; int32_data holds one element per entry, or
    one packed byte for the 4- and 2-bit types."""
    bits = RAW_TYPES[type_name][1]
    count = math.prod(tensor.dims)
    if tensor.HasField("raw_data"):
        return _codes(tensor.raw_data, bits, count)
    values = np.asarray(tensor.int32_data, dtype=np.int64)
    if bits in (2, 4):
        return _codes(values.astype(np.uint8).tobytes(), bits, count)
    return values.astype(np.uint16 if bits == 16 else np.uint8)


def _codes(data: bytes, bits: int, count: int) -> np.ndarray:
    if bits >= 8:
        return np.frombuffer(data, np.uint16 if bits == 16 else np.uint8, count)
    stream = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: count * bits]
    packed = np.packbits(stream.reshape(count, bits), axis=1, bitorder="little")
    return packed.reshape(count)


def _decode(codes: np.ndarray, type_name: str, shape) -> np.ndarray:
    """Element codes as numbers numpy holds: int8 for the integer types, else float32 (exact
    for all of RAW_TYPES)."""
    dtype = np.dtype(getattr(ml_dtypes, RAW_TYPES[type_name][0]))
    wide = np.int8 if type_name.startswith(("INT", "UINT")) else np.float32
    return codes.view(dtype).astype(wide).reshape(tuple(shape))


def _tolerance(type_proto: onnx.TypeProto) -> tuple[float, float]:
    """(rtol, atol) for an output: RTOL and ATOL, widened for the narrow float types to one
    unit in the last place of the type (eps relative, the smallest subnormal absolute)."""
    raw = _raw_type(type_proto)
    if raw is None or raw.startswith(("INT", "UINT")):
        return RTOL, ATOL
    info = ml_dtypes.finfo(getattr(ml_dtypes, RAW_TYPES[raw][0]))
    return max(RTOL, float(info.eps)), max(ATOL, float(info.smallest_subnormal))


# ------------------------------------------------------------------------------ the runs


def _session(model: onnx.ModelProto, defaults, *, ort_optimizer: bool) -> ort.InferenceSession:
    if defaults:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.graph.initializer.extend(defaults)
    options = ort.SessionOptions()
    if not ort_optimizer:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _run_all(
    model: onnx.ModelProto, data_sets: list[DataSet], raw_outputs, *, ort_optimizer: bool = True
) -> list[list[object]]:
    """Each data set's outputs; a new session only where a data set brings its own defaults."""
    results, session = [], None
    for data_set in data_sets:
        if session is None or data_set.defaults:
            session = _session(model, data_set.defaults, ort_optimizer=ort_optimizer)
        results.append(_run(session, data_set.feeds, raw_outputs))
    return results


def _run(session: ort.InferenceSession, feeds: dict, raw_outputs: list[str | None]) -> list:
    if not any(raw_outputs):
        return session.run(None, feeds)
    values = session.run_with_ort_values(
        None, {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in feeds.items()}
    )
    return [
        _read_raw(value, raw) if raw else value.numpy()
        for value, raw in zip(values, raw_outputs, strict=True)
    ]


def _read_raw(value: ort.OrtValue, type_name: str) -> np.ndarray:
    """An output of one of RAW_TYPES, from the bytes of its OrtValue (onnxruntime has no numpy
    view of it)."""
    if value.data_type() != f"tensor({type_name.lower()})":
        raise TypeError(f"onnxruntime returned {value.data_type()} for a {type_name} output")
    shape, bits = value.shape(), RAW_TYPES[type_name][1]
    size = -(-math.prod(shape) * bits // 8)
    data = ctypes.string_at(value.data_ptr(), size) if size else b""
    return _decode(_codes(data, bits, math.prod(shape)), type_name, shape)


# ---------------------------------------------------------------------------- one model


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


@dataclass
class Case:
    """One backend test model, its recorded data, and what onnxruntime gives for it."""

    model_path: Path
    proto: onnx.ModelProto
    data_sets: list[DataSet]
    raw_outputs: list[str | None]
    reference: list[list[object]]


def load_case(directory: Path) -> Case:
    """The case in ``directory``, run once by onnxruntime (which raises one of ORT_ERRORS when
    it cannot run the original)."""
    model_path = directory / "model.onnx"
    proto = onnx.load(str(model_path))
    data_sets = _read_data_sets(directory, proto)
    raw_outputs = [_raw_type(o.type) for o in proto.graph.output]
    reference = _run_all(proto, data_sets, raw_outputs)
    return Case(model_path, proto, data_sets, raw_outputs, reference)


def _check(directory: Path, name: str) -> CaseResult:
    try:
        case = load_case(directory)
    except ORT_ERRORS as exc:
        return CaseResult(name, "skipped", SKIP_NOT_RUNNABLE, ort_error_line(exc))
    model_path, proto, data_sets = case.model_path, case.proto, case.data_sets
    raw_outputs, reference = case.raw_outputs, case.reference

    model, report = optimize(model_path)
    result = CaseResult(
        name, "passed", nodes_before=report.before.nodes, nodes_after=report.after.nodes
    )
    with tempfile.TemporaryDirectory(prefix="onnxslim-corpus-") as scratch:
        result.saved_bytes, result.folded_bytes = _file_sizes(model_path, Path(scratch))
        optimized_path = save(model, Path(scratch) / "optimized.onnx")
        try:
            onnx.checker.check_model(str(optimized_path), full_check=_passes_full_check(proto))
            actual = _run_all(
                onnx.load(str(optimized_path)),
                data_sets,
                raw_outputs,
                ort_optimizer=name not in SPEC_VIOLATIONS,
            )
        except Exception as exc:
            return _failed(result, f"{type(exc).__name__}: {_first_line(exc)}")
    tolerances = [_tolerance(o.type) for o in proto.graph.output]
    for index, (data_set, original, optimized) in enumerate(
        zip(data_sets, reference, actual, strict=True)
    ):
        outputs = zip(optimized, data_set.expected, original, tolerances, strict=False)
        for position, output in enumerate(outputs):
            if problem := _compare(*output):
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


# ------------------------------------------------------------------------- the comparison


def _compare(got: object, expected: object, got_original: object, tolerance) -> str | None:
    if _element_types(got) != _element_types(got_original):
        return f"type {_element_types(got)} != {_element_types(got_original)}"
    problem = _mismatch(got, expected, tolerance)
    # Where onnxruntime already deviates from the recorded data for the original model, hold
    # the optimized one to what onnxruntime gives for the original, with the same tolerances:
    # the optimizer must not change results, and cannot fix the runtime's.
    if problem and _mismatch(got_original, expected, tolerance):
        problem = _mismatch(got, got_original, tolerance)
    return problem


def _element_types(value: object) -> object:
    """The dtypes in a value, nested as its sequences and maps are (None for an empty
    optional)."""
    if isinstance(value, list):
        return [_element_types(item) for item in value]
    if isinstance(value, dict):
        return {key: _element_types(item) for key, item in value.items()}
    return None if value is None else str(np.asarray(value).dtype)


def _mismatch(actual: object, expected: object, tolerance) -> str | None:
    """Why two outputs differ beyond tolerance, or None when they match."""
    if isinstance(actual, dict) and isinstance(expected, dict):
        if actual.keys() != expected.keys():
            return f"map keys {sorted(actual)} != {sorted(expected)}"
        pairs = [(key, actual[key], expected[key]) for key in expected]
    elif isinstance(actual, list) and isinstance(expected, list):
        if len(actual) != len(expected):
            return f"sequence of {len(actual)} != sequence of {len(expected)}"
        pairs = list(zip(range(len(expected)), actual, expected, strict=True))
    elif actual is None or expected is None or isinstance(actual, (list, dict)):
        if actual is None and expected is None:
            return None
        return f"{_describe(actual)} != {_describe(expected)}"
    else:
        return _array_mismatch(np.asarray(actual), np.asarray(expected), *tolerance)
    for key, item, wanted in pairs:
        if problem := _mismatch(item, wanted, tolerance):
            return f"[{key}] {problem}"
    return None


def _describe(value: object) -> str:
    if value is None:
        return "empty optional"
    if isinstance(value, (list, dict)):
        return f"{type(value).__name__} of {len(value)}"
    return "tensor"


def _array_mismatch(
    actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float
) -> str | None:
    if actual.shape != expected.shape:
        return f"shape {actual.shape} != {expected.shape}"
    if actual.dtype.kind in "fc" and expected.dtype.kind in "fc":
        close = np.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
        if close.all():
            return None
        worst = np.nanmax(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))
        return f"{np.count_nonzero(~close)} of {close.size} values differ, max |diff| {worst:.3g}"
    if np.array_equal(actual, expected):
        return None
    return f"values differ ({actual.dtype} vs {expected.dtype})"


def _failed(result: CaseResult, detail: str) -> CaseResult:
    result.status, result.detail = "failed", detail
    return result


def _first_line(exc: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


def ort_error_line(exc: BaseException) -> str:
    """onnxruntime's message without what differs between models of one cause (the status
    prefix, the model's path) or says nothing to a reader (the source file's C++ function)."""
    line = _first_line(exc, limit=10_000)
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)
    line = re.sub(r"^(Load model from .*? failed:|Failed to load model with error: )", "", line)
    line = re.sub(
        r"/onnxruntime_src/\S*?([\w.]+:\d+) .*?\)(?: const)?(?:::<lambda\(\)>)?"
        r"(?: \[with [^\]]*\])? ",
        r"\1: ",
        line,
    )
    return line[:200]


# ------------------------------------------------------------------------------- the test


class _Summary:
    """A pytest plugin that prints the corpus lines in the terminal summary."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def pytest_terminal_summary(self, terminalreporter) -> None:
        for line in self.lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory) -> list[CaseResult]:
    """Every model checked once, in a pool of worker processes, for all tests below."""
    results = check_corpus(check_case, tmp_path_factory)
    # Guard against a harness that quietly skips everything (a broken onnxruntime, say).
    ran = sum(1 for r in results if r.status != "skipped")
    assert ran >= len(results) // 2, f"only {ran} of {len(results)} models ran"
    return results


def check_corpus(check: Callable[[str], T], tmp_path_factory) -> list[T]:
    """``check`` on every corpus case folder, in a pool of worker processes (``check`` must be
    a module-level function: the workers are spawned, since the parent has onnxruntime
    threads)."""
    dirs = corpus_dirs(tmp_path_factory.mktemp("corpus"))
    assert dirs, "the onnx wheel ships no backend test models"
    workers = max(1, min(os.cpu_count() or 1, 4))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(check, [str(d) for d in dirs], chunksize=16))


def fold_size_changes(results: list[CaseResult]) -> Counter:
    """How many model files fold-constants "shrank", left "unchanged" or made "grew"."""
    change = {-1: "shrank", 0: "unchanged", 1: "grew"}
    return Counter(
        change[np.sign(r.folded_bytes - r.saved_bytes)] for r in results if r.saved_bytes
    )


def report_lines(request, lines: list[str]) -> None:
    print("\n".join(lines))
    request.config.pluginmanager.register(_Summary(lines))


def test_default_pipeline_keeps_backend_test_models_correct(corpus_results, request):
    counts = Counter(r.status for r in corpus_results)
    reasons = Counter(r.reason for r in corpus_results if r.status == "skipped")
    errors = Counter(r.detail for r in corpus_results if r.reason == SKIP_NOT_RUNNABLE)
    failures = [r for r in corpus_results if r.status == "failed"]
    shrunk = sum(
        1 for r in corpus_results if r.status == "passed" and r.nodes_after < r.nodes_before
    )
    reason_text = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common())
    lines = [
        f"corpus: {counts['passed'] + counts['failed']} models ran, {counts['skipped']} skipped "
        f"(reasons: {reason_text or 'none'}), {counts['failed']} failed; "
        f"{shrunk} lost nodes to optimization"
    ]
    if errors:
        lines.append(
            f"corpus: onnxruntime {ort.__version__}'s most common errors on the originals "
            f"({len(errors)} distinct):"
        )
        lines += [f"  {n} x {error}" for error, n in errors.most_common(TOP_ERRORS)]
    report_lines(request, lines)
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
                    "onnxruntime_errors": dict(errors.most_common()),
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
    report_lines(request, [line])
    assert changes["shrank"], f"folding shrank no file, so this test proves nothing: {line}"
    grown = [r for r in corpus_results if r.folded_bytes > r.saved_bytes]
    assert not grown, "\n".join(
        f"{r.name}: {r.saved_bytes} -> {r.folded_bytes} bytes" for r in grown
    )


@pytest.mark.parametrize(
    ("type_name", "values"),
    [
        ("BFLOAT16", [1.5, -2.0, 0.0078125, 2.0**-133]),  # the smallest subnormal
        ("FLOAT8E4M3FN", [0.5, -448.0, 0.001953125]),
        ("FLOAT8E5M2FNUZ", [-57344.0, 0.0, 1.5]),
        ("INT4", [-8, 7, -1, 0, 3]),  # odd: the last byte is half padding
        ("UINT4", [15, 0, 9]),
    ],
)
def test_recorded_values_of_types_numpy_lacks_decode_exactly(type_name, values):
    data_type = getattr(onnx.TensorProto, type_name)
    tensor = helper.make_tensor("x", data_type, [len(values)], values)
    decoded = _decode(_stored_codes(tensor, type_name), type_name, tensor.dims)
    assert decoded.tolist() == pytest.approx(values, rel=0, abs=0)
