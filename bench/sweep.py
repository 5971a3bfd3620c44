"""Sweep: onnxslim against OnnxSlim and onnx-simplifier on architectures ``vs_peers.py`` lacks.

The model set is ``sweep_models.py``'s: torchvision CNNs and vision transformers, Hugging Face
encoders, decoders (Llama-style, Qwen2-style) and detectors, random weights. Each model is
exported twice, with TorchScript (``do_constant_folding=False``: the raw graph) and with
dynamo, dynamic batch (and sequence) axes. On every export the script measures, each in a fresh
child process as ``vs_peers.py`` does: nodes, wall time and peak RSS of ours (the default
pipeline), OnnxSlim and onnxsim, and whether each result's outputs equal the original's on
onnxruntime. It prints one table, the op types where ours leaves more nodes than the peer with
fewest, and a summary: on how many models ours has at most the nodes of the peer with fewest,
takes at most the faster peer's time, peaks at most at the leaner peer's memory, and keeps the
outputs equal.

Exports are cached in ``--workdir`` (default ``.bench/sweep``), so a rerun only measures.
``--models`` and ``--exporters`` run a subset. ``bash bench/setup_peers.sh peers vision``
makes the two environments it needs besides ours: ``.venv-peers``, and ``.venv-vision``
(torch with torchvision) for the exports.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _measure import MeasurementError
from _report import consoles, work_folder
from rich.console import Console
from rich.table import Table
from vs_peers import (
    REPO,
    TOOLS,
    Exported,
    ExportError,
    GraphFacts,
    ModelRow,
    ToolRun,
    _op_diff,
    _peer_env,
    _positive_int,
    _subset,
    bench_model,
)

__all__ = ["SWEEP_MODELS", "EXPORTERS", "SweepRow", "ensure_sweep_exports", "summarize", "main"]

# The names of sweep_models.SWEEP, listed here so that this script needs no torch.
SWEEP_MODELS = (
    "swin_t",
    "shufflenet_v2_x1_0",
    "efficientnet_b0",
    "regnet_y_400mf",
    "mobilenet_v3_small",
    "convnext_tiny",
    "densenet121",
    "llama",
    "qwen2",
    "t5-encoder",
    "distilbert",
    "roberta",
    "yolos",
    "detr",
)
# TorchScript at opset 17; dynamo at 18, the lowest its converter writes without invalid Split
# nodes (see vs_peers.py --opset).
EXPORTERS = {"torchscript": 17, "dynamo": 18}
SHORT = {"torchscript": "ts", "dynamo": "dy"}
MB = 10**6


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _current(manifest: Path) -> bool:
    """Whether an export was made by today's export scripts."""
    if not manifest.exists():
        return False
    made = json.loads(manifest.read_text())
    return (made.get("script_sha256"), made.get("models_sha256")) == (
        _digest(REPO / "bench" / "export_models.py"),
        _digest(REPO / "bench" / "sweep_models.py"),
    )


def ensure_sweep_exports(
    names: Sequence[str],
    folder: Path,
    *,
    exporter: str,
    as_initialized: bool,
    python: Path,
    timeout: float,
    log: Callable[[str], None],
) -> dict[str, Exported | ExportError]:
    """The exports of ``names`` in ``folder``, made first where missing or out of date: all in
    one child (torch takes long to import), then one by one to tell which failed."""
    missing = [n for n in names if not _current(folder / f"{n}.json")]
    if missing:
        log(f"exporting {', '.join(missing)} with torch ({exporter}, opset {EXPORTERS[exporter]})")
        with contextlib.suppress(ExportError):  # retried one by one below
            _export(missing, folder, exporter, as_initialized, python, timeout * len(missing))
    results: dict[str, Exported | ExportError] = {}
    for name in names:
        try:
            if not _current(folder / f"{name}.json"):
                _export([name], folder, exporter, as_initialized, python, timeout)
            manifest = json.loads((folder / f"{name}.json").read_text())
            path = folder / f"{name}.onnx"
            results[name] = Exported(name, path, manifest, GraphFacts.of(path))
        except ExportError as exc:
            results[name] = exc
    return results


