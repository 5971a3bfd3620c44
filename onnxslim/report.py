"""Rendering results for people (rich tables) and machines (JSON).

Library calls return plain dataclasses; only this module and the CLI know how they look.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

from onnxslim.api import OptimizeReport
from onnxslim.pipeline import Pass, PassRecord, PassTable
from onnxslim.stages import StageMeasurement
from onnxslim.summary import ModelDescription

__all__ = [
    "render_optimize",
    "render_validation",
    "render_description",
    "render_passes",
    "render_pass_details",
    "plain_text",
    "option_type",
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


def render_optimize(
    report: OptimizeReport,
    console: Console,
    *,
    title: str = "onnxslim optimize",
    shown: Sequence[str] = (),
    wording: Callable[[str], str] | None = None,
) -> None:
    """The report of a command that rewrites a model, headed ``title``.

    Tables first, each narrow enough for 80 columns; then the passes' notes as lines below
    (``wording`` puts them in the command's terms; notes already ``shown`` as warnings are
    not repeated).
    """
    wording = wording or (lambda text: text)
    if not report.changed:
        console.print(
            "nothing to optimize: no pass changed the model"
            + (", written unchanged" if report.written else ""),
            highlight=False,
        )
    console.print(_summary_table(report, title))
    console.print(_passes_table(report.passes))
    for record in report.passes:
        for table in record.tables:
            render_pass_table(table, console)
    if report.stages:
        render_stages(report.stages, console)
    if report.validation is not None:
        render_validation(report.validation, console)
    for record in report.passes:
        for note in record.notes:
            if note not in shown:
                name = _base_name(record.name)
                console.print(f"[yellow]note[/] ({escape(name)}): {escape(wording(note))}")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(wording(note))}")
    if report.output and report.written:
        console.print(f"wrote [bold]{escape(report.output)}[/]", highlight=False)


def _base_name(label: str) -> str:
    return label.split("(", 1)[0]


def _summary_table(report: OptimizeReport, title: str) -> Table:
    summary = Table(title=escape(title), title_justify="left")
    summary.add_column("")
    summary.add_column("before", justify="right")
    summary.add_column("after", justify="right")
    summary.add_column("change", justify="right")
    b, a = report.before, report.after
    rows = [
        ("nodes", b.nodes, a.nodes, str),
        ("initializers", b.initializers, a.initializers, str),
        ("weights", b.initializer_bytes, a.initializer_bytes, human_bytes),
        ("file size", b.file_bytes, a.file_bytes, human_bytes),
    ]
    for label, before, after, text in rows:
        summary.add_row(label, text(before), text(after), _change(before, after))
    for label, before, after in (
        ("opset", b.opset, a.opset),
        ("IR version", b.ir_version, a.ir_version),
    ):
        if before != after:
            summary.add_row(label, str(before), str(after), "")
    for name, metrics in report.metrics.items():
        for metric, value in metrics.items():
            summary.add_row(
                escape(metric.replace("_", " ")),
                "",
                escape(value) if isinstance(value, str) else f"{value:.6g}",
                f"[dim]{escape(name)}[/]",
            )
    summary.add_row(
        "time",
        f"load {report.load_seconds:.2f}s",
        f"passes {report.optimize_seconds:.2f}s, save {report.save_seconds:.2f}s",
        f"{report.total_seconds:.2f}s",
    )
    return summary


def _passes_table(records: Sequence[PassRecord]) -> Table:
    rounds = max((r.round or 0 for r in records), default=0)
    title = f"passes ({rounds} rounds to a fixed point)" if rounds else "passes"
    passes = Table(title=title, title_justify="left")
    passes.add_column("pass", overflow="fold")
    for column in ("round", "nodes", "weights", "time"):
        passes.add_column(column, justify="right", no_wrap=True)
    idle = [r for r in records if not r.changed and not r.notes]
    for record in records:
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
        )
    if idle:
        passes.add_row(
            f"[dim]{len(idle)} runs that changed nothing[/]",
            "",
            "",
            "",
            f"[dim]{sum(r.seconds for r in idle) * 1000:.0f} ms[/]",
        )
    return passes


def render_stages(stages: list[StageMeasurement], console: Console) -> None:
    """The recipe's checkpoints, one row each; size, FLOPs and latency also as a ratio of the
    first row's. Columns are named by their unit, so that the rows fit 80 columns."""
    batches = {stage.latency_batch for stage in stages}
    title = f"stages (latency at batch {batches.pop()})" if len(batches) == 1 else "stages"
    accuracy = all(stage.accuracy is not None for stage in stages)
    cosine = all(stage.accuracy is None and stage.cosine is not None for stage in stages)
    quality = "top-1" if accuracy else ("cosine" if cosine else "quality")
    table = Table(title=title, title_justify="left", pad_edge=False)
    table.add_column("stage", overflow="fold")
    for column in ("file", "params", "FLOPs", "latency ms", quality):
        table.add_column(column, justify="right", no_wrap=True)
    first = stages[0]
    for stage in stages:
        table.add_row(
            escape(stage.label),
            human_bytes(stage.file_bytes) + _ratio(stage.file_bytes, first.file_bytes),
            _human_count(stage.parameters),
            _human_count(stage.flops) + _ratio(stage.flops, first.flops),
            f"{stage.latency_ms:.3g}" + _ratio(stage.latency_ms, first.latency_ms),
            _stage_quality(stage, prefixed=not (accuracy or cosine)),
        )
    console.print(table)


