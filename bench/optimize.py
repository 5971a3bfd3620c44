"""Benchmark: load + optimize + save, against the floor of a plain ``onnx.load`` + ``onnx.save``.

For each size (about 10 MB, 100 MB, 1 GB, and 3 GB with external data) the script builds a
model in a throw-away folder, then measures in fresh child processes:

* the floor: ``onnx.load`` + ``onnx.save`` of the same file (for external data, ``onnx.load``
  reads the data in and ``onnx.save(..., save_as_external_data=True)`` writes it back);
* ours: ``onnxslim.optimize(path)`` with the default pipeline + ``onnxslim.save``.

The targets are ours at most 2x the floor's time and a peak memory increase at most 2x the
model's size; MB/s and increase/size per row show whether cost grows linearly. Each optimized
model must pass onnx.checker, and up to 100 MB also match the original's outputs on
onnxruntime. Run ``python bench/optimize.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from _measure import Measurement, MeasurementError, measure_call
from _report import consoles, work_folder
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from onnxslim.model import model_files

__all__ = [
    "ModelSpec",
    "BuiltModel",
    "Row",
    "SPECS",
    "build_model",
    "floor_roundtrip",
    "optimize_roundtrip",
    "validate_output",
    "bench_size",
    "render",
    "main",
]

MB = 10**6
OPSET = 17
IR_VERSION = 8  # what onnxruntime 1.17+ and onnx 1.16+ all read
BATCH = 4
HEADS = 8
# Outputs must match within this on onnxruntime; the checker alone is used above the limit
# (a second session of a multi-GB model would double the memory the machine needs).
ATOL = RTOL = 1e-4
ORT_CHECK_LIMIT = 100 * MB
TIME_TARGET = 2.0
MEMORY_TARGET = 2.0
# onnx's own default: smaller tensors stay inline even in an external-data model.
EXTERNAL_THRESHOLD = 1024


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: layers of ``width`` x ``width`` float32 weights up to ``target_bytes``."""

    label: str
    target_bytes: int
    width: int
    external: bool

    @property
    def layers(self) -> int:
        return max(8, round(self.target_bytes / (4 * self.width**2)))


SPECS = (
    ModelSpec("10MB", 10 * MB, 256, external=False),
    ModelSpec("100MB", 100 * MB, 512, external=False),
    ModelSpec("1GB", 1000 * MB, 1024, external=False),
    ModelSpec("3GB", 3000 * MB, 2048, external=True),
)


@dataclass(frozen=True)
class BuiltModel:
    """A generated model on disk (``size_bytes`` counts its external data too)."""

    spec: ModelSpec
    path: Path
    size_bytes: int
    nodes: int
    build_seconds: float


# ------------------------------------------------------------------------------ building


class _InlineWeights:
    """Initializers kept in the model proto (models under the 2 GiB protobuf limit)."""

    def tensor(self, name: str, array: np.ndarray) -> TensorProto:
        return numpy_helper.from_array(array, name)


class _ExternalWeights:
    """Initializers written to the data file as they are made: one weight in memory at a time."""

    def __init__(self, handle, location: str) -> None:
        self.handle = handle
        self.location = location

    def tensor(self, name: str, array: np.ndarray) -> TensorProto:
        if array.nbytes < EXTERNAL_THRESHOLD:
            return numpy_helper.from_array(array, name)
        offset = self.handle.tell()
        self.handle.write(np.ascontiguousarray(array).data)
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        tensor.dims.extend(array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self.location),
            ("offset", offset),
            ("length", array.nbytes),
        ):
            tensor.external_data.add(key=key, value=str(value))
        return tensor


class _GraphBuilder:
    """Nodes and initializers of an exported-looking MLP, named the way exporters name them."""

    def __init__(self, weights: _InlineWeights | _ExternalWeights) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.weights.tensor(name, array))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attrs))
        return output


