"""Benchmark: channel pruning of ResNet-50, MobileNetV2, BERT-base's FFN and the digits CNN.

For each model and ratio the script prunes with ``prune-channels`` (criterion l1, followed by
the lossless pipeline, as ``onnxslim prune`` does) and measures against the original, in the
same run: parameters, FLOPs (``onnxslim inspect``'s estimate), median CPU latency at batch 1
and 16, and for the digits CNN top-1 test accuracy (without fine-tuning: the distillation
benchmark recovers it). Targets at 0.5: FLOPs <= 0.3x and latency <= 0.5x for ResNet-50 and
MobileNetV2, latency <= 0.75x for BERT-base. Run ``python bench/prune.py --help``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from _evaluate import DIGITS_CNN, bench_feed, bench_model, digits_accuracy, interleaved_latency
from _report import consoles, work_folder
from rich.console import Console
from rich.table import Table

from onnxslim.api import optimize
from onnxslim.registry import DEFAULT_PIPELINE
from onnxslim.summary import describe

__all__ = ["Row", "describe_row", "bench", "render", "main"]

VISION = ("resnet50", "mobilenetv2")
TARGETS = {"resnet50": (0.3, 0.5), "mobilenetv2": (0.3, 0.5), "bert-base": (None, 0.75)}
# BERT's target is for its FFN alone; heads (the stretch goal) are pruned in a second row.
VARIANTS = {"bert-base": {"ffn": ", exclude='*attention*'", "ffn + heads": ""}}


@dataclass
class Row:
    """One model at one ratio (ratio 0 is the original)."""

    model: str
    ratio: float
    parameters: int
    flops: int
    latency_ms: dict[str, float]
    accuracy: float | None = None
    flops_x: float | None = None
    latency_x: dict[str, float] | None = None
    ok: bool | None = None


ROUNDS = 3


def describe_row(name: str, path: Path, ratio: float, accuracy: bool) -> Row:
    """Parameters, FLOPs and (for the digits CNN) accuracy; latency comes later."""
    description = describe(path)
    return Row(
        model=name,
        ratio=ratio,
        parameters=description.parameters,
        flops=description.flops,
        latency_ms={},
        accuracy=digits_accuracy(path) if accuracy else None,
    )


def _compare(row: Row, base: Row) -> Row:
    row.flops_x = row.flops / base.flops if base.flops else None
    row.latency_x = {k: v / base.latency_ms[k] for k, v in row.latency_ms.items()}
    flops_target, latency_target = TARGETS.get(row.model, (None, None))
    if row.ratio == 0.5 and latency_target is not None:
        row.ok = max(row.latency_x.values()) <= latency_target and (
            flops_target is None or row.flops_x <= flops_target
        )
    return row


def bench(
    name: str,
    ratios: Sequence[float],
    folder: Path,
    runs: int,
    threads: int | None,
    log: Callable[[str], None],
) -> list[Row]:
    digits = name == "digits-cnn"
    if digits:
        path, feeds = DIGITS_CNN, {}
    else:
        path, manifest = bench_model(name, log=log)
        batches = (1,) if name == "bert-base" else (1, 16)
        feeds = {f"batch {b}": bench_feed(manifest, b) for b in batches}
    paths, rows, labels = [path], [describe_row(name, path, 0.0, digits)], [name]
    for ratio in ratios:
        for variant, options in VARIANTS.get(name, {"": ""}).items():
            labels.append(f"{name} ({variant})" if variant else name)
            log(f"{labels[-1]}: pruning at {ratio}")
            paths.append(folder / f"{name}-{variant}-{ratio}.onnx")
            spec = f"fold-constants,prune-channels(ratio={ratio}{options}),{DEFAULT_PIPELINE}"
            optimize(path, passes=spec, output=paths[-1])
            rows.append(describe_row(name, paths[-1], ratio, digits))
    log(f"{name}: measuring latency of {len(paths)} models")
    for row, latency in zip(
        rows,
        interleaved_latency(paths, feeds, runs=runs, rounds=ROUNDS, threads=threads),
        strict=True,
    ):
        row.latency_ms = latency
    for row, label in zip(rows, labels, strict=True):
        _compare(row, rows[0])
        row.model = label
    return rows


def render(rows: Sequence[Row], console: Console) -> None:
    table = Table(title="prune-channels (criterion l1, no fine-tuning)")
    for column in ("model", "ratio", "params", "FLOPs", "FLOPs x", "latency ms", "latency x"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_column("accuracy", justify="right")
    table.add_column("target", justify="center")
    for row in rows:
        latency = ", ".join(f"{k}: {v:.2f}" for k, v in row.latency_ms.items()) or "-"
        ratios = ", ".join(f"{v:.2f}" for v in (row.latency_x or {}).values()) or "-"
        target = {True: "[green]met[/]", False: "[red]missed[/]", None: ""}[row.ok]
        table.add_row(
            row.model,
            f"{row.ratio:.1f}",
            f"{row.parameters / 1e6:.2f} M",
            f"{row.flops / 1e9:.3f} G",
            f"{row.flops_x:.3f}" if row.flops_x is not None else "-",
            latency,
            ratios,
            f"{row.accuracy:.2%}" if row.accuracy is not None else "",
            target,
        )
    console.print(table)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Few latency runs, ratio 0.5 only.")
    parser.add_argument(
        "--models",
        nargs="+",
        default=[*VISION, "bert-base", "digits-cnn"],
        help="Models to run (resnet50, mobilenetv2, bert-base, digits-cnn).",
    )
    parser.add_argument("--runs", type=int, default=30, help="Latency runs per measurement.")
    parser.add_argument(
        "--threads", type=int, help="onnxruntime intra-op threads (default: all cores)."
    )
    parser.add_argument("--json", type=Path, help="Write the rows as JSON to this file.")
    parser.add_argument("--workdir", type=Path, help="Keep pruned models in this folder.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    console, _, log = consoles(width=160)
    folder, owned = work_folder(args.workdir, prefix="onnxslim-prune-")
    ratios = (0.5,) if args.quick else (0.3, 0.5)
    runs = 5 if args.quick else args.runs
    rows: list[Row] = []
    try:
        for name in args.models:
            # BERT's target is for 0.5.
            rows.extend(
                bench(
                    name, (0.5,) if name == "bert-base" else ratios, folder, runs, args.threads, log
                )
            )
    finally:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)
    render(rows, console)
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
