"""Benchmark: onnxslim's quantize against onnxruntime's quantizers, on pretrained models.

One run, side by side for each model: fp32 / ours with default flags / ours with the best flags
found for the model / onnxruntime ``quantize_static`` (QDQ, per-channel int8 weights, uint8
activations, MinMax) / onnxruntime ``quantize_dynamic`` (per-channel int8 weights). Both
onnxruntime quantizers get ``quant_pre_process`` first, as its documentation recommends, and
the same calibration samples as ours.

- Quality on the held-out inputs of ``bench/real_models.py`` (real sentences, images, text
  lines), one sample per run: sentence-embedding cosine with fp32 (MiniLM); top-1 agreement
  with fp32 (the PP-OCR line classifier, also its accuracy on the 0/180 labels); per-frame
  top-1 agreement (the PP-OCR recognizer, also how many lines read the same); pixel
  agreement of the text map (the PP-OCR detector); logits cosine and top-1 token agreement
  (GPT-2 small, random weights, TorchScript export with its causal mask).
- File size; CPU latency at batch 1 and a batch (median, models measured in interleaved
  rounds); quantize time and peak RSS above the child's imports, each quantization in a
  fresh process.
- The guard: a quantize that has to keep layers float (``min_cosine`` above what every layer
  quantized reaches) against a plain one (floor off) on MiniLM-L6, the median of 3
  interleaved rounds.

Run with ``.venv/bin/python bench/quantize.py`` (``--quick``: fewer held-out samples and latency
runs; ``--models``; ``--best SPEC``: other options for the "ours best" row; ``--json PATH``;
``--workdir DIR`` keeps the models). The models and data
come from ``bench/real_models.py`` (``.venv-export/bin/python bench/real_models.py
--prepare`` makes them, after ``bash bench/setup_peers.sh export``); GPT-2 is exported by
``bench/export_models.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from _evaluate import bench_feed, bench_model, interleaved_latency, session
from _measure import MeasurementError, measure_call
from _report import consoles, work_folder
from rich.console import Console
from rich.table import Table

__all__ = ["Case", "Variant", "CASES", "ours", "ort_static", "ort_dynamic", "main"]

MB = 10**6
VARIANTS = ("fp32", "ours", "ours best", "ORT static", "ORT dynamic")
_CHILD_PRELOAD = ["numpy", "onnx", "onnxruntime", "onnxruntime.quantization"]


# ------------------------------------------------------------------------------ quantizers
# Each runs in a fresh child (measure_call): its time and peak memory are its own.


def ours(source: str, target: str, calib: str, spec: str) -> list[str]:
    """onnxslim: ``quantize(calib=..., <spec>)`` with the lossless pipeline first (the
    default), load and save included; returns the pass's notes."""
    import onnxslim

    options = ", ".join(filter(None, [f"calib='{calib}'", spec]))
    _, report = onnxslim.optimize(source, passes=f"quantize({options})", output=target)
    return [
        note
        for record in report.passes
        if record.name.startswith("quantize")
        for note in record.notes
    ]


def _ort_calibration(calib: str, names: Sequence[str]):
    from onnxruntime.quantization import CalibrationDataReader

    samples = _load_calib(Path(calib))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(samples)

        def get_next(self):
            sample = next(self.items, None)
            return None if sample is None else {k: v for k, v in sample.items() if k in names}

    return Reader()


def _load_calib(path: Path) -> list[dict[str, np.ndarray]]:
    """Samples of a calibration ``.npz`` (samples along axis 0) or folder of them."""
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    samples = []
    for file in files:
        with np.load(file) as archive:
            arrays = {k: archive[k] for k in archive.files if k != "labels"}
        stacked = [k for k, a in arrays.items() if a.ndim > 0]
        count = len(arrays[stacked[0]]) if path.is_file() else 1
        for index in range(count):
            samples.append(
                {k: (a[index] if k in stacked and path.is_file() else a) for k, a in arrays.items()}
            )
    return samples


def _preprocessed(source: str, target: str) -> str:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = str(Path(target).with_suffix(".pre.onnx"))
    quant_pre_process(source, prepared, skip_symbolic_shape=True)
    return prepared


