"""The core commands: ``optimize``, ``validate``, ``inspect`` and ``passes``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxslim.cli.shell import (
    EXIT_MISMATCH,
    AtolOption,
    DebugOption,
    InputShapeOption,
    InputsOption,
    JsonOption,
    MinCosineOption,
    ProviderOption,
    QuietOption,
    RtolOption,
    SamplesOption,
    SeedOption,
    Tf32Option,
    app,
    emit,
    guarded,
    quiet_progress,
    run_optimize,
    stdout,
    validation_options,
)


@app.command()
def optimize(
    model: Annotated[Path, typer.Argument(help="The ONNX model to optimize (never modified).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where to write the result [default: MODEL.slim.onnx]."
        ),
    ] = None,
    passes: Annotated[
        str | None,
        typer.Option("--passes", help="Pipeline spec, e.g. 'cleanup,[fold-constants,cleanup]*5'."),
    ] = None,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="A TOML recipe file.")] = None,
    skip: Annotated[list[str], typer.Option("--skip", help="Leave out a pass (repeatable).")] = [],  # noqa: B006
    plugin: Annotated[
        list[Path], typer.Option("--plugin", help="A Python file that registers passes.")
    ] = [],  # noqa: B006
    verify_each: Annotated[
        bool, typer.Option("--verify-each", help="Check the model after every pass.")
    ] = False,
    target_opset: Annotated[
        int | None,
        typer.Option(
            "--target-opset", min=1, help="Let fusions raise the opset to this (e.g. 20 for Gelu)."
        ),
    ] = None,
    validate: Annotated[
        bool,
        typer.Option("--validate", help="Compare outputs with the original; write only if equal."),
    ] = False,
    external_data: Annotated[
        bool | None,
        typer.Option(
            "--external-data/--no-external-data",
            help="Store weights in MODEL.data [default: only when over 2 GiB].",
        ),
    ] = None,
    provider: ProviderOption = [],  # noqa: B006
    inputs: InputsOption = None,
    input_shape: InputShapeOption = [],  # noqa: B006
    samples: SamplesOption = 1,
    seed: SeedOption = 0,
    atol: AtolOption = 1e-4,
    rtol: RtolOption = 1e-3,
    min_cosine: MinCosineOption = None,
    tf32: Tf32Option = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Run the optimization pipeline on MODEL and write the result."""

    def action() -> int:
        options = None
        if validate:
            options = validation_options(
                provider, inputs, input_shape, samples, seed, atol, rtol, min_cosine, tf32
            )
        return run_optimize(
            model,
            output or model.with_name(f"{model.stem}.slim.onnx"),
            as_json=as_json,
            quiet=quiet,
            passes=passes,
            recipe=recipe,
            skip=skip,
            plugins=plugin,
            external_data=external_data,
            verify_each=verify_each,
            target_opset=target_opset,
            validate=options or False,
        )

    guarded(debug, action)


@app.command("validate")
def validate_command(
    reference: Annotated[Path, typer.Argument(help="The original model.")],
    candidate: Annotated[Path, typer.Argument(help="The model to check against it.")],
    provider: ProviderOption = [],  # noqa: B006
    inputs: InputsOption = None,
    input_shape: InputShapeOption = [],  # noqa: B006
    samples: SamplesOption = 1,
    seed: SeedOption = 0,
    atol: AtolOption = 1e-4,
    rtol: RtolOption = 1e-3,
    min_cosine: MinCosineOption = None,
    tf32: Tf32Option = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Compare CANDIDATE's outputs with REFERENCE's under onnxruntime; exit 1 if they differ."""

    def action() -> int:
        from dataclasses import asdict

        from onnxslim.report import render_validation
        from onnxslim.validate import validate

        quiet_progress(quiet, as_json)
        options = validation_options(
            provider, inputs, input_shape, samples, seed, atol, rtol, min_cosine, tf32
        )
        report = validate(reference, candidate, **asdict(options))
        emit(report, as_json, quiet, render_validation)
        return 0 if report.passed else EXIT_MISMATCH

    guarded(debug, action)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="The ONNX model to describe.")],
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show opsets, inputs and outputs, op counts, parameters, size and estimated FLOPs."""

    def action() -> None:
        from onnxslim.report import render_description
        from onnxslim.summary import describe

        emit(describe(model), as_json, False, render_description)

    guarded(debug, action)


@app.command()
def passes(
    plugin: Annotated[
        list[Path], typer.Option("--plugin", help="A Python file that registers passes.")
    ] = [],  # noqa: B006
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List every registered pass with its options, types, defaults and description."""

    def action() -> None:
        from onnxslim.registry import load_plugin, registered_passes
        from onnxslim.report import passes_to_dict, render_passes

        for path in plugin:
            load_plugin(path)
        registry = registered_passes()
        if as_json:
            stdout.print_json(data=passes_to_dict(registry))
        else:
            render_passes(registry, stdout)

    guarded(debug, action)
