"""Benchmark: onnxslim against OnnxSlim (PyPI ``onnxslim``) and onnx-simplifier (``onnxsim``).

For each model of the set (ResNet-50, MobileNetV2, BERT-base, GPT-2, ViT-base, exported from
torch with random weights by ``export_models.py``) the script measures in fresh child processes:

* the floor: ``onnx.load`` + ``onnx.save`` of the model, what any tool pays for I/O;
* ours: ``onnxslim.optimize(path)`` (default pipeline, or ``--passes SPEC``) + save;
* OnnxSlim: ``onnxslim.slim(input, output)`` and onnxsim: ``onnxsim.simplify`` + save, both
  with their defaults, run under the peers' own environment (PyPI ``onnxslim`` shares our
  import name).

Then it counts each result's nodes and runs the original and every result on onnxruntime with
the same random inputs. The targets, per model: ours has no more nodes than the better peer,
takes at most half the faster peer's time and at most twice the floor's, peaks at no more
memory than the leaner peer, writes a file no larger than the original, and its outputs equal
the original's within 1e-4 relative to the largest reference value.

``bench/setup_peers.sh`` makes the two environments the script needs besides ours:
``.venv-peers`` (the peers) and ``.venv-export`` (torch and transformers, for the export).
Run ``python bench/vs_peers.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _tool_calls
import numpy as np
import onnx
from _measure import Measurement, MeasurementError, measure_call
from _report import consoles, work_folder
from rich.console import Console
from rich.table import Table

from onnxslim.testing import run_outputs

__all__ = [
    "MODELS",
    "TOOLS",
    "Tool",
    "Exported",
    "ExportError",
    "ToolRun",
    "ModelRow",
    "ensure_exported",
    "make_feed",
    "compare_outputs",
    "bench_model",
    "render",
    "main",
]

REPO = Path(__file__).resolve().parent.parent
MB = 10**6
MODELS = ("resnet50", "mobilenetv2", "bert-base", "gpt2", "vit-base")
RTOL = 1e-4  # of the largest |reference| value of each output
PEER_TIME_TARGET = 0.5
FLOOR_TIME_TARGET = 2.0
CHECKS = ("nodes", "time/peer", "time/floor", "peak RSS", "outputs", "size")
# Hugging Face must never reach for the hub: the configs are built in.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class Tool:
    """One optimizer under test: what to call, under which interpreter, with what imported.

    ``preload`` is imported before the clock starts: what the tool imports whenever it is used.
    What it imports only while working (ours: onnxruntime, when a pass needs it) is paid inside
    the measurement, as a user pays it.
    """

    label: str
    function: Callable[..., str]
    preload: tuple[str, ...]
    peer: bool


TOOLS = (
    Tool("ours", _tool_calls.ours, ("onnx", "onnxslim", "onnxslim.passes"), peer=False),
    Tool("OnnxSlim", _tool_calls.onnxslim_pypi, ("onnx", "onnxruntime", "onnxslim"), peer=True),
    Tool("onnxsim", _tool_calls.onnxsim_pypi, ("onnx", "onnxruntime", "onnxsim"), peer=True),
)


# ------------------------------------------------------------------------------ graph facts


def _op_counts(graph: onnx.GraphProto) -> Counter[str]:
    """Op types of a graph and of every subgraph in it (If/Loop/Scan bodies)."""
    counts: Counter[str] = Counter()
    for node in graph.node:
        counts[node.op_type] += 1
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                counts.update(_op_counts(subgraph))
    return counts


@dataclass(frozen=True)
class GraphFacts:
    """What a model file holds, as the tables show it."""

    nodes: int
    ops: dict[str, int]
    size_bytes: int

    @classmethod
    def of(cls, path: Path) -> GraphFacts:
        model = onnx.load(str(path), load_external_data=False)
        ops = _op_counts(model.graph)
        size = sum(p.stat().st_size for p in _model_files(path))
        return cls(nodes=sum(ops.values()), ops=dict(ops), size_bytes=size)


def _model_files(path: Path) -> list[Path]:
    """The model file and an external data file next to it, where a tool wrote one."""
    return [p for p in (path, path.with_name(path.name + ".data")) if p.exists()]


# ------------------------------------------------------------------------------ exporting


class ExportError(RuntimeError):
    """torch could not export a model of the set."""


@dataclass(frozen=True)
class Exported:
    """An exported model on disk and its manifest (inputs and how to fill them)."""

    name: str
    path: Path
    manifest: dict[str, Any]
    facts: GraphFacts


def _export_folder(workdir: Path, exporter: str, opset: int) -> Path:
    return workdir / f"{exporter}-opset{opset}"


def _peer_env() -> dict[str, str]:
    """Our environment less PYTHONPATH: it may point at this project, which would shadow the
    peers' ``onnxslim`` or pull our packages into the export environment."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | OFFLINE