def ort_static(source: str, target: str, calib: str) -> None:
    """onnxruntime ``quantize_static``: QDQ, per channel, QInt8 weights, QUInt8 activations,
    MinMax, after ``quant_pre_process``."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    prepared = _preprocessed(source, target)
    names = [i.name for i in ort.InferenceSession(prepared).get_inputs()]
    quantize_static(
        prepared,
        target,
        _ort_calibration(calib, names),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    Path(prepared).unlink()


def ort_dynamic(source: str, target: str) -> None:
    """onnxruntime ``quantize_dynamic``: per-channel QInt8 weights, after
    ``quant_pre_process``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepared = _preprocessed(source, target)
    quantize_dynamic(prepared, target, per_channel=True, weight_type=QuantType.QInt8)
    Path(prepared).unlink()


# ------------------------------------------------------------------------------ cases


@dataclass
class Case:
    """A model, its data and how its quality is judged."""

    name: str
    kind: str  # embedding | classifier | sequence | detector | logits
    best: str  # our best flags for it
    source: Callable[[], Path]
    calib: Callable[[Path], Path]
    held_out: Callable[[int], list[dict[str, np.ndarray]]]
    batch: Callable[[], dict[str, np.ndarray] | None]  # the batch latency is measured on
    output: str | None = None  # the output quality is judged on (None: the first)
    labels: Callable[[], np.ndarray] | None = None


def _real(name: str, kind: str, best: str, output: str | None = None, batch: int = 16) -> Case:
    from real_models import data_path, feeds, labels, real_model

    def held_out(limit: int) -> list[dict[str, np.ndarray]]:
        return list(feeds(name, "heldout", batch_size=1))[:limit]

    def batched() -> dict[str, np.ndarray] | None:
        return next(feeds(name, "heldout", batch_size=batch)) if batch > 1 else None

    has_labels = name == "ppocr-cls"
    return Case(
        name,
        kind,
        best,
        lambda: real_model(name).path,
        lambda folder: data_path(name, "calib"),
        held_out,
        batched,
        output,
        (lambda: labels(name, "heldout")) if has_labels else None,
    )


def _gpt2() -> Case:
    """GPT-2 small with random weights (TorchScript export, causal mask), on random tokens."""

    def source() -> Path:
        return bench_model("gpt2", log=lambda message: print(message, file=sys.stderr))[0]

    def manifest() -> dict:
        return bench_model("gpt2", log=lambda message: None)[1]

    def rows(seed: int, count: int) -> list[dict[str, np.ndarray]]:
        out = []
        for index in range(count):
            feed = bench_feed(manifest(), 1, seed=seed + index)
            out.append({k: v[:, :64] if v.ndim == 2 else v for k, v in feed.items()})
        return out

    def calib(folder: Path) -> Path:
        samples = rows(0, 48)
        path = folder / "gpt2.calib.npz"
        np.savez(path, **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
        return path

    def batch() -> dict[str, np.ndarray]:
        samples = rows(5000, 8)
        return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}

    return Case(
        "gpt2 (random weights)",
        "logits",
        "activations=dynamic, smooth=0.8",
        source,
        calib,
        lambda limit: rows(1000, min(limit, 32)),
        batch,
    )


CASES: dict[str, Callable[[], Case]] = {
    "minilm-l6-torchscript": lambda: _real(
        "minilm-l6-torchscript", "embedding", "smooth=0.8", "sentence_embedding"
    ),
    "minilm-l6-dynamo": lambda: _real(
        "minilm-l6-dynamo", "embedding", "smooth=0.8", "sentence_embedding"
    ),
    "minilm-l3": lambda: _real("minilm-l3", "embedding", "smooth=0.8", "461"),
    "ppocr-cls": lambda: _real("ppocr-cls", "classifier", "calibration=percentile"),
    "ppocr-rec": lambda: _real("ppocr-rec", "sequence", "calibration=percentile"),
    "ppocr-det": lambda: _real("ppocr-det", "detector", "calibration=percentile", batch=1),
    "gpt2": _gpt2,
}


# ------------------------------------------------------------------------------ measuring


@dataclass
class Variant:
    """One variant of one model, measured."""

    model: str
    variant: str
    quality: dict[str, float] = field(default_factory=dict)
    size_mb: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    quantize_s: float | None = None
    peak_mb: float | None = None
    note: str = ""


def _size_mb(path: Path) -> float:
    data = path.with_name(path.name + ".data")
    return (path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / MB


def _outputs(path: Path, feeds: Iterable[dict[str, np.ndarray]], output: str | None) -> list:
    sess = session(path)
    names = {i.name for i in sess.get_inputs()}
    wanted = [output] if output else [sess.get_outputs()[0].name]
    return [sess.run(wanted, {k: v for k, v in f.items() if k in names})[0] for f in feeds]


def _cosines(reference: list[np.ndarray], got: list[np.ndarray]) -> np.ndarray:
    values = []
    for a, b in zip(reference, got, strict=True):
        a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        values.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))
    return np.array(values)


