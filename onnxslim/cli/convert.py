"""Conversion and storage commands: ``convert``, ``float16``, ``sparsify`` and ``cluster``.

Each builds a one-pass spec and hands it to :func:`onnxslim.cli.shell.run_optimize`, so they
share the optimize report, ``--json``, ``--quiet``, ``--debug`` and the exit codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxslim.cli.shell import (
    DebugOption,
    JsonOption,
    ModelArgument,
    OutputOption,
    QuietOption,
    app,
    guarded,
    pass_spec,
    run_spec,
)

__all__ = ["convert", "float16", "sparsify", "cluster"]


@app.command()
def convert(
    model: ModelArgument,
    opset: Annotated[int | None, typer.Option("--opset", help="Target opset.")] = None,
    ir_version: Annotated[
        int | None, typer.Option("--ir-version", help="Target IR version (e.g. 10).")
    ] = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Move MODEL to another opset and/or IR version (for older runtimes)."""
    spec = pass_spec("convert-opset", target=opset, ir_version=ir_version)
    guarded(debug, lambda: run_spec(model, output, "converted", spec, as_json=as_json, quiet=quiet))


@app.command()
def float16(
    model: ModelArgument,
    bfloat16: Annotated[bool, typer.Option("--bfloat16", help="Use bfloat16.")] = False,
    keep_io_types: Annotated[
        bool,
        typer.Option("--keep-io-types/--half-io", help="Keep graph inputs/outputs float32."),
    ] = True,
    block: Annotated[
        list[str], typer.Option("--block", help="Also keep this op in float32 (repeatable).")
    ] = [],  # noqa: B006
    guard: Annotated[
        bool, typer.Option("--guard/--no-guard", help="Keep overflowing nodes in float32.")
    ] = True,
    calib: Annotated[
        Path | None, typer.Option("--calib", help="Inputs for the overflow guard (.npz).")
    ] = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Convert MODEL's weights and compute to float16 (or bfloat16)."""
    from onnxslim.passes.float16 import DEFAULT_BLOCK_LIST

    spec = pass_spec(
        "float16",
        dtype="bfloat16" if bfloat16 else None,
        keep_io_types=None if keep_io_types else False,
        block=[*DEFAULT_BLOCK_LIST, *block] if block else None,
        guard=None if guard else False,
        calib=calib,
    )
    kind = "bfloat16" if bfloat16 else "float16"
    guarded(debug, lambda: run_spec(model, output, kind, spec, as_json=as_json, quiet=quiet))


@app.command()
def sparsify(
    model: ModelArgument,
    sparsity: Annotated[
        float | None, typer.Option("--sparsity", help="Fraction of weights to zero.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Zero weights at or below this.")
    ] = None,
    global_scope: Annotated[
        bool, typer.Option("--global", help="One threshold across all layers.")
    ] = False,
    sparse_storage: Annotated[
        bool, typer.Option("--sparse-storage", help="Store pruned weights sparsely.")
    ] = False,
    sparse_format: Annotated[
        str | None,
        typer.Option("--sparse-format", help="auto (smaller), coo (sparse initializer) or mask."),
    ] = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Zero MODEL's smallest weights (unstructured magnitude pruning)."""
    spec = pass_spec(
        "prune-weights",
        sparsity=sparsity if sparsity is not None or threshold is not None else 0.5,
        threshold=threshold,
        scope="global" if global_scope else None,
        sparse_storage=sparse_storage or None,
        sparse_format=sparse_format,
    )
    guarded(debug, lambda: run_spec(model, output, "sparse", spec, as_json=as_json, quiet=quiet))


@app.command()
def cluster(
    model: ModelArgument,
    bits: Annotated[int, typer.Option("--bits", help="log2 of the centroids (2-8).")] = 4,
    per_channel: Annotated[
        bool, typer.Option("--per-channel", help="One codebook per output channel.")
    ] = False,
    fold: Annotated[
        bool, typer.Option("--fold", help="Write dense float weights, not indices.")
    ] = False,
    output: OutputOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Cluster MODEL's weights into 2^bits centroids (k-means weight clustering)."""
    spec = pass_spec(
        "cluster-weights", bits=bits, per_channel=per_channel or None, fold=fold or None
    )
    guarded(debug, lambda: run_spec(model, output, "clustered", spec, as_json=as_json, quiet=quiet))
