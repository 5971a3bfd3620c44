"""``onnxslim quantize``: the quantize pass as a command.

It builds a ``quantize(...)`` spec and hands it to :func:`onnxslim.cli.shell.run_optimize`, so
it shares the optimize report (with the per-layer SQNR table), ``--json``, ``--quiet``,
``--debug`` and the exit codes. The pass itself reports the output cosine similarity with
the float model on the calibration data; ``--target-cosine`` makes it a guarantee, and
``onnxslim validate ORIGINAL QUANTIZED --min-cosine ...`` checks on other data.
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
        typer.Option("--activations", help="Activation type: uint8, int8, int16 or none."),
    ] = "uint8",
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
    target_cosine: Annotated[
        float | None,
        typer.Option("--target-cosine", help="Keep sensitive layers float to reach this cosine."),
    ] = None,
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
            target_cosine=target_cosine,
        )
        return run_spec(model, output, weights, spec, as_json=as_json, quiet=quiet)

    guarded(debug, action)