def _current(manifest_path: Path) -> bool:
    """Whether an export was made by today's ``export_models.py`` (the folder name already
    tells the exporter and opset)."""
    if not manifest_path.exists():
        return False
    script = REPO / "bench" / "export_models.py"
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    return json.loads(manifest_path.read_text()).get("script_sha256") == digest


def ensure_exported(
    name: str,
    folder: Path,
    *,
    exporter: str,
    opset: int,
    python: Path,
    log: Callable[[str], None],
    constant_folding: bool = True,
) -> Exported:
    """The exported model ``name`` from ``folder``, exported first if it is not there yet
    (keep exports with and without ``constant_folding`` in different folders)."""
    path, manifest_path = folder / f"{name}.onnx", folder / f"{name}.json"
    if not (path.exists() and _current(manifest_path)):
        log(f"[{name}] exporting with torch ({exporter}, opset {opset})")
        folder.mkdir(parents=True, exist_ok=True)
        command = [str(python), str(REPO / "bench" / "export_models.py"), "--out", str(folder)]
        command += ["--exporter", exporter, "--opset", str(opset), name]
        command += [] if constant_folding else ["--no-constant-folding"]
        done = subprocess.run(command, env=_peer_env(), capture_output=True, text=True)
        if done.returncode != 0:
            raise ExportError(f"{name}: export failed:\n{done.stderr[-4000:]}")
    manifest = json.loads(manifest_path.read_text())
    return Exported(name, path, manifest, GraphFacts.of(path))


# ------------------------------------------------------------------------------ outputs


def make_feed(inputs: Sequence[dict[str, Any]], seed: int) -> dict[str, np.ndarray]:
    """Random inputs as the manifest describes them: ids within the vocabulary, padding masks
    (ones, then zeros in all rows but the first), standard-normal floats."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in inputs:
        shape = tuple(spec["shape"])
        if spec["fill"] == "ids":
            feed[spec["name"]] = rng.integers(0, spec["high"], shape, dtype=np.int64)
        elif spec["fill"] == "mask":
            mask = np.zeros(shape, np.int64)
            lengths = rng.integers(shape[1] // 2, shape[1] + 1, shape[0])
            lengths[0] = shape[1]
            for row, length in enumerate(lengths):
                mask[row, :length] = 1
            feed[spec["name"]] = mask
        else:
            feed[spec["name"]] = rng.standard_normal(shape, dtype=np.float32)
    return feed


def compare_outputs(
    expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]
) -> tuple[bool, float, str]:
    """(match, largest relative difference, why not) of outputs by name.

    The difference of each output is relative to its largest |reference| value, so a value near
    zero in a large-valued output does not count as a large relative error.
    """
    if list(expected) != list(actual):
        return False, float("inf"), f"outputs {list(actual)} != {list(expected)}"
    worst = 0.0
    for name, reference in expected.items():
        value = actual[name]
        if value.shape != reference.shape:
            return False, float("inf"), f"{name}: shape {value.shape} != {reference.shape}"
        if value.size == 0:
            continue
        scale = float(np.abs(reference).max()) or 1.0
        difference = float(np.abs(value.astype(np.float64) - reference).max()) / scale
        if not np.isfinite(difference):
            return False, float("inf"), f"{name}: the difference is not finite (NaN or inf)"
        worst = max(worst, difference)
    return worst <= RTOL, worst, "" if worst <= RTOL else f"max relative difference {worst:.1e}"


# ------------------------------------------------------------------------------ one model


@dataclass
class ToolRun:
    """One tool on one model: its measurement (None if it failed) and its result's facts."""

    tool: str
    measurement: Measurement | None = None
    error: str = ""
    facts: GraphFacts | None = None
    match: bool = False
    max_rel_diff: float | None = None
    mismatch: str = ""

    @property
    def ok(self) -> bool:
        return self.measurement is not None and self.facts is not None

    def as_json(self) -> dict[str, Any]:
        measured = self.measurement
        return {
            "tool": self.tool,
            "version": measured.value if measured else None,
            "error": self.error or None,
            "seconds": measured.seconds if measured else None,
            "peak_rss_bytes": measured.peak_rss_bytes if measured else None,
            "baseline_rss_bytes": measured.baseline_rss_bytes if measured else None,
            "nodes": self.facts.nodes if self.facts else None,
            "size_bytes": self.facts.size_bytes if self.facts else None,
            "ops": self.facts.ops if self.facts else None,
            "outputs_match": self.match,
            "max_rel_diff": self.max_rel_diff,
            "mismatch": self.mismatch or None,
        }