def _he_normal(rng: np.random.Generator, width: int) -> np.ndarray:
    """A width x width weight whose scale keeps activations O(1) through many ReLU layers."""
    weight = rng.standard_normal((width, width), dtype=np.float32)
    weight *= np.float32(math.sqrt(2.0 / width))
    return weight


def _bias(rng: np.random.Generator, width: int) -> np.ndarray:
    return rng.standard_normal(width, dtype=np.float32) * np.float32(0.1)


def _layers(builder: _GraphBuilder, spec: ModelSpec, rng: np.random.Generator) -> str:
    """The layer stack, with what a graph optimizer meets in exported models.

    Gemm and MatMul+Add layers alternate; Identity and inference-mode Dropout nodes sit
    between some layers; a Constant->Sqrt->Reciprocal chain (foldable) scales residual
    connections; layer 1's bias duplicates layer 0's and the last weight is tied to the first
    (same values, another name); one initializer is unused.
    """
    width = spec.width
    two = builder.node("Constant", [], "two", value=numpy_helper.from_array(np.float32(2.0)))
    scale = builder.node("Reciprocal", [builder.node("Sqrt", [two], "sqrt_two")], "res_scale")
    builder.const("unused.running_mean", np.zeros(width, np.float32))

    first_weight = _he_normal(rng, width)
    first_bias = _bias(rng, width)
    hidden = "x"
    for i in range(spec.layers):
        last = i == spec.layers - 1
        weight = first_weight if i == 0 or last else _he_normal(rng, width)
        bias = first_bias if i <= 1 else _bias(rng, width)
        w = builder.const(f"layers.{i}.weight", weight)
        b = builder.const(f"layers.{i}.bias", bias)
        if i % 2 == 0:
            y = builder.node("Gemm", [hidden, w, b], f"/layers.{i}/Gemm", transB=1)
        else:
            y = builder.node("MatMul", [hidden, w], f"/layers.{i}/MatMul")
            y = builder.node("Add", [y, b], f"/layers.{i}/Add")
        y = builder.node("Relu", [y], f"/layers.{i}/Relu")
        if i % 4 == 3:
            y = builder.node("Identity", [y], f"/layers.{i}/Identity")
        if i % 5 == 4:
            y = builder.node("Dropout", [y], f"/layers.{i}/Dropout")
        if i % 8 == 7:
            scaled = builder.node("Mul", [y, scale], f"/layers.{i}/res/Mul")
            skip = builder.node("Mul", [hidden, scale], f"/layers.{i}/res/Mul_1")
            y = builder.node("Add", [scaled, skip], f"/layers.{i}/res/Add")
        hidden = y
    return hidden


def _head_reshape(builder: _GraphBuilder, hidden: str) -> str:
    """Shape->Gather->Unsqueeze->Concat->Reshape: how exporters write ``x.view(x.size(0), H, -1)``.

    With static shapes the whole chain folds to a constant.
    """
    shape = builder.node("Shape", [hidden], "/head/Shape")
    index = builder.const("/head/Constant", np.array(0, np.int64))
    batch = builder.node("Gather", [shape, index], "/head/Gather", axis=0)
    axes = builder.const("/head/axes", np.array([0], np.int64))
    batch = builder.node("Unsqueeze", [batch, axes], "/head/Unsqueeze")
    rest = builder.const("/head/Constant_1", np.array([HEADS, -1], np.int64))
    target = builder.node("Concat", [batch, rest], "/head/Concat", axis=0)
    return builder.node("Reshape", [hidden, target], "logits")


