"""Rendering results for people (rich tables) and machines (JSON).

Library calls return plain dataclasses; only this module and the CLI know how they look.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onnxslim.api import OptimizeReport
from onnxslim.pipeline import Pass, PassTable
from onnxslim.stages import StageMeasurement
from onnxslim.summary import ModelDescription

__all__ = [
    "render_optimize",
    "render_validation",
    "render_description",
    "render_passes",
    "render_pass_table",
    "render_stages",
    "to_json",
    "passes_to_dict",
    "human_bytes",
]

_GOOD, _BAD = "[green]✓[/]", "[red]✗[/]"


def human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GB"


def _human_count(count: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def _change(before: float | None, after: float | None) -> str:
    if not before or after is None:
        return "-"
    ratio = (after - before) / before * 100
    colour = "green" if ratio < 0 else ("red" if ratio > 0 else "dim")
    return f"[{colour}]{ratio:+.1f}%[/]"


def render_optimize(report: OptimizeReport, console: Console) -> None:
    summary = Table(title="onnxslim optimize", title_justify="left")
    summary.add_column("")
    summary.add_column("before", justify="right")
    summary.add_column("after", justify="right")
    summary.add_column("change", justify="right")
    b, a = report.before, report.after
    summary.add_row("nodes", str(b.nodes), str(a.nodes), _change(b.nodes, a.nodes))
    summary.add_row(
        "initializers",
        str(b.initializers),
        str(a.initializers),
        _change(b.initializers, a.initializers),
    )
    summary.add_row(
        "weights",
        human_bytes(b.initializer_bytes),
        human_bytes(a.initializer_bytes),
        _change(b.initializer_bytes, a.initializer_bytes),
    )
    summary.add_row(
        "file size",
        human_bytes(b.file_bytes),
        human_bytes(a.file_bytes),
        _change(b.file_bytes, a.file_bytes),
    )
    summary.add_row(
        "time",
        f"load {report.load_seconds:.2f}s",
        f"passes {report.optimize_seconds:.2f}s, save {report.save_seconds:.2f}s",
        f"{report.total_seconds:.2f}s",
    )
    for record in report.passes:  # what lossy passes measured about their result
        for name, value in record.metrics.items():
            text = f"{value:.4f}" if isinstance(value, float) else escape(str(value))
            summary.add_row(escape(name), "", text, "")
    console.print(summary)

    rounds = max((r.round or 0 for r in report.passes), default=0)
    title = f"passes ({rounds} rounds to a fixed point)" if rounds else "passes"
    passes = Table(title=title, title_justify="left")
    for column in ("pass", "round", "nodes", "weights", "time"):
        passes.add_column(column, justify="left" if column == "pass" else "right", no_wrap=True)
    passes.add_column("notes")
    idle = [r for r in report.passes if not r.changed and not r.notes]
    for record in report.passes:
        if record in idle:
            continue
        delta = record.nodes_after - record.nodes_before
        byte_delta = record.initializer_bytes_after - record.initializer_bytes_before
        passes.add_row(
            escape(record.name),
            str(record.round or ""),
            f"{delta:+d}" if delta else "[dim]0[/]",
            (("+" if byte_delta > 0 else "-") + human_bytes(abs(byte_delta)))
            if byte_delta
            else "[dim]0[/]",
            f"{record.seconds * 1000:.0f} ms",
            escape("; ".join(record.notes)),
        )
    if idle:
        passes.add_row(
            f"[dim]{len(idle)} runs that changed nothing[/]",
            "",
            "",
            "",
            f"[dim]{sum(r.seconds for r in idle) * 1000:.0f} ms[/]",
            "",
        )
    console.print(passes)
    for record in report.passes:
        for table in record.tables:
            render_pass_table(table, console)
    if report.stages:
        render_stages(report.stages, console)
    if report.validation is not None:
        render_validation(report.validation, console)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    if report.output and report.written:
        console.print(f"wrote [bold]{escape(report.output)}[/]")


def render_stages(stages: list[StageMeasurement], console: Console) -> None:
    """The recipe's checkpoints, one row each; size, FLOPs and latency also as a ratio of the
    first row's."""
    batches = {stage.latency_batch for stage in stages}
    latency = f"latency, batch {batches.pop()}" if len(batches) == 1 else "latency"
    table = Table(title="stages", title_justify="left")
    for column in ("stage", "file", "params", "FLOPs", latency, "quality"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    first = stages[0]
    for stage in stages:
        if stage.accuracy is not None:
            quality = f"top-1 {stage.accuracy * 100:.2f}%"
        else:
            quality = "-" if stage.cosine is None else f"cosine {stage.cosine:.5f}"
        table.add_row(
            escape(stage.label),
            human_bytes(stage.file_bytes) + _ratio(stage.file_bytes, first.file_bytes),
            _human_count(stage.parameters),
            _human_count(stage.flops) + _ratio(stage.flops, first.flops),
            f"{stage.latency_ms:.3g} ms" + _ratio(stage.latency_ms, first.latency_ms),
            quality,
        )
    console.print(table)


def _ratio(value: float, base: float) -> str:
    return f" [dim]×{value / base:.2f}[/]" if base else ""


def render_pass_table(table: PassTable, console: Console) -> None:
    """A pass's own table; numbers right-aligned, floats to four significant digits."""
    rendered = Table(title=escape(table.title), title_justify="left")
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in table.rows)
        for i in range(len(table.columns))
    ]
    for column, is_numeric in zip(table.columns, numeric, strict=True):
        rendered.add_column(escape(column), justify="right" if is_numeric else "left")
    for row in table.rows:
        rendered.add_row(*(_cell(value) for value in row))
    console.print(rendered)