@dataclass(frozen=True)
class Check:
    """One target on one model: met or not, and the numbers that decided it."""

    name: str
    ok: bool | None  # None: nothing to compare with (no peer ran)
    detail: str


@dataclass
class ModelRow:
    """Everything measured on one model."""

    model: str
    original: GraphFacts
    floor: Measurement
    runs: dict[str, ToolRun] = field(default_factory=dict)

    def _peers(self) -> list[ToolRun]:
        return [
            run for tool in TOOLS if tool.peer and (run := self.runs.get(tool.label)) and run.ok
        ]

    def best_peer(self) -> ToolRun | None:
        """The peer with the fewest nodes among those whose outputs match (the one to beat)."""
        matching = [run for run in self._peers() if run.match]
        return min(matching, key=lambda run: run.facts.nodes, default=None)

    def checks(self) -> list[Check]:
        """The targets in a fixed order (the targets table's columns)."""
        ours = self.runs.get("ours")
        if ours is None or not ours.ok:
            detail = "ours not run" if ours is None else "ours failed"
            return [Check(name, None if ours is None else False, detail) for name in CHECKS]
        seconds, peak = ours.measurement.seconds, ours.measurement.peak_rss_bytes
        peers, best = self._peers(), self.best_peer()
        fastest = min(peers, key=lambda run: run.measurement.seconds, default=None)
        lean = min(peers, key=lambda run: run.measurement.peak_rss_bytes, default=None)
        none = "no peer result"
        floor_limit = FLOOR_TIME_TARGET * self.floor.seconds
        size, before = ours.facts.size_bytes, self.original.size_bytes
        return [
            Check("nodes", None, none)
            if best is None
            else Check(
                "nodes",
                ours.facts.nodes <= best.facts.nodes,
                f"{ours.facts.nodes:,} vs {best.facts.nodes:,} ({best.tool})",
            ),
            Check("time/peer", None, none)
            if fastest is None
            else Check(
                "time/peer",
                seconds <= PEER_TIME_TARGET * fastest.measurement.seconds,
                f"{seconds:.2f} vs {PEER_TIME_TARGET * fastest.measurement.seconds:.2f} s "
                f"({PEER_TIME_TARGET:g}x {fastest.tool})",
            ),
            Check(
                "time/floor",
                seconds <= floor_limit,
                f"{seconds:.2f} vs {floor_limit:.2f} s ({FLOOR_TIME_TARGET:g}x floor)",
            ),
            Check("peak RSS", None, none)
            if lean is None
            else Check(
                "peak RSS",
                peak <= lean.measurement.peak_rss_bytes,
                f"{peak / MB:,.0f} vs {lean.measurement.peak_rss_bytes / MB:,.0f} MB ({lean.tool})",
            ),
            Check(
                "outputs",
                ours.match,
                ours.mismatch if ours.max_rel_diff is None else _relative(ours.max_rel_diff),
            ),
            Check("size", size <= before, f"{size - before:+,} bytes"),
        ]

    @property
    def ok(self) -> bool:
        return all(check.ok is not False for check in self.checks())

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "original": {
                "nodes": self.original.nodes,
                "size_bytes": self.original.size_bytes,
                "ops": self.original.ops,
            },
            "floor": {
                "seconds": self.floor.seconds,
                "peak_rss_bytes": self.floor.peak_rss_bytes,
                "baseline_rss_bytes": self.floor.baseline_rss_bytes,
            },
            "tools": {label: run.as_json() for label, run in self.runs.items()},
            "targets": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks()},
            "ok": self.ok,
        }


