"""Benchmark: transformer fusions into standard ops, against onnxruntime's transformers optimizer.

For BERT-base, ViT-base, GPT-2 and a Llama-style decoder of GPT-2's size (grouped-query
attention, RMSNorm, rotary embedding), exported from torch with random weights by
``export_models.py`` (TorchScript at opset 17 without constant folding by default, as users
export; ``--exporter dynamo`` for torch.export at opset 18), the script makes

* ours: ``onnxslim.optimize(model, target_opset=23)``, the default pipeline fusing into the
  standard Attention, RMSNormalization, RotaryEmbedding, LayerNormalization and Gelu;
* onnxruntime's: ``python -m onnxruntime.transformers.optimizer`` with the model type, head
  count and hidden size (contrib ops), run with the export environment's Python, which has
  torch as the optimizer needs (``bench/setup_peers.sh`` installs onnxruntime there);

then counts nodes, checks that both match the original's outputs on a batch with padding, and
measures onnxruntime's CPU latency of the three (batch 1 and ``--batch``, sequence 128 or
224x224 images) in interleaved rounds, so that load on this shared machine hits them alike.
The targets: ours no slower than onnxruntime's optimizer on every model, and no more nodes.

    .venv/bin/python bench/fusions.py                 # all four models, about 20 minutes
    .venv/bin/python bench/fusions.py --quick bert-base --json fusions.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _evaluate import interleaved_latency
from _report import consoles
from rich.table import Table
from vs_peers import REPO, GraphFacts, compare_outputs, ensure_exported, make_feed

import onnxslim
from onnxslim.testing import run_outputs

# model -> (the optimizer's model type, heads, hidden size)
MODELS = {
    "bert-base": ("bert", 12, 768),
    "vit-base": ("vit", 12, 768),
    "gpt2": ("gpt2", 12, 768),
    "llama": ("qwen3", 12, 768),  # the optimizer's decoder with RoPE, GQA and RMSNorm
}
VARIANTS = ("original", "ours", "onnxruntime")
FUSED_OPS = ("Attention", "RMSNormalization", "RotaryEmbedding", "LayerNormalization", "Gelu")
TARGET_OPSET = 23


@dataclass
class Row:
    """One model: node counts, output checks and latencies of the three variants."""

    model: str
    nodes: dict[str, int]
    max_difference: dict[str, float]
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    fused: dict[str, int] = field(default_factory=dict)

    def ratio(self, batch: str, timings: str = "latency_ms") -> float:
        measured = getattr(self, timings)
        return measured["ours"][batch] / measured["onnxruntime"][batch]


def _ours(source: Path, target: Path) -> float:
    start = time.perf_counter()
    onnxslim.optimize(source, output=target, target_opset=TARGET_OPSET)
    return time.perf_counter() - start


def _onnxruntime(name: str, source: Path, target: Path, python: Path) -> float:
    model_type, heads, hidden = MODELS[name]
    command = [str(python), "-m", "onnxruntime.transformers.optimizer", "--input", str(source)]
    command += ["--output", str(target), "--model_type", model_type]
    command += ["--num_heads", str(heads), "--hidden_size", str(hidden)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not target.exists():
        raise RuntimeError(f"{name}: the transformers optimizer failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _feeds(manifest: dict[str, Any], batch: int) -> dict[str, dict[str, Any]]:
    def resized(size: int) -> list[dict[str, Any]]:
        return [{**spec, "shape": [size, *spec["shape"][1:]]} for spec in manifest["inputs"]]

    return {
        "batch 1": make_feed(resized(1), seed=1),
        f"batch {batch}": make_feed(resized(batch), 1),
    }


def _newer(path: Path, than: Path) -> bool:
    return path.exists() and path.stat().st_mtime > than.stat().st_mtime


def bench_model(name: str, args: argparse.Namespace, log) -> Row:
    folder = args.workdir / f"{args.exporter}-{'folded' if args.fold else 'unfolded'}"
    opset = 17 if args.exporter == "torchscript" else 18
    exported = ensure_exported(
        name,
        folder,
        exporter=args.exporter,
        opset=opset,
        python=args.export_python,
        log=log,
        constant_folding=args.fold,
    )
    paths = {"original": exported.path}
    paths["ours"] = folder / f"{name}.ours.onnx"
    paths["onnxruntime"] = folder / f"{name}.onnxruntime.onnx"
    seconds = {}
    if not (args.reuse and _newer(paths["ours"], exported.path)):
        log(f"[{name}] onnxslim")
        seconds["ours"] = _ours(exported.path, paths["ours"])
    if not (args.reuse and _newer(paths["onnxruntime"], exported.path)):
        log(f"[{name}] onnxruntime.transformers.optimizer")
        python = args.optimizer_python
        seconds["onnxruntime"] = _onnxruntime(name, exported.path, paths["onnxruntime"], python)
    facts = {variant: GraphFacts.of(path) for variant, path in paths.items()}
    feeds = _feeds(exported.manifest, args.batch)
    check = feeds[f"batch {args.batch}"]
    reference = run_outputs(exported.path, check)
    differences = {}
    for variant in ("ours", "onnxruntime"):
        ok, worst, why = compare_outputs(reference, run_outputs(paths[variant], check))
        differences[variant] = worst
        if not ok:
            log(f"[{name}] {variant}: outputs differ ({why})")
    ours_ops = facts["ours"].ops
    row = Row(
        model=name,
        nodes={variant: facts[variant].nodes for variant in VARIANTS},
        max_difference=differences,
        seconds=seconds,
        fused={op: ours_ops.get(op, 0) for op in FUSED_OPS},
    )
    variants = [paths[v] for v in VARIANTS]
    if args.clock in ("wall", "both"):
        log(f"[{name}] latency, {args.rounds} interleaved rounds")
        latencies = interleaved_latency(
            variants, feeds, runs=args.runs, rounds=args.rounds, threads=args.threads
        )
        row.latency_ms = dict(zip(VARIANTS, latencies, strict=True))
    if args.clock in ("cpu", "both"):
        log(f"[{name}] CPU time with one thread, {args.rounds} interleaved rounds")
        cpu = interleaved_latency(
            variants, feeds, runs=args.runs, rounds=args.rounds, threads=1, cpu_time=True
        )
        row.cpu_ms = dict(zip(VARIANTS, cpu, strict=True))
    return row


def render(rows: list[Row], batch: int, console) -> None:
    nodes = Table(title="nodes (and outputs' max difference relative to the largest value)")
    for column in ("model", "original", "ours", "onnxruntime", "ours fused"):
        nodes.add_column(column, justify="left" if column in ("model", "ours fused") else "right")
    for row in rows:
        fused = ", ".join(f"{count} {op}" for op, count in row.fused.items() if count)
        nodes.add_row(
            row.model,
            str(row.nodes["original"]),
            f"{row.nodes['ours']} ({row.max_difference['ours']:.0e})",
            f"{row.nodes['onnxruntime']} ({row.max_difference['onnxruntime']:.0e})",
            fused,
        )
    console.print(nodes)
    titles = {
        "latency_ms": "latency, median wall ms (ratio ours / onnxruntime's optimizer)",
        "cpu_ms": "CPU time per run with one thread, median ms (ratio ours / onnxruntime's)",
    }
    for timings, title in titles.items():
        if all(getattr(row, timings) for row in rows):
            console.print(_timing_table(rows, batch, timings, title))


def _timing_table(rows: list[Row], batch: int, timings: str, title: str) -> Table:
    table = Table(title=title)
    table.add_column("model")
    for label in ("batch 1", f"batch {batch}"):
        for variant in VARIANTS:
            table.add_column(f"{label}\n{variant}", justify="right")
    for row in rows:
        measured = getattr(row, timings)
        cells = []
        for label in ("batch 1", f"batch {batch}"):
            cells += [f"{measured[v][label]:.1f}" for v in VARIANTS[:2]]
            cells[-1] += f" ({row.ratio(label, timings):.2f})"
            cells.append(f"{measured['onnxruntime'][label]:.1f}")
        table.add_row(row.model, *cells)
    return table


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help=f"default: all of {', '.join(MODELS)}")
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    parser.add_argument("--fold", action="store_true", help="TorchScript with constant folding")
    parser.add_argument("--batch", type=int, default=4, help="the larger batch (default 4)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=25, help="runs per variant and batch")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu", "both"),
        default="wall",
        help="wall: latency with --threads; cpu: the process's CPU time per run with one "
        "thread, which other work on a busy machine disturbs far less",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 6 runs")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench" / "fusions")
    export_python = REPO / ".venv-export" / "bin" / "python"
    parser.add_argument("--export-python", type=Path, default=export_python)
    parser.add_argument(
        "--optimizer-python",
        type=Path,
        default=export_python,
        help="a Python with onnxruntime and torch (the transformers optimizer imports torch)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument(
        "--reuse", action="store_true", help="keep optimized models already in the work folder"
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    args.models = args.models or list(MODELS)
    if args.quick:
        args.rounds, args.runs = 3, 6
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    console, _, log = consoles(width=160)
    rows = [bench_model(name, args, log) for name in args.models]
    render(rows, args.batch, console)
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