def build_model(spec: ModelSpec, folder: Path) -> BuiltModel:
    """Write the model for ``spec`` into ``folder``; random float32 weights, fixed seed."""
    start = time.perf_counter()
    path = folder / f"model-{spec.label}.onnx"
    rng = np.random.default_rng(0)
    data_path = path.with_name(path.name + ".data")
    with open(data_path, "wb") if spec.external else contextlib.nullcontext() as handle:
        weights = _ExternalWeights(handle, data_path.name) if spec.external else _InlineWeights()
        builder = _GraphBuilder(weights)
        hidden = _layers(builder, spec, rng)
        _head_reshape(builder, hidden)
    graph = helper.make_graph(
        builder.nodes,
        f"bench_mlp_{spec.label}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, spec.width])],
        [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, [BATCH, HEADS, spec.width // HEADS]
            )
        ],
        initializer=builder.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxslim-bench"
    )
    model.ir_version = IR_VERSION
    onnx.save(model, path)
    seconds = time.perf_counter() - start
    return BuiltModel(spec, path, _file_bytes(path), len(model.graph.node), seconds)


def _data_files(path: Path) -> list[Path]:
    """The model file and the external data files it refers to."""
    return model_files(path) if path.exists() else []


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in _data_files(path))


def _remove(path: Path) -> None:
    for file in _data_files(path):
        file.unlink()


# ----------------------------------------------------------------------- measured in children


def floor_roundtrip(source: str, destination: str, external: bool) -> int:
    """The I/O floor: what any tool pays to read the model and write it again. Returns nodes."""
    model = onnx.load(source)
    if external:
        onnx.save(
            model,
            destination,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=Path(destination).name + ".data",
        )
    else:
        onnx.save(model, destination)
    return len(model.graph.node)


def optimize_roundtrip(source: str, destination: str, passes: str | None) -> int:
    """Ours: load, run the pipeline (default if None), save. Returns the result's node count."""
    import onnxslim

    model, _ = onnxslim.optimize(source, passes)
    onnxslim.save(model, destination)
    return model.node_count()


# ------------------------------------------------------------------------------ validation


def validate_output(original: Path, optimized: Path, run_outputs: bool) -> tuple[bool, str]:
    """onnx.checker on the optimized file; equal outputs on onnxruntime when ``run_outputs``."""
    try:
        onnx.checker.check_model(str(optimized))  # by path: fine with external data and > 2 GiB
    except onnx.checker.ValidationError as exc:
        return False, f"checker: {str(exc).splitlines()[0]}"
    if not run_outputs:
        return True, "checker"

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # the unused initializer is there on purpose
    reference = ort.InferenceSession(str(original), options, providers=["CPUExecutionProvider"])
    feed = {
        "x": np.random.default_rng(1).standard_normal(reference.get_inputs()[0].shape, np.float32)
    }
    try:
        candidate = ort.InferenceSession(
            str(optimized), options, providers=["CPUExecutionProvider"]
        )
        actual_outputs = candidate.run(None, feed)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        return False, f"onnxruntime: {str(exc).splitlines()[0]}"
    for expected, actual in zip(reference.run(None, feed), actual_outputs, strict=True):
        if expected.shape != actual.shape:
            return False, f"output shape {actual.shape} != {expected.shape}"
        if not np.allclose(actual, expected, atol=ATOL, rtol=RTOL):
            return False, f"outputs differ: max |diff| {np.abs(actual - expected).max():.2e}"
    return True, "checker+ort"


# ------------------------------------------------------------------------------ one size


@dataclass
class Row:
    """Everything measured for one model size."""

    model: str
    size_bytes: int
    external: bool
    nodes_before: int
    nodes_after: int
    floor: Measurement
    ours: Measurement
    valid: bool
    validation: str

    @property
    def time_ratio(self) -> float:
        return self.ours.seconds / self.floor.seconds

    @property
    def memory_ratio(self) -> float:
        return self.ours.peak_increase_bytes / self.size_bytes

    @property
    def time_ok(self) -> bool:
        return self.time_ratio <= TIME_TARGET

    @property
    def memory_ok(self) -> bool:
        return self.memory_ratio <= MEMORY_TARGET

    @property
    def ok(self) -> bool:
        return self.valid and self.time_ok and self.memory_ok

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("floor", "ours"):
            measurement: Measurement = getattr(self, name)
            data[name].pop("value")
            data[name]["peak_increase_bytes"] = measurement.peak_increase_bytes
            data[name]["mb_per_s"] = self.size_bytes / MB / measurement.seconds
        data.update(
            time_ratio=self.time_ratio,
            memory_ratio=self.memory_ratio,
            time_ok=self.time_ok,
            memory_ok=self.memory_ok,
            ok=self.ok,
        )
        return data