def _fastest(runs: list[Measurement]) -> Measurement:
    """The fastest run's time with the highest peak of all runs (peaks vary little; be safe)."""
    fastest = min(runs, key=lambda m: m.seconds)
    peak = max(runs, key=lambda m: m.peak_rss_bytes)
    return Measurement(fastest.seconds, peak.peak_rss_bytes, peak.baseline_rss_bytes, fastest.value)


def _measure(function: Callable[..., str], *args: Any, repeat: int, **options: Any) -> Measurement:
    return _fastest([measure_call(function, *args, **options) for _ in range(repeat)])


def _remove(path: Path) -> None:
    for file in _model_files(path):
        file.unlink()


def bench_model(
    exported: Exported,
    tools: Sequence[Tool],
    out: Path,
    *,
    passes: str | None,
    peers_python: Path,
    repeat: int,
    timeout: float,
    seed: int,
    keep: bool,
    log: Callable[[str], None],
) -> ModelRow:
    """Measure the floor and each tool on one exported model, then check every result."""
    name = exported.name
    out.mkdir(parents=True, exist_ok=True)
    floor_path = out / f"{name}.floor.onnx"
    log(f"[{name}] floor: onnx.load + onnx.save")
    floor = _measure(
        _tool_calls.floor,
        str(exported.path),
        str(floor_path),
        repeat=repeat,
        preload=("onnx",),
        timeout=timeout,
    )
    _remove(floor_path)
    row = ModelRow(name, exported.facts, floor)
    feed = make_feed(exported.manifest["inputs"], seed)
    log(f"[{name}] reference outputs on onnxruntime")
    try:
        expected = run_outputs(exported.path, feed)
    except Exception as exc:  # onnxruntime's own untyped errors
        raise ExportError(f"{name}: the export does not run: {str(exc).splitlines()[0]}") from exc
    for tool in tools:
        result = out / f"{name}.{tool.label}.onnx"
        run = row.runs[tool.label] = ToolRun(tool.label)
        log(f"[{name}] {tool.label}")
        extra = () if tool.peer else (passes,)
        interpreter = {"python": str(peers_python), "env": _peer_env()} if tool.peer else {}
        try:
            run.measurement = _measure(
                tool.function,
                str(exported.path),
                str(result),
                *extra,
                repeat=repeat,
                preload=tool.preload,
                timeout=timeout,
                **interpreter,
            )
            run.facts = GraphFacts.of(result)
            run.match, run.max_rel_diff, run.mismatch = compare_outputs(
                expected, run_outputs(result, feed)
            )
        except MeasurementError as exc:
            run.error = str(exc)
        except Exception as exc:  # an unreadable result, or onnxruntime's untyped errors
            run.mismatch = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        finally:
            if not keep and result.parent.exists():
                _remove(result)
    return row


# ------------------------------------------------------------------------------ output


def _mark(ok: bool | None) -> str:
    return {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]–[/]"}[ok]


def _cells(
    row: ModelRow, tools: Sequence[Tool], value: Callable[[ToolRun], float], fmt: str
) -> list[str]:
    """One group of columns, the lowest value in bold: who wins at a glance."""
    values = {
        tool.label: value(run) if (run := row.runs[tool.label]).ok else None for tool in tools
    }
    present = [v for v in values.values() if v is not None]
    best = min(present, default=None)
    cells = []
    for tool in tools:
        v = values[tool.label]
        if v is None:
            cells.append("[red]failed[/]")
        else:
            cells.append(f"[bold]{v:{fmt}}[/]" if v == best and len(present) > 1 else f"{v:{fmt}}")
    return cells


def _relative(difference: float) -> str:
    return "0 (exact)" if difference == 0 else f"{difference:.1e}"