def quality(case: Case, reference: list, got: list) -> dict[str, float]:
    """The figures that judge ``got`` against fp32's ``reference`` (lists of outputs, one per
    held-out sample)."""
    cosines = _cosines(reference, got)
    result = {"cosine": float(cosines.mean()), "worst cosine": float(cosines.min())}
    if case.kind in ("classifier", "sequence", "logits"):
        same = [np.mean(a.argmax(-1) == b.argmax(-1)) for a, b in zip(reference, got, strict=True)]
        result["top-1 agreement"] = float(np.mean(same))
    if case.kind == "sequence":
        lines = [
            np.array_equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(reference, got, strict=True)
        ]
        result["lines read the same"] = float(np.mean(lines))
    if case.kind == "detector":
        agree = [np.mean((a > 0.3) == (b > 0.3)) for a, b in zip(reference, got, strict=True)]
        result["pixel agreement"] = float(np.mean(agree))
    if case.labels is not None:
        predicted = np.array([g.argmax(-1).item() for g in got])
        result["accuracy"] = float(np.mean(predicted == case.labels()[: len(predicted)]))
    return result


def headline(case: Case, figures: dict[str, float]) -> str:
    """The one number per variant that the table's quality column shows."""
    if not figures:
        return "-"
    if case.kind in ("classifier", "sequence"):
        return f"top-1 {figures['top-1 agreement']:.2%}"
    if case.kind == "detector":
        return f"pixels {figures['pixel agreement']:.2%}"
    if case.kind == "logits":
        return f"cos {figures['cosine']:.4f}, top-1 {figures['top-1 agreement']:.1%}"
    return f"cos {figures['cosine']:.4f}"


def bench_case(
    case: Case, folder: Path, held_out: int, runs: int, log: Callable[[str], None]
) -> list[Variant]:
    source = case.source()
    calib = case.calib(folder)
    stem = case.name.split()[0]
    targets = {
        "ours": folder / f"{stem}.ours.onnx",
        "ours best": folder / f"{stem}.best.onnx",
        "ORT static": folder / f"{stem}.ort-static.onnx",
        "ORT dynamic": folder / f"{stem}.ort-dynamic.onnx",
    }
    calls = {
        "ours": (ours, (str(source), str(targets["ours"]), str(calib), "")),
        "ours best": (ours, (str(source), str(targets["ours best"]), str(calib), case.best)),
        "ORT static": (ort_static, (str(source), str(targets["ORT static"]), str(calib))),
        "ORT dynamic": (ort_dynamic, (str(source), str(targets["ORT dynamic"]))),
    }
    variants = {"fp32": Variant(case.name, "fp32", size_mb=_size_mb(source))}
    for label, (function, args) in calls.items():
        log(f"{case.name}: quantizing ({label})")
        variant = Variant(case.name, label)
        try:
            measured = measure_call(function, *args, preload=_CHILD_PRELOAD)
        except MeasurementError as exc:
            variant.note = f"failed: {str(exc).strip().splitlines()[-1][:120]}"
        else:
            variant.quantize_s = measured.seconds
            variant.peak_mb = measured.peak_increase_bytes / MB
            variant.size_mb = _size_mb(targets[label])
            if label.startswith("ours"):
                variant.note = _scheme_note(measured.value)
        variants[label] = variant
    paths = {"fp32": source} | {k: p for k, p in targets.items() if p.exists()}
    samples = case.held_out(held_out)
    log(f"{case.name}: quality on {len(samples)} held-out samples")
    reference = _outputs(source, samples, case.output)
    for label, path in list(paths.items()):
        try:
            got = _outputs(path, samples, case.output)
        except Exception as exc:  # onnxruntime's errors share no base class
            variants[label].note = f"onnxruntime cannot run it: {str(exc).splitlines()[0][-90:]}"
            del paths[label]
            continue
        variants[label].quality = quality(case, reference, got)
    log(f"{case.name}: latency (interleaved rounds)")
    feeds = {"b1": samples[0]}
    batch = case.batch()
    if batch is not None:
        feeds[f"b{len(next(iter(batch.values())))}"] = batch
    latencies = interleaved_latency(list(paths.values()), feeds, runs=runs, rounds=3)
    for label, latency in zip(paths, latencies, strict=True):
        variants[label].latency_ms = latency
    return [variants[label] for label in VARIANTS]


