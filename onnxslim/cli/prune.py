"""``onnxslim prune``: structured channel pruning, as the ``prune-channels`` pass in a pipeline."""

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

__all__ = ["prune", "prune_spec"]


def prune_spec(
    ratio: float,
    criterion: str = "l1",
    global_ranking: bool = False,
    round_to: int = 1,
    min_channels: int = 1,
    exclude: list[str] | None = None,
    calib: Path | None = None,
) -> str:
    """The pipeline ``onnxslim prune`` runs: pruning (which the lossless pipeline prepares,
    see ``PruneChannels.prepare_steps``), then the lossless pipeline again, which among others
    folds the BatchNormalizations that ``bn-scale`` scored."""
    from onnxslim.registry import DEFAULT_PIPELINE

    pruning = pass_spec(
        "prune-channels",
        ratio=ratio,
        criterion=criterion,
        global_ranking=global_ranking,
        round_to=round_to,
        min_channels=min_channels,
        exclude=list(exclude or []),
        calib=calib,
    )
    return f"{pruning},{DEFAULT_PIPELINE}"


@app.command()
def prune(
    model: Annotated[Path, typer.Argument(help="The ONNX model to prune (never modified).")],
    ratio: Annotated[
        float, typer.Option("--ratio", min=0.0, max=0.99, help="Share of channels to remove.")
    ] = 0.5,
    criterion: Annotated[
        str, typer.Option("--criterion", help="Channel importance: l1, l2, bn-scale, activation.")
    ] = "l1",
    global_ranking: Annotated[
        bool, typer.Option("--global", help="Rank channels across groups, not per group.")
    ] = False,
    round_to: Annotated[
        int, typer.Option("--round-to", min=1, help="Keep channel counts multiples of this.")
    ] = 1,
    min_channels: Annotated[
        int, typer.Option("--min-channels", min=1, help="Keep at least this many per group.")
    ] = 1,
    exclude: Annotated[
        list[str],
        typer.Option("--exclude", help="Node-name pattern whose group stays whole (repeatable)."),
    ] = [],  # noqa: B006
    calib: Annotated[
        Path | None,
        typer.Option("--calib", help="Inputs (.npz) for --criterion activation."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write (default: MODEL.pruned.onnx)."),
    ] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Remove the least important channels of MODEL's layers, with all that depends on them."""

    def action() -> int:
        spec = prune_spec(ratio, criterion, global_ranking, round_to, min_channels, exclude, calib)
        return run_spec(model, output, "pruned", spec, as_json=as_json, quiet=quiet)

    guarded(debug, action)