def _match_cell(run: ToolRun) -> str:
    if not run.ok:
        return "[red]failed[/]"
    if run.max_rel_diff is None:
        return f"{_mark(False)} {run.mismatch}"
    return f"{_mark(run.match)} {_relative(run.max_rel_diff)}"


def _op_diff(ours: dict[str, int], peer: dict[str, int]) -> tuple[str, str]:
    """Op types ours keeps more / fewer of than the peer, largest difference first."""
    delta = Counter(ours)
    delta.subtract(peer)
    ranked = sorted(delta.items(), key=lambda item: (-abs(item[1]), item[0]))
    more = ", ".join(f"{op} +{n}" for op, n in ranked if n > 0)
    fewer = ", ".join(f"{op} {n}" for op, n in ranked if n < 0)
    return more or "–", fewer or "–"


def render(rows: Sequence[ModelRow], tools: Sequence[Tool], console: Console) -> None:
    """The results table, the targets table, the op-type differences, then any failure."""
    versions = {
        label: run.measurement.value
        for row in rows
        for label, run in row.runs.items()
        if run.measurement
    }
    title = ", ".join(f"{label} {version}" for label, version in versions.items())
    table = Table(title=f"Model set vs. peers ({title})")
    table.add_column("model")
    table.add_column("nodes\norig", justify="right")
    groups = (
        ("nodes", lambda run: run.facts.nodes, ",d"),
        ("s", lambda run: run.measurement.seconds, ".2f"),
        ("peak MB", lambda run: run.measurement.peak_rss_bytes / MB, ",.0f"),
    )
    for unit, _, _ in groups:
        if unit != "nodes":
            table.add_column(f"{unit}\nfloor", justify="right")
        for tool in tools:
            table.add_column(f"{unit}\n{tool.label}", justify="right")
    for tool in tools:
        table.add_column(f"outputs\n{tool.label}")
    for row in rows:
        cells = [row.model, f"{row.original.nodes:,d}"]
        cells += _cells(row, tools, *groups[0][1:])
        cells.append(f"{row.floor.seconds:.2f}")
        cells += _cells(row, tools, *groups[1][1:])
        cells.append(f"{row.floor.peak_rss_bytes / MB:,.0f}")
        cells += _cells(row, tools, *groups[2][1:])
        cells += [_match_cell(row.runs[tool.label]) for tool in tools]
        table.add_row(*cells)
    console.print(table)
    console.print(
        "s: wall time of load + optimize + save (interpreter start-up and the tool's own imports "
        "excluded); peak MB: the child's peak RSS while it worked, interpreter and imports "
        f"included; outputs: max |diff| / max |original| on onnxruntime, must be <= {RTOL:g}. "
        "Bold: the best of the tools."
    )

    targets = Table(title="Targets for ours")
    targets.add_column("model")
    for name in CHECKS:
        targets.add_column(name)
    for row in rows:
        targets.add_row(row.model, *(f"{_mark(c.ok)} {c.detail}" for c in row.checks()))
    console.print(targets)
    console.print(
        f"nodes <= the matching peer with fewest; time/peer <= {PEER_TIME_TARGET:g}x the faster "
        f"peer; time/floor <= {FLOOR_TIME_TARGET:g}x load + save; peak RSS <= the leaner peer; "
        "outputs equal; size: file no larger than the original."
    )

    diff = Table(title="Op types: ours minus the peer with fewest nodes")
    for column in ("model", "peer", "ours keeps more", "ours has fewer"):
        diff.add_column(column)
    for row in rows:
        ours, best = row.runs.get("ours"), row.best_peer()
        if ours is not None and ours.ok and best is not None:
            diff.add_row(row.model, best.tool, *_op_diff(ours.facts.ops, best.facts.ops))
    if diff.row_count:
        console.print(diff)

    for row in rows:
        for label, run in row.runs.items():
            if run.error or run.mismatch:
                message = f"{row.model} / {label}: {run.error or run.mismatch}"
                console.print(message, style="red", markup=False, highlight=False)


# ------------------------------------------------------------------------------ command line


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return int(text)


