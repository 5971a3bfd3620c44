"""``onnxslim distill``: fine-tune a student model on a teacher's outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from onnxslim.cli.shell import (
    DebugOption,
    JsonOption,
    QuietOption,
    app,
    emit,
    guarded,
    quiet_progress,
)


def _render(report, console: Console) -> None:
    from onnxslim.report import render_pass_table

    render_pass_table(report.epoch_table(), console)
    console.print(report.summary())
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    if report.output:
        console.print(f"wrote {report.output}")


@app.command()
def distill(
    teacher: Annotated[Path, typer.Option("--teacher", help="The original model.")],
    student: Annotated[Path, typer.Option("--student", help="The model to train (not modified).")],
    data: Annotated[
        Path, typer.Option("--data", help="A .npz of the inputs (+ labels) or a folder of .npy.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the result.")],
    loss: Annotated[
        str, typer.Option("--loss", help="kl, mse, cosine, or ce (labels only).")
    ] = "kl",
    outputs: Annotated[
        list[str],
        typer.Option("--outputs", help="An output to match, or student=teacher (repeatable)."),
    ] = [],  # noqa: B006
    temperature: Annotated[float, typer.Option("--temperature", help="kl temperature.")] = 4.0,
    alpha: Annotated[
        float, typer.Option("--alpha", help="Weight of cross-entropy with labels (kl).")
    ] = 0.5,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or sgd.")] = "adamw",
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.0,
    schedule: Annotated[str, typer.Option("--schedule", help="cosine or constant.")] = "cosine",
    freeze: Annotated[
        list[str], typer.Option("--freeze", help="Weights to keep, e.g. 'head.*' (repeatable).")
    ] = [],  # noqa: B006
    val_split: Annotated[
        float, typer.Option("--val-split", help="Share of samples held out to score epochs.")
    ] = 0.1,
    patience: Annotated[
        int, typer.Option("--patience", help="Stop after this many epochs without gain (0: off).")
    ] = 3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[
        int, typer.Option("--threads", min=0, help="CPU threads per step (0: onnxruntime's).")
    ] = 0,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Fine-tune STUDENT on TEACHER's outputs with onnxruntime-training; write it to OUTPUT."""

    def action() -> None:
        from onnxslim.distill import distill as run_distill

        quiet_progress(quiet, as_json)
        report = run_distill(
            teacher,
            student,
            data,
            output,
            loss=loss,
            outputs=tuple(outputs),
            temperature=temperature,
            alpha=alpha,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            schedule=schedule,
            freeze=tuple(freeze),
            val_split=val_split,
            patience=patience,
            seed=seed,
            threads=threads,
        )
        emit(report, as_json, quiet, _render)

    guarded(debug, action)
