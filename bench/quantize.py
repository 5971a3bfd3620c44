"""Benchmark: onnxslim's quantize pass against onnxruntime.quantization.quantize_static.

In one run, on the same calibration samples, three variants of each model — fp32, ours
(``quantize``: int8 per-channel weights, uint8 activations, minmax) and onnxruntime's
``quantize_static`` (QDQ, per-channel, QInt8 weights, QUInt8 activations, MinMax, after its
recommended ``quant_pre_process``):

* the digits CNN (``fixtures/digits_cnn.onnx``), calibrated on the first 200 training images
  (``fixtures/digits_calib.npz``): test accuracy, file size, CPU latency at batch 1 and 32;
* ResNet-50 and BERT-base exports (random weights, so cosine similarity of the outputs with
  fp32 stands in for accuracy), calibrated on random inputs: size, latency, cosine;
* weight-only int4 (block-wise, MatMulNBits) BERT-base: file size against fp32;
* peak RSS of calibration with 50 and with 500 samples, each measured in a fresh child
  process (``_measure.py``): digits, ours and onnxruntime's; without ``--quick`` also ours on
  MobileNetV2 with random 224x224 inputs.

Targets: accuracy drop <= 0.5 point and <= onnxruntime's; latency <= onnxruntime's and below
fp32 on the conv nets; size <= onnxruntime's; RSS(500) <= 1.2 x RSS(50); int4 BERT <= 0.2 x
fp32. ``--quick`` uses fewer calibration samples and latency runs. Run
``python bench/quantize.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _evaluate import (
    DIGITS_CNN,
    FIXTURES,
    bench_feed,
    bench_model,
    digits,
    digits_accuracy,
    interleaved_latency,
    output_cosine,
)
from _measure import measure_call
from _report import consoles, work_folder
from rich.console import Console
from rich.table import Table

__all__ = ["Row", "ours", "theirs", "bench_digits", "bench_export", "calibration_rss", "main"]

DIGITS_CALIB = FIXTURES / "digits_calib.npz"
MB = 10**6
RSS_SAMPLES = (50, 500)
_COLUMNS = (
    "model",
    "variant",
    "accuracy",
    "cosine",
    "size MB",
    "size vs fp32",
    "size vs ORT",
    "latency ms",
    "latency vs fp32",
    "latency vs ORT",
    "quantize s",
)


@dataclass
class Row:
    """One variant of one model."""

    model: str
    variant: str
    size_mb: float
    latency_ms: dict[str, float]
    accuracy: float | None = None
    cosine: float | None = None
    quantize_s: float | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ quantizers


def ours(source: Path, target: Path, calib: Path | None, samples: int, spec: str = "") -> float:
    """Quantize with onnxslim; the seconds it took (load, calibrate, rewrite, save)."""
    import onnxslim

    options = (
        [f"samples={samples}"] + ([f"calib='{calib}'"] if calib else []) + ([spec] if spec else [])
    )
    start = time.perf_counter()
    onnxslim.optimize(source, passes=f"quantize({', '.join(options)})", output=target)
    return time.perf_counter() - start


def theirs(source: Path, target: Path, feeds: Sequence[dict[str, np.ndarray]]) -> float:
    """Quantize with onnxruntime's quantize_static as its documentation recommends; seconds."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    start = time.perf_counter()
    prepared = target.with_suffix(".pre.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    seconds = time.perf_counter() - start
    prepared.unlink()
    return seconds


def _size_mb(path: Path) -> float:
    data = path.with_name(path.name + ".data")
    return (path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / MB


# ------------------------------------------------------------------------------ cases


def bench_digits(folder: Path, runs: int, log: Callable[[str], None]) -> list[Row]:
    data = digits()
    calib = [{"image": image[None]} for image in data["x_train"][:200]]
    batches = {"b1": {"image": data["x_test"][:1]}, "b32": {"image": data["x_test"][:32]}}
    log("digits: quantizing with onnxslim and with onnxruntime")
    ours_path, ort_path = folder / "digits.ours.onnx", folder / "digits.ort.onnx"
    variants = {
        "fp32": (DIGITS_CNN, None),
        "onnxslim": (ours_path, ours(DIGITS_CNN, ours_path, DIGITS_CALIB, 200)),
        "onnxruntime": (ort_path, theirs(DIGITS_CNN, ort_path, calib)),
    }
    log("digits: measuring latency (interleaved rounds)")
    paths = [path for path, _ in variants.values()]
    latencies = interleaved_latency(paths, batches, runs=runs, min_seconds=3.0)
    return [
        Row("digits-cnn", variant, _size_mb(path), latency, digits_accuracy(path, data), None, s)
        for (variant, (path, s)), latency in zip(variants.items(), latencies, strict=True)
    ]


def _split_rows(feed: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    count = len(next(iter(feed.values())))
    return [{name: value[i : i + 1] for name, value in feed.items()} for i in range(count)]


def bench_export(
    name: str, folder: Path, samples: int, runs: int, log: Callable[[str], None]
) -> list[Row]:
    """fp32 / ours / onnxruntime's on an exported model, calibrated on random inputs."""
    source, manifest = bench_model(name, log=log)
    calib = [
        row for seed in range(samples // 2) for row in _split_rows(bench_feed(manifest, 2, seed))
    ]
    calib_path = folder / f"{name}.calib.npz"
    np.savez(calib_path, **{key: np.stack([c[key] for c in calib]) for key in calib[0]})
    feed = bench_feed(manifest, 1, seed=1000)
    variants: dict[str, tuple[Path, float | None]] = {"fp32": (source, None)}
    log(f"{name}: quantizing with onnxslim ({len(calib)} samples)")
    target = folder / f"{name}.ours.onnx"
    variants["onnxslim"] = (target, ours(source, target, calib_path, len(calib)))
    log(f"{name}: quantizing with onnxruntime ({len(calib)} samples)")
    target = folder / f"{name}.ort.onnx"
    variants["onnxruntime"] = (target, theirs(source, target, calib))
    return _measure_variants(name, variants, source, feed, runs, log)


def bench_int4(folder: Path, runs: int, log: Callable[[str], None]) -> list[Row]:
    source, manifest = bench_model("bert-base", log=log)
    feed = bench_feed(manifest, 1, seed=1000)
    target = folder / "bert-base.int4.onnx"
    log("bert-base: int4 weight-only with onnxslim")
    seconds = ours(source, target, None, 1, "weights=int4, activations=none, block_size=32")
    variants = {"fp32": (source, None), "onnxslim": (target, seconds)}
    return _measure_variants("bert-base int4 weight-only", variants, source, feed, runs, log)


def _measure_variants(
    model: str,
    variants: dict[str, tuple[Path, float | None]],
    source: Path,
    feed: dict[str, np.ndarray],
    runs: int,
    log: Callable[[str], None],
) -> list[Row]:
    """Cosine with the float model and batch-1 latency (interleaved rounds) of each variant."""
    log(f"{model}: measuring {', '.join(variants)} (interleaved rounds)")
    paths = [path for path, _ in variants.values()]
    latencies = interleaved_latency(paths, {"b1": feed}, runs=runs)
    return [
        Row(
            model,
            variant,
            _size_mb(path),
            latency,
            cosine=output_cosine(source, path, feed),
            quantize_s=seconds,
        )
        for (variant, (path, seconds)), latency in zip(variants.items(), latencies, strict=True)
    ]


# ------------------------------------------------------------------------------ memory


def calibrate_ours(samples: int, target: str) -> None:
    """Measured in a child: onnxslim's quantize of the digits CNN on ``samples`` images."""
    data = digits()
    calib = Path(target).with_suffix(".calib.npz")
    np.savez(calib, image=data["x_train"][:samples][:, None])
    ours(DIGITS_CNN, Path(target), calib, samples)


def calibrate_theirs(samples: int, target: str) -> None:
    """Measured in a child: onnxruntime's quantize_static on the same images."""
    data = digits()
    theirs(
        DIGITS_CNN, Path(target), [{"image": image[None]} for image in data["x_train"][:samples]]
    )


def calibrate_export(name: str, samples: int, target: str) -> None:
    """Measured in a child: onnxslim's quantize of an exported model on ``samples`` random
    inputs (onnxruntime's calibrator keeps every activation of every sample: at 500 samples
    of a 224x224 network that is over 10 GB, so it is measured on digits only)."""
    source, _ = bench_model(name)
    ours(source, Path(target), None, samples)


def calibration_rss(
    folder: Path, exported: Sequence[str], log: Callable[[str], None]
) -> dict[str, dict[int, float]]:
    """Peak RSS in MB of a whole quantization (calibration included) per sample count."""
    cases = [
        ("digits: onnxslim", calibrate_ours, ()),
        ("digits: onnxruntime", calibrate_theirs, ()),
        *((f"{name}: onnxslim", calibrate_export, (name,)) for name in exported),
    ]
    result: dict[str, dict[int, float]] = {}
    for label, function, args in cases:
        result[label] = {}
        for samples in RSS_SAMPLES:
            log(f"calibration RSS: {label}, {samples} samples")
            target = str(folder / f"rss-{len(result)}-{samples}.onnx")
            measured = measure_call(function, *args, samples, target, preload=["onnxruntime"])
            result[label][samples] = measured.peak_rss_bytes / MB
    return result


# ------------------------------------------------------------------------------ report


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "-"


def _latency_ratios(row: Row, base: Row | None) -> str:
    if base is None:
        return "-"
    return " / ".join(_ratio(v, base.latency_ms.get(k)) for k, v in row.latency_ms.items())


def render(rows: list[Row], rss: dict[str, dict[int, float]], console: Console) -> None:
    if rows:
        console.print(_results_table(rows))
    if rss:
        console.print(_memory_table(rss))


def _results_table(rows: list[Row]) -> Table:
    table = Table(title="quantization: fp32 / onnxslim / onnxruntime quantize_static")
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "variant") else "right")
    for row in rows:
        peers = {r.variant: r for r in rows if r.model == row.model}
        fp32, ort = peers.get("fp32"), peers.get("onnxruntime")
        table.add_row(
            row.model,
            row.variant,
            f"{row.accuracy:.2%}" if row.accuracy is not None else "-",
            f"{row.cosine:.5f}" if row.cosine is not None else "-",
            f"{row.size_mb:.2f}",
            _ratio(row.size_mb, fp32.size_mb if fp32 else None),
            _ratio(row.size_mb, ort.size_mb if ort else None),
            " / ".join(f"{k} {v:.3f}" for k, v in row.latency_ms.items()),
            _latency_ratios(row, fp32),
            _latency_ratios(row, ort),
            f"{row.quantize_s:.1f}" if row.quantize_s is not None else "-",
        )
    return table


def _memory_table(rss: dict[str, dict[int, float]]) -> Table:
    memory = Table(title="peak RSS of a whole quantization (calibration included)")
    for column in ("case", *(f"{n} samples MB" for n in RSS_SAMPLES), "ratio"):
        memory.add_column(column, justify="right")
    for case, by_count in rss.items():
        values = [by_count[n] for n in RSS_SAMPLES]
        memory.add_row(case, *(f"{v:.1f}" for v in values), f"{values[1] / values[0]:.2f}x")
    return memory


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer samples and runs.")
    parser.add_argument(
        "--models",
        nargs="*",
        default=["digits", "resnet50", "bert-base", "int4", "rss"],
        choices=["digits", "resnet50", "bert-base", "int4", "rss"],
        help="Cases to run (default: all).",
    )
    parser.add_argument("--json", type=Path, help="Write the results as JSON here.")
    parser.add_argument("--workdir", type=Path, help="Keep the quantized models here.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    console, _, log = consoles(width=180)
    folder, owned = work_folder(args.workdir, prefix="onnxslim-bench-quantize-")
    samples = 8 if args.quick else 32
    runs = 10 if args.quick else 50
    rows: list[Row] = []
    rss: dict[str, dict[int, float]] = {}
    try:
        if "digits" in args.models:
            rows += bench_digits(folder, runs=200 if args.quick else 1000, log=log)
        for name in ("resnet50", "bert-base"):
            if name in args.models:
                count = samples if name == "resnet50" else max(2, samples // 4)
                rows += bench_export(
                    name, folder, count, runs if name == "resnet50" else runs // 2, log
                )
        if "int4" in args.models:
            rows += bench_int4(folder, max(3, runs // 2), log)
        if "rss" in args.models:
            rss = calibration_rss(folder, [] if args.quick else ["mobilenetv2"], log)
    finally:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)
    render(rows, rss, console)
    if args.json:
        payload = {"rows": [row.as_json() for row in rows], "calibration_rss_mb": rss}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