def _subset(choices: Sequence[str]) -> Callable[[str], list[str]]:
    by_key = {choice.lower(): choice for choice in choices}

    def parse(text: str) -> list[str]:
        chosen = [part.strip().lower() for part in text.split(",") if part.strip()]
        unknown = [item for item in chosen if item not in by_key]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"unknown '{','.join(unknown)}'; choose from {','.join(choices)}"
                if unknown
                else "name at least one"
            )
        return [by_key[item] for item in chosen]

    return parse


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare onnxslim with OnnxSlim (PyPI onnxslim) and onnx-simplifier "
        "(onnxsim) on exported models: nodes, time, peak memory, equal outputs.",
    )
    parser.add_argument(
        "--models",
        type=_subset(MODELS),
        default=list(MODELS),
        help=f"comma-separated subset of {','.join(MODELS)} (default: all)",
    )
    tool_labels = [tool.label for tool in TOOLS]
    parser.add_argument(
        "--tools",
        type=_subset(tool_labels),
        default=tool_labels,
        help=f"comma-separated subset of {','.join(tool_labels)} (default: all)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="folder for the models; exports there are reused by later runs "
        "(default: a new temporary folder)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder and every tool's output"
    )
    parser.add_argument(
        "--passes", metavar="SPEC", help="our pipeline spec (default: the default pipeline)"
    )
    parser.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="torch.onnx.export(dynamo=False) or the torch.export-based exporter",
    )
    parser.add_argument(
        "--opset",
        type=int,
        help="opset to export with (default: 17 for torchscript; 18 for dynamo, whose "
        "conversion down to 17 writes invalid Split nodes in GPT-2 with torch 2.13)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here")
    parser.add_argument(
        "--repeat", type=_positive_int, default=1, help="runs per case; the fastest is reported"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds allowed per measured run"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument(
        "--peers-python",
        type=Path,
        default=REPO / ".venv-peers" / "bin" / "python",
        help="Python with onnxslim (PyPI), onnxsim and onnxruntime",
    )
    parser.add_argument(
        "--export-python",
        type=Path,
        default=REPO / ".venv-export" / "bin" / "python",
        help="Python with torch and transformers",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if any target is missed"
    )
    args = parser.parse_args(argv)
    args.tools = [tool for tool in TOOLS if tool.label in args.tools]
    if args.opset is None:
        args.opset = 18 if args.exporter == "dynamo" else 17
    needed = [("--export-python", args.export_python)]
    if any(tool.peer for tool in args.tools):
        needed.append(("--peers-python", args.peers_python))
    for option, python in needed:
        if not python.exists():
            parser.error(f"{option} {python} does not exist; run bench/setup_peers.sh first")
    if args.passes:  # fail before minutes of exporting, not in the first child
        from onnxslim import OnnxSlimError, parse_pipeline

        try:
            parse_pipeline(args.passes)
        except OnnxSlimError as exc:
            parser.error(str(exc))
    return args


def _bench_one(
    name: str, args: argparse.Namespace, workdir: Path, log: Callable[[str], None]
) -> ModelRow:
    exported = ensure_exported(
        name,
        _export_folder(workdir, args.exporter, args.opset),
        exporter=args.exporter,
        opset=args.opset,
        python=args.export_python,
        log=log,
    )
    return bench_model(
        exported,
        args.tools,
        workdir / "out",
        passes=args.passes,
        peers_python=args.peers_python,
        repeat=args.repeat,
        timeout=args.timeout,
        seed=args.seed,
        keep=args.keep,
        log=log,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    console, progress, log = consoles(width=200)
    workdir, owned = work_folder(args.workdir, prefix="onnxslim-peers-")
    rows: list[ModelRow] = []
    failures: list[str] = []
    try:
        for name in args.models:
            try:
                rows.append(_bench_one(name, args, workdir, log))
            except (ExportError, MeasurementError) as exc:  # no row for it; on to the next
                failures.append(str(exc))
                progress.print(str(exc), style="red", markup=False, highlight=False)
    finally:
        if owned and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"models kept in {workdir}")
    if rows:
        render(rows, args.tools, console)
    for failure in failures:
        console.print(failure.splitlines()[0], style="red", markup=False, highlight=False)
    if args.json:
        args.json.write_text(json.dumps([row.as_json() for row in rows], indent=2) + "\n")
    return 1 if failures or (args.check and not all(row.ok for row in rows)) else 0


if __name__ == "__main__":
    sys.exit(main())