def _best(runs: list[Measurement]) -> Measurement:
    """The fastest run's time with the highest peak of all runs (peaks vary little; be safe)."""
    fastest = min(runs, key=lambda m: m.seconds)
    peak = max(runs, key=lambda m: m.peak_increase_bytes)
    return Measurement(
        seconds=fastest.seconds,
        peak_rss_bytes=peak.peak_rss_bytes,
        baseline_rss_bytes=peak.baseline_rss_bytes,
        value=fastest.value,
    )


def bench_size(
    spec: ModelSpec,
    folder: Path,
    *,
    passes: str | None,
    repeat: int,
    timeout: float | None,
    keep: bool,
    log: Callable[[str], None],
) -> Row:
    """Build one model, measure floor and ours on it, validate ours, clean up."""
    log(f"[{spec.label}] building {spec.layers} layers of {spec.width}x{spec.width}")
    built = build_model(spec, folder)
    log(f"[{spec.label}] built {built.size_bytes / MB:.0f} MB in {built.build_seconds:.1f} s")
    floor_path = folder / f"floor-{spec.label}.onnx"
    ours_path = folder / f"slim-{spec.label}.onnx"

    floor_runs, ours_runs = [], []
    try:
        for attempt in range(repeat):
            tag = f" ({attempt + 1}/{repeat})" if repeat > 1 else ""
            log(f"[{spec.label}] floor: onnx.load + onnx.save{tag}")
            floor_runs.append(
                measure_call(
                    floor_roundtrip,
                    str(built.path),
                    str(floor_path),
                    spec.external,
                    preload=["onnx"],
                    timeout=timeout,
                )
            )
            _remove(floor_path)  # at most two copies of a multi-GB model on disk at a time
            log(f"[{spec.label}] ours: onnxslim optimize + save{tag}")
            ours_runs.append(
                measure_call(
                    optimize_roundtrip,
                    str(built.path),
                    str(ours_path),
                    passes,
                    preload=["onnxslim", "onnxslim.passes", "onnxruntime"],
                    timeout=timeout,
                )
            )
        log(f"[{spec.label}] validating the optimized model")
        valid, validation = validate_output(
            built.path, ours_path, run_outputs=built.size_bytes <= ORT_CHECK_LIMIT
        )
    finally:
        _remove(floor_path)
        if not keep:
            _remove(built.path)
            _remove(ours_path)
    floor, ours = _best(floor_runs), _best(ours_runs)
    return Row(
        model=spec.label,
        size_bytes=built.size_bytes,
        external=spec.external,
        nodes_before=built.nodes,
        nodes_after=ours.value,
        floor=floor,
        ours=ours,
        valid=valid,
        validation=validation,
    )


# ------------------------------------------------------------------------------ output


def _mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[red]✗[/]"