def _scheme_note(notes: list[str] | None) -> str:
    for note in notes or []:
        if note.startswith("quantized "):
            return note.split(";")[0].removeprefix("quantized ")
    return ""


def guard_cost(folder: Path, rounds: int, log: Callable[[str], None]) -> dict[str, float]:
    """Seconds of a plain quantize (floor off) and of one whose guard must keep layers float,
    on MiniLM-L6 (TorchScript export): the median of ``rounds`` interleaved rounds, so that
    load from other work weighs on both alike."""
    from real_models import data_path, real_model

    source = str(real_model("minilm-l6-torchscript").path)
    calib = str(data_path("minilm-l6-torchscript", "calib"))
    specs = {
        "plain": "activations=dynamic, min_cosine=0, min_top1=0",
        "guarded": "activations=dynamic, min_cosine=0.995",
    }
    seconds: dict[str, list[float]] = {label: [] for label in specs}
    for round_ in range(rounds):
        for label, spec in specs.items():
            log(f"guard cost: {label} ({round_ + 1}/{rounds})")
            target = str(folder / f"guard-{label}.onnx")
            measured = measure_call(ours, source, target, calib, spec, preload=_CHILD_PRELOAD)
            seconds[label].append(measured.seconds)
    return {label: float(np.median(values)) for label, values in seconds.items()}


# ------------------------------------------------------------------------------ report


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "-"


def render(cases: dict[str, list[Variant]], guard: dict[str, float], console: Console) -> None:
    for name, variants in cases.items():
        case = CASES[name]()
        table = Table(title=f"{case.name}: quality on held-out inputs, size, latency, cost")
        columns = (
            "variant",
            "quality",
            "MB",
            "x fp32",
            "latency ms",
            "x ORT dyn",
            "quantize s",
            "peak MB",
        )
        for column in columns:
            table.add_column(column, justify="left" if column == "variant" else "right")
        fp32 = variants[0]
        ort_dynamic = variants[-1]
        for variant in variants:
            latency = " / ".join(f"{k} {v:.1f}" for k, v in variant.latency_ms.items())
            against = " / ".join(
                _ratio(v, ort_dynamic.latency_ms.get(k)) for k, v in variant.latency_ms.items()
            )
            table.add_row(
                variant.variant + (f" ({variant.note})" if variant.note else ""),
                headline(case, variant.quality),
                f"{variant.size_mb:.2f}" if variant.size_mb else "-",
                _ratio(variant.size_mb, fp32.size_mb),
                latency or "-",
                against or "-",
                f"{variant.quantize_s:.1f}" if variant.quantize_s is not None else "-",
                f"{variant.peak_mb:.0f}" if variant.peak_mb is not None else "-",
            )
        console.print(table)
    if guard:
        console.print(
            f"guard cost on minilm-l6-torchscript: plain {guard['plain']:.1f} s, guarded "
            f"{guard['guarded']:.1f} s ({guard['guarded'] / guard['plain']:.2f}x)"
        )


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer samples and runs.")
    parser.add_argument(
        "--models",
        nargs="*",
        default=[*CASES, "guard"],
        choices=[*CASES, "guard"],
        help="Cases to run (default: all).",
    )
    parser.add_argument(
        "--best",
        metavar="SPEC",
        help="Quantize options for the 'ours best' row instead of each model's best flags, "
        "e.g. 'guard=false, min_cosine=0, min_top1=0' (every layer quantized).",
    )
    parser.add_argument("--json", type=Path, help="Write the results as JSON here.")
    parser.add_argument("--workdir", type=Path, help="Keep the quantized models here.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    console, _, log = consoles(width=140)
    folder, owned = work_folder(args.workdir, prefix="onnxslim-bench-quantize-")
    held_out = 64 if args.quick else 256
    runs = 10 if args.quick else 40
    results: dict[str, list[Variant]] = {}
    guard: dict[str, float] = {}
    try:
        for name in args.models:
            if name == "guard":
                guard = guard_cost(folder, 1 if args.quick else 3, log)
            else:
                case = CASES[name]()
                if args.best is not None:
                    case = replace(case, best=args.best)
                results[name] = bench_case(case, folder, held_out, runs, log)
    finally:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)
    render(results, guard, console)
    if args.json:
        payload = {
            "cases": {name: [asdict(v) for v in variants] for name, variants in results.items()},
            "guard_seconds": guard,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=_finite) + "\n")
    return 0


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


if __name__ == "__main__":
    sys.exit(main())