def _stage_quality(stage: StageMeasurement, prefixed: bool) -> str:
    if stage.accuracy is not None:
        return ("top-1 " if prefixed else "") + f"{stage.accuracy * 100:.2f}%"
    if stage.cosine is not None:
        return ("cosine " if prefixed else "") + f"{stage.cosine:.5f}"
    return "-"


def _ratio(value: float, base: float) -> str:
    return f" [dim]×{value / base:.2f}[/]" if base else ""


def render_pass_table(table: PassTable, console: Console) -> None:
    """A pass's own table; numbers right-aligned (floats to four significant digits) and never
    wrapped, text folded where 80 columns are not enough."""
    rendered = Table(title=escape(table.title), title_justify="left")
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in table.rows)
        for i in range(len(table.columns))
    ]
    for column, is_numeric in zip(table.columns, numeric, strict=True):
        if is_numeric:
            rendered.add_column(escape(column), justify="right", no_wrap=True)
        else:
            rendered.add_column(escape(column), overflow="fold")
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
    """One row per output (and provider, when there are several); why an output failed is
    printed below the table, where it has the whole width."""
    several = len(report.providers) > 1
    table = Table(title=escape(_validation_title(report)), title_justify="left")
    if several:
        table.add_column("provider", no_wrap=True)
    table.add_column("output", overflow="fold")
    for column in ("max abs", "mean abs", "cosine", "SQNR dB", "top-1"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for row in report.outputs:
        cells = [
            escape(row.name),
            _metric(row.max_abs, ".3g"),
            _metric(row.mean_abs, ".3g"),
            _metric(row.cosine, ".6f"),
            _metric(row.sqnr_db, ".1f"),
            _metric(row.top1_agreement, ".1%"),
            _GOOD if row.passed else _BAD,
        ]
        table.add_row(*([row.provider] if several else []), *cells)
    console.print(table)
    for row in report.failures():
        where = f"{row.name} on {row.provider}" if several else row.name
        console.print(f"{_BAD} {escape(where)}: {escape(row.reason or 'failed')}")
    verdict = "[green]outputs match[/]" if report.passed else "[red]outputs differ[/]"
    console.print(verdict)


def _validation_title(report) -> str:
    source = getattr(report, "inputs", "synthesized")
    data = f"{report.samples} sample(s)" + (
        " synthesized" if source == "synthesized" else f" from {source}"
    )
    if math.isinf(report.atol):
        tolerances = "element-wise tolerance off"
    else:
        tolerances = f"atol={report.atol:g} rtol={report.rtol:g}"
    if report.min_cosine is not None:
        tolerances += f", min_cosine={report.min_cosine:g}"
    providers = "" if len(report.providers) > 1 else f" on {report.providers[0]}"
    return f"validation{providers}: {data}, {tolerances}"


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
    symbolic = sorted({d for v in info.inputs for d in v.shape or () if isinstance(d, str)})
    for note in info.notes:
        if "symbolic" in note and symbolic:
            example = next(v for v in info.inputs if any(isinstance(d, str) for d in v.shape))
            note = (
                f"FLOPs count the symbolic dims {', '.join(symbolic)} as 1; "
                f"set them with --input-shape {example.name}:"
                + ",".join("N" if not isinstance(d, int) else str(d) for d in example.shape)
            )
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def render_passes(passes: dict[str, type[Pass]], console: Console) -> None:
    """One line per pass: its name and the gist of its description."""
    table = Table(title="registered passes", title_justify="left", box=None, show_header=False)
    table.add_column("pass", style="bold", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("description")
    width = max(30, console.width - max(map(len, passes), default=0) - 11)
    for name, cls in passes.items():
        kind = "" if cls.lossless else "[yellow]lossy[/]"
        table.add_row(escape(name), kind, escape(_gist(plain_text(cls.description()), width)))
    console.print(table)
    console.print("[dim]onnxslim passes NAME shows a pass's options; --long shows every pass's.[/]")


def render_pass_details(passes: dict[str, type[Pass]], console: Console) -> None:
    """Each pass's description and options in full, as indented text (no table to squeeze)."""
    for name, cls in passes.items():
        kind = "lossless" if cls.lossless else "lossy"
        console.print(f"[bold]{escape(name)}[/] ({kind})", highlight=False)
        console.print(Padding(escape(plain_text(cls.description())), (0, 0, 0, 2)))
        for option in cls.options():
            console.print(
                Padding(
                    f"[bold]{escape(option.name)}[/]: {escape(option_type(option.annotation))}"
                    f" = {escape(_default_text(option.default))}",
                    (0, 0, 0, 2),
                ),
                highlight=False,
            )
            if option.help:
                console.print(Padding(escape(plain_text(option.help)), (0, 0, 0, 6)))
        console.print()


def plain_text(text: str) -> str:
    """Docstring text for a terminal: reStructuredText literals (````x````) as plain x."""
    return " ".join(re.sub(r"``?([^`]+?)``?", r"\1", text).split())


def option_type(annotation: Any) -> str:
    """An option's type as a user reads it: ``int8|uint8``, ``float or none``, ``list of str``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        kinds = [option_type(a) for a in args if a is not type(None)]
        return " or ".join(kinds + (["none"] if type(None) in args else []))
    if origin in (list, tuple):
        return f"list of {option_type(args[0])}" if args else "list"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(default: Any) -> str:
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list | tuple):
        return "|".join(map(str, default)) or "(none)"
    return "none" if default is None else str(default)


def _gist(description: str, width: int) -> str:
    """The first sentence, cut at the latest clause boundary that fits ``width`` (and keeps
    at least half of it); a sentence without one is kept whole, to wrap."""
    sentence = re.split(r"(?<!e\.g)(?<!i\.e)\.(?:\s|$)", description, maxsplit=1)[0]
    if len(sentence) <= width:
        return sentence
    cuts = [
        m.start()
        for m in re.finditer(r"[:;,] | \(| with | that ", sentence)
        if width // 2 <= m.start() <= width
    ]
    return sentence[: cuts[-1]] if cuts else sentence


def passes_to_dict(passes: dict[str, type[Pass]]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "lossless": cls.lossless,
            "description": plain_text(cls.description()),
            "options": [
                {
                    "name": o.name,
                    "type": option_type(o.annotation),
                    "default": o.default,
                    "help": plain_text(o.help),
                }
                for o in cls.options()
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
