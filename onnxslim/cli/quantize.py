"""``onnxslim quantize``: the quantize pass as a command.

It builds a ``quantize(...)`` spec and hands it to :func:`onnxslim.cli.shell.run_optimize`, so
it shares the optimize report (with the per-layer SQNR table), ``--json``, ``--quiet``,
``--debug`` and the exit codes. The pass measures the result on held-out samples and holds it
to ``--min-cosine``/``--min-top1`` (exit 1, nothing written, when it cannot); a model that is
already quantized is refused (exit 2), and a model with nothing to quantize exits 4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxslim.cli.shell import (
    DebugOption,
    JsonOption,
    QuietOption,
    app,
    guarded,
    pass_spec,
    run_spec,
)

__all__ = ["quantize"]


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="The ONNX model to quantize (never modified).")],
    calib: Annotated[
        Path | None,
        typer.Option("--calib", help="Calibration data: a .npz or a folder of .npy/.npz files."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Output path (default: MODEL.<weights>.onnx)."),
    ] = None,
    weights: Annotated[
        str, typer.Option("--weights", help="Weight type: int8, uint8, int4 or int16.")
    ] = "int8",
    activations: Annotated[
        str,
        typer.Option(
            "--activations",
            help="auto (dynamic for transformers, uint8 otherwise), dynamic (ranges per input "
            "at run time), uint8, int8, int16 (calibrated) or none (weight-only).",
        ),
    ] = "auto",
    calibration: Annotated[
        str, typer.Option("--calibration", help="Range method: minmax, percentile or entropy.")
    ] = "minmax",
    percentile: Annotated[
        float | None, typer.Option("--percentile", help="Percent of values kept (default: 99.99).")
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", min=1, help="Calibration samples (default: 128).")
    ] = None,
    ops: Annotated[
        list[str], typer.Option("--op", help="Op type to quantize (repeatable; default: all).")
    ] = [],  # noqa: B006
    exclude: Annotated[
        list[str], typer.Option("--exclude", help="Node or output name pattern to keep float.")
    ] = [],  # noqa: B006
    per_channel: Annotated[
        bool, typer.Option("--per-channel/--per-tensor", help="Weight scales per channel.")
    ] = True,
    reduce_range: Annotated[
        bool, typer.Option("--reduce-range", help="7-bit weights (CPUs without VNNI).")
    ] = False,
    block_size: Annotated[
        int | None, typer.Option("--block-size", help="int4 block size (default: 32).")
    ] = None,
    smooth: Annotated[
        float | None,
        typer.Option("--smooth", help="SmoothQuant alpha: move activation outliers into weights."),
    ] = None,
    min_cosine: Annotated[
        float | None,
        typer.Option(
            "--min-cosine",
            help="Floor: cosine with the float model on held-out samples (0.99; 0.90 for int4).",
        ),
    ] = None,
    min_top1: Annotated[
        float | None,
        typer.Option("--min-top1", help="Floor for classifiers: top-1 agreement (0.98)."),
    ] = None,
    guard: Annotated[
        bool,
        typer.Option("--guard/--no-guard", help="Keep sensitive layers float to meet the floor."),
    ] = True,
    requantize: Annotated[
        bool, typer.Option("--requantize", help="Quantize what is float in a quantized model.")
    ] = False,
    prepare: Annotated[
        bool,
        typer.Option("--prepare/--no-prepare", help="Run the lossless pipeline first."),
    ] = True,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Quantize MODEL to integers with Q/DQ pairs that onnxruntime runs as integer kernels."""

    def action() -> int:
        spec = pass_spec(
            "quantize",
            weights=weights,
            activations=activations,
            calibration=calibration,
            percentile=percentile,
            samples=samples,
            calib=calib,
            ops=list(ops),
            exclude=list(exclude),
            per_channel=None if per_channel else False,
            reduce_range=reduce_range or None,
            block_size=block_size,
            smooth=smooth,
            min_cosine=min_cosine,
            min_top1=min_top1,
            guard=None if guard else False,
            requantize=requantize or None,
        )
        return run_spec(model, output, weights, spec, as_json=as_json, quiet=quiet, prepare=prepare)

    guarded(debug, action)