def render(rows: Sequence[Row], console: Console) -> None:
    """The table, then what the columns mean and any validation failure in full."""
    table = Table(title="onnxslim optimize vs. the I/O floor (onnx.load + onnx.save)")
    columns = (
        "model",
        "MB",
        "ext",
        "nodes",
        "floor s",
        "ours s",
        "ours/floor",
        "floor MB/s",
        "ours MB/s",
        "floor +RSS MB",
        "ours +RSS MB",
        "+RSS/size",
        "valid",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "valid") else "right")
    for row in rows:
        size_mb = row.size_bytes / MB
        table.add_row(
            row.model,
            f"{size_mb:,.0f}",
            "yes" if row.external else "no",
            f"{row.nodes_before}→{row.nodes_after}",
            f"{row.floor.seconds:.2f}",
            f"{row.ours.seconds:.2f}",
            f"{row.time_ratio:.2f}x {_mark(row.time_ok)}",
            f"{size_mb / row.floor.seconds:,.0f}",
            f"{size_mb / row.ours.seconds:,.0f}",
            f"{row.floor.peak_increase_bytes / MB:,.0f}",
            f"{row.ours.peak_increase_bytes / MB:,.0f}",
            f"{row.memory_ratio:.2f}x {_mark(row.memory_ok)}",
            f"{_mark(row.valid)} {row.validation if row.valid else 'see below'}",
        )
    console.print(table)
    floor_base = max(row.floor.baseline_rss_bytes for row in rows) / MB
    ours_base = max(row.ours.baseline_rss_bytes for row in rows) / MB
    console.print(
        f"Targets: ours/floor <= {TIME_TARGET:g} and +RSS/size <= {MEMORY_TARGET:g}; valid = "
        f"onnx.checker, plus equal outputs on onnxruntime (atol = rtol = {ATOL:g}) up to "
        f"{ORT_CHECK_LIMIT // MB} MB.\n"
        "Times exclude interpreter start-up and imports. +RSS is a child's peak RSS above its "
        f"RSS when the work began (after imports: floor {floor_base:.0f} MB, ours "
        f"{ours_base:.0f} MB)."
    )
    for row in rows:
        if not row.valid:
            console.print(f"[red]{row.model}: {row.validation}[/]")


# ------------------------------------------------------------------------------ command line


def _parse_sizes(text: str) -> list[ModelSpec]:
    by_label = {spec.label.lower(): spec for spec in SPECS}
    chosen = []
    for item in filter(None, (part.strip().lower() for part in text.split(","))):
        if item not in by_label:
            raise argparse.ArgumentTypeError(
                f"unknown size '{item}'; choose from {', '.join(s.label for s in SPECS)}"
            )
        chosen.append(by_label[item])
    if not chosen:
        raise argparse.ArgumentTypeError("name at least one size")
    return chosen


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return int(text)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time load + optimize + save against a plain onnx.load + onnx.save, with "
        "peak memory, on generated models of growing size.",
    )
    parser.add_argument(
        "--sizes",
        type=_parse_sizes,
        default=list(SPECS),
        help="comma-separated subset of " + ",".join(s.label for s in SPECS) + " (default: all)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="folder for the generated models (default: a new temporary folder)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated models")
    parser.add_argument(
        "--passes", metavar="SPEC", help="pipeline spec to run (default: the default pipeline)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here")
    parser.add_argument(
        "--repeat", type=_positive_int, default=1, help="runs per case; the fastest is reported"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds allowed per measured run"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if any target is missed"
    )
    args = parser.parse_args(argv)
    if args.passes:  # fail before minutes of model building, not in the first child
        from onnxslim import OnnxSlimError, parse_pipeline

        try:
            parse_pipeline(args.passes)
        except OnnxSlimError as exc:
            parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    console, progress, log = consoles(width=160)
    folder, owned = work_folder(args.workdir, prefix="onnxslim-bench-")
    rows, failed = [], False
    try:
        for spec in args.sizes:
            rows.append(
                bench_size(
                    spec,
                    folder,
                    passes=args.passes,
                    repeat=args.repeat,
                    timeout=args.timeout,
                    keep=args.keep,
                    log=log,
                )
            )
    except MeasurementError as exc:  # show the sizes done so far, then the failure
        failed = True
        progress.print(str(exc), style="red", markup=False, highlight=False)
    finally:
        if owned and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        elif args.keep:
            log(f"models kept in {folder}")
    if rows:
        render(rows, console)
    if args.json:
        args.json.write_text(json.dumps([row.as_json() for row in rows], indent=2) + "\n")
    return 1 if failed or (args.check and not all(row.ok for row in rows)) else 0


if __name__ == "__main__":
    sys.exit(main())
