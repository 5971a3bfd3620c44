"""The core commands: ``optimize``, ``validate``, ``inspect`` and ``passes``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxslim.cli.shell import (
    AtolOption,
    DebugOption,
    FixShapeOption,
    InputShapeOption,
    InputsOption,
    JsonOption,
    MinCosineOption,
    OutputArgument,
    ProviderOption,
    QuietOption,
    RtolOption,
    SamplesOption,
    SeedOption,
    Tf32Option,
    UsageError,
    app,
    emit,
    guarded,
    one_line_warnings,
    out,
    output_path,
    quiet_progress,
    run_optimize,
    split_commas,
    validation_options,
)
from onnxslim.errors import EXIT_QUALITY


@app.command()
def optimize(
    model: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help="The ONNX model to optimize (never modified)."),
    ],
    output_argument: OutputArgument = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the result. Default: MODEL.slim.onnx.",
            show_default=False,
        ),
    ] = None,
    passes: Annotated[
        str | None,
        typer.Option(
            "--passes",
            metavar="SPEC",
            help="Pipeline spec, e.g. 'cleanup,[fold-constants,cleanup]*5' or "
            "'default,my-pass' ('default' is the default pipeline).",
        ),
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option("--recipe", help="A TOML recipe file (instead of --passes).")
    ] = None,
    skip: Annotated[
        list[str],
        typer.Option(
            "--skip", metavar="PASS", help="Leave out a pass (repeatable, or comma-separated)."
        ),
    ] = [],  # noqa: B006
    plugin: Annotated[
        list[Path],
        typer.Option("--plugin", metavar="PATH", help="A Python file that registers passes."),
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
    input_shape: FixShapeOption = [],  # noqa: B006
    validate: Annotated[
        bool,
        typer.Option(
            "--validate",
            help="Compare outputs with the original (on --inputs, else on a pass's calib data, "
            "else on synthesized inputs); write only if they match.",
        ),
    ] = False,
    external_data: Annotated[
        bool | None,
        typer.Option(
            "--external-data/--no-external-data",
            help="Store weights in OUTPUT.data. Default: only when over 2 GiB.",
            show_default=False,
        ),
    ] = None,
    provider: ProviderOption = [],  # noqa: B006
    inputs: InputsOption = None,
    samples: SamplesOption = 1,
    seed: SeedOption = 0,
    atol: AtolOption = None,
    rtol: RtolOption = None,
    min_cosine: MinCosineOption = None,
    tf32: Tf32Option = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Optimize MODEL and write the result (the default command).

    Runs the lossless pipeline (or --passes, or --recipe) to a fixed point. A model the
    pipeline cannot shrink is still written (exit 0, as OnnxSlim and onnxsim do); the
    report's first line then says there was nothing to optimize.
    """
    if recipe is not None and passes is not None:
        raise UsageError("--recipe and --passes cannot be combined: a recipe is a pipeline")
    target = output_path(output_argument, output, model.with_name(f"{model.stem}.slim.onnx"))

    def action() -> int:
        from onnxslim.inputs import parse_input_shapes

        options = None
        if validate:
            options = validation_options(
                provider, inputs, [], samples, seed, atol, rtol, min_cosine, tf32
            )
        return run_optimize(
            model,
            target,
            title="onnxslim optimize",
            as_json=as_json,
            quiet=quiet,
            passes=passes,
            recipe=recipe,
            skip=split_commas(skip),
            plugins=plugin,
            external_data=external_data,
            verify_each=verify_each,
            target_opset=target_opset,
            input_shapes=parse_input_shapes(input_shape) if input_shape else None,
            validate=options or False,
        )

    guarded(debug, action)


@app.command("validate")
def validate_command(
    reference: Annotated[Path, typer.Argument(metavar="REFERENCE", help="The original model.")],
    candidate: Annotated[
        Path, typer.Argument(metavar="CANDIDATE", help="The model to check against it.")
    ],
    provider: ProviderOption = [],  # noqa: B006
    inputs: InputsOption = None,
    input_shape: InputShapeOption = [],  # noqa: B006
    samples: SamplesOption = 1,
    seed: SeedOption = 0,
    atol: AtolOption = None,
    rtol: RtolOption = None,
    min_cosine: MinCosineOption = None,
    tf32: Tf32Option = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Compare two models' outputs under onnxruntime.

    Exits 1 if CANDIDATE's outputs differ from REFERENCE's. --inputs data.npz runs both on
    your data (a 'labels' array in it is ignored).
    """

    def action() -> int:
        from dataclasses import asdict

        from onnxslim.report import render_validation
        from onnxslim.validate import validate

        quiet_progress(quiet, as_json)
        options = validation_options(
            provider, inputs, input_shape, samples, seed, atol, rtol, min_cosine, tf32
        )
        with one_line_warnings(quiet):
            report = validate(reference, candidate, **asdict(options))
        emit(report, as_json, quiet, render_validation)
        return 0 if report.passed else EXIT_QUALITY

    guarded(debug, action)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="The ONNX model to describe.")],
    input_shape: Annotated[
        list[str],
        typer.Option(
            "--input-shape",
            metavar="NAME:DIMS",
            help="Fix an input's shape first, e.g. input:1,3,224,224 (repeatable): FLOPs then "
            "count these sizes instead of 1 for symbolic dims.",
        ),
    ] = [],  # noqa: B006
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Describe MODEL: opsets, signature, ops, parameters, FLOPs.

    FLOPs are estimated for Conv, Gemm and MatMul; they count symbolic dims (batch,
    sequence) as 1 unless --input-shape sets them.
    """

    def action() -> None:
        from onnxslim.api import set_input_shapes
        from onnxslim.inputs import parse_input_shapes
        from onnxslim.model import load
        from onnxslim.report import render_description
        from onnxslim.summary import describe

        loaded = load(model)
        if input_shape:
            set_input_shapes(loaded, parse_input_shapes(input_shape))
        emit(describe(loaded), as_json, False, render_description)

    guarded(debug, action)


@app.command()
def passes(
    name: Annotated[
        str | None,
        typer.Argument(metavar="NAME", help="A pass to describe in full.", show_default=False),
    ] = None,
    long: Annotated[
        bool, typer.Option("--long", "-l", help="Every pass with its options in full.")
    ] = False,
    plugin: Annotated[
        list[Path],
        typer.Option("--plugin", metavar="PATH", help="A Python file that registers passes."),
    ] = [],  # noqa: B006
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List the registered passes (NAME or --long: their options).

    One line per pass by default; a NAME, or --long for all, gives each option's type,
    default and meaning."""

    def action() -> None:
        from onnxslim.registry import get_pass, load_plugin, registered_passes
        from onnxslim.report import passes_to_dict, render_pass_details, render_passes

        for path in plugin:
            load_plugin(path)
        registry = {name: get_pass(name)} if name else registered_passes()
        if as_json:
            out().print_json(data=passes_to_dict(registry))
        elif name or long:
            render_pass_details(registry, out())
        else:
            render_passes(registry, out())

    guarded(debug, action)