def _cell(value: Any) -> str:
    if value is None:
        return "[dim]-[/]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def _metric(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, fmt)


def render_validation(report, console: Console) -> None:
    tolerances = f"atol={report.atol:g} rtol={report.rtol:g}"
    if report.min_cosine is not None:
        tolerances += f" min_cosine={report.min_cosine:g}"
    table = Table(
        title=f"validation: {report.samples} sample(s), {tolerances}", title_justify="left"
    )
    table.add_column("provider", no_wrap=True)
    table.add_column("output", overflow="fold")
    for column in ("max abs", "mean abs", "cosine", "SQNR dB", "top-1"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("", overflow="fold")
    for row in report.outputs:
        table.add_row(
            row.provider,
            escape(row.name),
            _metric(row.max_abs, ".3g"),
            _metric(row.mean_abs, ".3g"),
            _metric(row.cosine, ".6f"),
            _metric(row.sqnr_db, ".1f"),
            _metric(row.top1_agreement, ".1%"),
            _GOOD if row.passed else f"{_BAD} {escape(row.reason or '')}",
        )
    console.print(table)
    verdict = "[green]outputs match[/]" if report.passed else "[red]outputs differ[/]"
    console.print(verdict)


def render_description(info: ModelDescription, console: Console) -> None:
    header = Table(title=escape(info.path or "model"), title_justify="left", show_header=False)
    header.add_column("")
    header.add_column("")
    header.add_row("IR version", str(info.ir_version))
    header.add_row("opsets", ", ".join(f"{d} {v}" for d, v in info.opsets.items()))
    header.add_row("producer", escape(info.producer or "-"))
    header.add_row("nodes", str(info.nodes))
    header.add_row(
        "parameters", f"{_human_count(info.parameters)} ({human_bytes(info.parameter_bytes)})"
    )
    header.add_row("size on disk", human_bytes(info.file_bytes))
    flops = ", ".join(f"{op} {_human_count(v)}" for op, v in info.flops_by_op.items())
    header.add_row("FLOPs (est.)", f"{_human_count(info.flops)}" + (f" ({flops})" if flops else ""))
    console.print(header)

    signature = Table(title="signature", title_justify="left")
    for column in ("", "name", "dtype", "shape"):
        signature.add_column(column)
    for kind, values in (("input", info.inputs), ("output", info.outputs)):
        for value in values:
            shape = (
                "?"
                if value.shape is None
                else "[" + ", ".join(str(d) if d is not None else "?" for d in value.shape) + "]"
            )
            signature.add_row(kind, escape(value.name), value.dtype, escape(shape))
    console.print(signature)

    ops = Table(title="operators", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in info.op_histogram.items():
        ops.add_row(escape(op), str(count))
    console.print(ops)
    for note in info.notes:
        console.print(f"[dim]{escape(note)}[/]")


def render_passes(passes: dict[str, type[Pass]], console: Console) -> None:
    table = Table(title="registered passes", title_justify="left", show_lines=True)
    table.add_column("pass", style="bold")
    table.add_column("lossless")
    table.add_column("options")
    table.add_column("description")
    for name, cls in passes.items():
        options = "\n".join(f"{o.name}: {o.type_name} = {o.default!r}" for o in cls.options())
        table.add_row(
            escape(name),
            _GOOD if cls.lossless else "no",
            escape(options or "-"),
            escape(cls.description()),
        )
    console.print(table)


def passes_to_dict(passes: dict[str, type[Pass]]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "lossless": cls.lossless,
            "description": cls.description(),
            "options": [
                {"name": o.name, "type": o.type_name, "default": o.default} for o in cls.options()
            ],
        }
        for name, cls in passes.items()
    ]


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _finite(value: Any) -> Any:
    """JSON has no infinity: write it as a string that still reads as one."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def to_json(data: Any) -> str:
    if hasattr(data, "to_dict"):
        data = data.to_dict()
    return json.dumps(_finite(json.loads(json.dumps(data, default=_json_default))), indent=2)