def _export(
    names: Sequence[str],
    folder: Path,
    exporter: str,
    as_initialized: bool,
    python: Path,
    timeout: float,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = [str(python), str(REPO / "bench" / "sweep_models.py"), "--out", str(folder)]
    command += ["--exporter", exporter, "--opset", str(EXPORTERS[exporter]), *names]
    command += ["--no-constant-folding"] + (["--as-initialized"] if as_initialized else [])
    label = f"{','.join(names)} ({exporter})"
    try:
        done = subprocess.run(
            command, env=_peer_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"{label}: export ran past {timeout:g} s") from exc
    if done.returncode != 0:
        raise ExportError(f"{label}: export failed:\n{done.stderr[-4000:]}")


@dataclass
class SweepRow:
    """One export measured: the model, its exporter, and vs_peers' row of numbers."""

    model: str
    exporter: str
    row: ModelRow

    def run(self, label: str) -> ToolRun | None:
        run = self.row.runs.get(label)
        return run if run is not None and run.ok else None

    def peers(self) -> list[ToolRun]:
        return [run for t in TOOLS if t.peer and (run := self.run(t.label)) is not None]

    def verdicts(self) -> dict[str, bool | None]:
        """Ours against the peers: nodes <= the peer with fewest (among those whose outputs
        match), time <= the faster, peak RSS <= the leaner, outputs equal. None: nothing to
        compare with."""
        ours, peers, best = self.run("ours"), self.peers(), self.row.best_peer()
        if ours is None:
            return dict.fromkeys(("nodes", "time", "rss", "outputs"), False)
        fastest = min((p.measurement.seconds for p in peers), default=None)
        leanest = min((p.measurement.peak_rss_bytes for p in peers), default=None)
        return {
            "nodes": None if best is None else ours.facts.nodes <= best.facts.nodes,
            "time": None if fastest is None else ours.measurement.seconds <= fastest,
            "rss": None if leanest is None else ours.measurement.peak_rss_bytes <= leanest,
            "outputs": ours.match,
        }

    def as_json(self) -> dict[str, Any]:
        return {"exporter": self.exporter, **self.row.as_json(), "verdicts": self.verdicts()}


def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summarize(rows: Sequence[SweepRow]) -> dict[str, Any]:
    """Counts of models where ours meets each target, and geometric-mean ratios ours/peer."""
    verdicts = [row.verdicts() for row in rows]
    counts = {
        key: {
            "met": sum(v[key] is True for v in verdicts),
            "of": sum(v[key] is not None for v in verdicts),
        }
        for key in ("nodes", "time", "rss", "outputs")
    }
    ratios: dict[str, dict[str, float | None]] = {}
    for tool in (t for t in TOOLS if t.peer):
        pairs = [(row.run("ours"), row.run(tool.label)) for row in rows]
        pairs = [(o, p) for o, p in pairs if o is not None and p is not None]
        ratios[tool.label] = {
            "nodes": _geomean([o.facts.nodes / p.facts.nodes for o, p in pairs]),
            "seconds": _geomean([o.measurement.seconds / p.measurement.seconds for o, p in pairs]),
            "peak_rss": _geomean(
                [o.measurement.peak_rss_bytes / p.measurement.peak_rss_bytes for o, p in pairs]
            ),
        }
    return {"models": len(rows), "targets": counts, "geomean_ours_over_peer": ratios}


# ------------------------------------------------------------------------------ output


def _cell(row: SweepRow, label: str, value: Callable[[ToolRun], float], fmt: str) -> str:
    """One tool's number, in bold where it is the best of the tools."""
    run = row.run(label)
    if run is None:
        return "[red]failed[/]"
    present = [value(r) for t in TOOLS if (r := row.run(t.label)) is not None]
    text = f"{value(run):{fmt}}"
    return f"[bold]{text}[/]" if value(run) == min(present) and len(present) > 1 else text


def _outputs(row: SweepRow) -> str:
    marks = []
    for tool in TOOLS:
        run = row.row.runs.get(tool.label)
        marks.append("[dim]–[/]" if run is None else "[green]✓[/]" if run.match else "[red]✗[/]")
    return "".join(marks)


def render(rows: Sequence[SweepRow], console: Console) -> None:
    """The results table, the op types where ours keeps more, the summary, any failure."""
    labels = [tool.label for tool in TOOLS]
    table = Table(title="Sweep: ours / OnnxSlim / onnxsim", show_lines=False)
    table.add_column("model")
    table.add_column("exp")
    table.add_column("nodes\norig", justify="right")
    groups = (
        ("nodes", lambda run: run.facts.nodes, ",d"),
        ("s", lambda run: run.measurement.seconds, ".2f"),
        ("MB", lambda run: run.measurement.peak_rss_bytes / MB, ",.0f"),
    )
    for unit, _, _ in groups:
        for label in labels:
            table.add_column(f"{unit}\n{label}", justify="right")
    table.add_column("out\n" + "".join(label[0] for label in labels))
    for row in rows:
        cells = [row.model, SHORT[row.exporter], f"{row.row.original.nodes:,d}"]
        for _, value, fmt in groups:
            cells += [_cell(row, label, value, fmt) for label in labels]
        cells.append(_outputs(row))
        table.add_row(*cells)
    console.print(table)
    console.print(
        "exp: ts = TorchScript (opset 17, no constant folding), dy = dynamo (opset 18). "
        "s: load + optimize + save; MB: peak RSS of the child. out: outputs equal the "
        "original's (ours, OnnxSlim, onnxsim). Bold: the best."
    )

    worse = Table(title="Where ours leaves more nodes than the peer with fewest")
    for column in ("model", "exp", "ours", "peer", "ours keeps more", "ours has fewer"):
        worse.add_column(column)
    for row in rows:
        ours, best = row.run("ours"), row.row.best_peer()
        if ours is not None and best is not None and ours.facts.nodes > best.facts.nodes:
            more, fewer = _op_diff(ours.facts.ops, best.facts.ops)
            worse.add_row(
                row.model,
                SHORT[row.exporter],
                f"{ours.facts.nodes:,d}",
                f"{best.facts.nodes:,d} {best.tool}",
                more,
                fewer,
            )
    if worse.row_count:
        console.print(worse)

    summary = summarize(rows)
    targets = summary["targets"]
    console.print(
        f"[bold]Summary[/] over {summary['models']} models: ours has <= nodes than the peer with "
        f"fewest on {targets['nodes']['met']}/{targets['nodes']['of']}, time <= the faster peer "
        f"on {targets['time']['met']}/{targets['time']['of']}, peak RSS <= the leaner peer on "
        f"{targets['rss']['met']}/{targets['rss']['of']}, outputs equal on "
        f"{targets['outputs']['met']}/{targets['outputs']['of']}."
    )
    for peer, ratio in summary["geomean_ours_over_peer"].items():
        parts = [f"{key} {value:.2f}x" for key, value in ratio.items() if value is not None]
        if parts:
            console.print(f"Geometric mean, ours / {peer}: " + ", ".join(parts))
    for row in rows:
        for label, run in row.row.runs.items():
            if run.error or run.mismatch:
                message = (
                    f"{row.model} ({SHORT[row.exporter]}) / {label}: {run.error or run.mismatch}"
                )
                console.print(message.splitlines()[0], style="red", markup=False, highlight=False)


# ------------------------------------------------------------------------------ command line


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Sweep onnxslim, OnnxSlim and onnxsim over architectures exported with "
        "TorchScript and dynamo: nodes, time, peak memory, equal outputs.",
    )
    parser.add_argument(
        "--models",
        type=_subset(SWEEP_MODELS),
        default=list(SWEEP_MODELS),
        help=f"comma-separated subset of {','.join(SWEEP_MODELS)} (default: all)",
    )
    parser.add_argument(
        "--exporters",
        type=_subset(list(EXPORTERS)),
        default=list(EXPORTERS),
        help="comma-separated subset of torchscript,dynamo (default: both)",
    )
    labels = [tool.label for tool in TOOLS]
    parser.add_argument(
        "--tools",
        type=_subset(labels),
        default=labels,
        help=f"comma-separated subset of {','.join(labels)} (default: all)",
    )
    parser.add_argument(
        "--as-initialized",
        action="store_true",
        help="export the weights as the frameworks initialize them (identity BatchNorms, zero "
        "biases: identical tensors that TorchScript shares between layers) instead of making "
        "them look trained; cached apart",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO / ".bench" / "sweep",
        help="folder for the exports, reused by later runs (default: .bench/sweep)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here")
    parser.add_argument(
        "--repeat", type=_positive_int, default=1, help="runs per case; the fastest is reported"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds allowed per export or measured run"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument(
        "--keep", action="store_true", help="keep every tool's output next to the exports"
    )
    parser.add_argument(
        "--peers-python",
        type=Path,
        default=REPO / ".venv-peers" / "bin" / "python",
        help="Python with onnxslim (PyPI), onnxsim and onnxruntime",
    )
    parser.add_argument(
        "--export-python",
        type=Path,
        default=REPO / ".venv-vision" / "bin" / "python",
        help="Python with torch, torchvision, transformers and onnxscript",
    )
    args = parser.parse_args(argv)
    args.tools = [tool for tool in TOOLS if tool.label in args.tools]
    needed = [("--export-python", args.export_python)]
    if any(tool.peer for tool in args.tools):
        needed.append(("--peers-python", args.peers_python))
    for option, python in needed:
        if not python.exists():
            parser.error(f"{option} {python} does not exist; run bench/setup_peers.sh first")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    console, progress, log = consoles(width=160)
    workdir, _ = work_folder(args.workdir, prefix="onnxslim-sweep-")
    rows: list[SweepRow] = []
    failures: list[str] = []
    for exporter in args.exporters:
        folder = workdir / (f"{exporter}-opset{EXPORTERS[exporter]}")
        folder = folder.with_name(folder.name + "-init") if args.as_initialized else folder
        exports = ensure_sweep_exports(
            args.models,
            folder,
            exporter=exporter,
            as_initialized=args.as_initialized,
            python=args.export_python,
            timeout=args.timeout,
            log=log,
        )
        for name, exported in exports.items():
            try:
                if isinstance(exported, ExportError):
                    raise exported
                row = bench_model(
                    exported,
                    args.tools,
                    folder / "out",
                    passes=None,
                    peers_python=args.peers_python,
                    repeat=args.repeat,
                    timeout=args.timeout,
                    seed=args.seed,
                    keep=args.keep,
                    log=lambda message, e=exporter: log(f"({SHORT[e]}) {message}"),
                )
                rows.append(SweepRow(name, exporter, row))
            except (ExportError, MeasurementError) as exc:  # no row for it; on to the next
                failures.append(str(exc))
                progress.print(str(exc), style="red", markup=False, highlight=False)
    if rows:
        render(rows, console)
    for failure in failures:
        console.print(failure.splitlines()[0], style="red", markup=False, highlight=False)
    if args.json:
        numbers = {"rows": [row.as_json() for row in rows], "summary": summarize(rows)}
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
