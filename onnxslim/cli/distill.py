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
from onnxslim.distill.api import DistillOptions

_DEFAULTS = DistillOptions()


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
    ] = _DEFAULTS.loss,
    outputs: Annotated[
        list[str],
        typer.Option("--outputs", help="An output to match, or student=teacher (repeatable)."),
    ] = [],  # noqa: B006
    temperature: Annotated[
        float, typer.Option("--temperature", help="kl temperature.")
    ] = _DEFAULTS.temperature,
    alpha: Annotated[
        float, typer.Option("--alpha", help="Weight of cross-entropy with labels (kl).")
    ] = _DEFAULTS.alpha,
    mask: Annotated[
        str,
        typer.Option(
            "--mask",
            help="Input that masks padded positions out of the loss: a name, auto "
            "(attention_mask if there is one) or none.",
        ),
    ] = _DEFAULTS.mask,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = _DEFAULTS.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = _DEFAULTS.batch_size,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = _DEFAULTS.lr,
    optimizer: Annotated[
        str, typer.Option("--optimizer", help="adamw or sgd.")
    ] = _DEFAULTS.optimizer,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = _DEFAULTS.weight_decay,
    schedule: Annotated[
        str, typer.Option("--schedule", help="cosine or constant.")
    ] = _DEFAULTS.schedule,
    warmup: Annotated[
        float, typer.Option("--warmup", help="Share of the steps that ramp the rate up.")
    ] = _DEFAULTS.warmup,
    freeze: Annotated[
        list[str], typer.Option("--freeze", help="Weights to keep, e.g. 'head.*' (repeatable).")
    ] = [],  # noqa: B006
    val_split: Annotated[
        float, typer.Option("--val-split", help="Share of samples held out to score epochs.")
    ] = _DEFAULTS.val_split,
    patience: Annotated[
        int, typer.Option("--patience", help="Stop after this many epochs without gain (0: off).")
    ] = _DEFAULTS.patience,
    seed: Annotated[int, typer.Option("--seed")] = _DEFAULTS.seed,
    threads: Annotated[
        int, typer.Option("--threads", min=0, help="CPU threads per step (0: onnxruntime's).")
    ] = 0,
    backend: Annotated[
        str,
        typer.Option(
            "--backend", help="native (any onnxruntime) or ort-training (onnxruntime-training)."
        ),
    ] = _DEFAULTS.backend,
    provider: Annotated[
        str, typer.Option("--provider", help="Where native training runs: cpu or cuda.")
    ] = _DEFAULTS.provider,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Fine-tune STUDENT on TEACHER's outputs; write it to OUTPUT (QDQ students stay QDQ)."""

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
            mask=mask,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            schedule=schedule,
            warmup=warmup,
            freeze=tuple(freeze),
            val_split=val_split,
            patience=patience,
            seed=seed,
            threads=threads,
            backend=backend,
            provider=provider,
        )
        emit(report, as_json, quiet, _render)

    guarded(debug, action)
