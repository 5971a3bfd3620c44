"""The ``onnxslim`` command: a thin shell over the Python API.

Each command parses its options, calls the API and renders the result. Errors that onnxslim
raises on purpose become one red line and exit code 2; a failed numerics check exits 1; a
traceback appears only with ``--debug``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from onnxslim.errors import OnnxSlimError

__all__ = ["app", "main"]

EXIT_MISMATCH = 1
EXIT_ERROR = 2
EXIT_INTERNAL = 3

app = typer.Typer(
    name="onnxslim",
    help="Optimize, validate and inspect ONNX models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
stdout = Console()
stderr = Console(stderr=True)

# Options shared by several commands.
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
ProviderOption = Annotated[
    list[str],
    typer.Option(
        "--provider", "-p", help="Execution provider: cpu, cuda or tensorrt (repeatable)."
    ),
]
InputsOption = Annotated[
    Path | None,
    typer.Option("--inputs", help="Input data: a .npz, a folder of .npz, or a folder of .npy."),
]
InputShapeOption = Annotated[
    list[str],
    typer.Option(
        "--input-shape", help="Shape for symbolic dims, e.g. input:1,3,224,224 (repeatable)."
    ),
]
SamplesOption = Annotated[int, typer.Option("--samples", min=1, help="Synthesized input samples.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for synthesized inputs.")]
AtolOption = Annotated[float, typer.Option("--atol", help="Absolute tolerance.")]
RtolOption = Annotated[float, typer.Option("--rtol", help="Relative tolerance.")]
MinCosineOption = Annotated[
    float | None, typer.Option("--min-cosine", help="Minimum cosine similarity per output.")
]
Tf32Option = Annotated[
    bool, typer.Option("--tf32", help="Allow TF32 on CUDA (faster, ~1e-3 deviation).")
]


def _guarded(debug: bool, action: Callable[[], int | None]) -> None:
    """Run a command body; turn onnxslim's errors into one line and an exit code."""
    try:
        code = action() or 0
    except OnnxSlimError as exc:
        if debug:
            stderr.print_exception()
        # escape: messages quote specs and paths, whose [brackets] rich would take as markup
        stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            stderr.print_exception()
        stderr.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
            "(run with --debug for the traceback, and please report it)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERNAL) from None
    raise typer.Exit(code)


def _quiet_progress(quiet: bool, as_json: bool) -> None:
    from onnxslim.progress import set_progress_enabled

    set_progress_enabled(not (quiet or as_json))


def _validation_options(
    providers: list[str],
    inputs: Path | None,
    input_shapes: list[str],
    samples: int,
    seed: int,
    atol: float,
    rtol: float,
    min_cosine: float | None,
    tf32: bool,
):
    from onnxslim.api import ValidationOptions
    from onnxslim.inputs import parse_input_shapes

    return ValidationOptions(
        providers=tuple(providers or ["cpu"]),
        inputs=inputs,
        input_shapes=parse_input_shapes(input_shapes) if input_shapes else None,
        samples=samples,
        seed=seed,
        atol=atol,
        rtol=rtol,
        min_cosine=min_cosine,
        tf32=tf32,
    )


def _emit(result: Any, as_json: bool, quiet: bool, render: Callable[[Any, Console], None]) -> None:
    from onnxslim.report import to_json

    if as_json:
        stdout.print_json(to_json(result))
    elif not quiet:
        render(result, stdout)


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
        from onnxslim.api import optimize as run_optimize
        from onnxslim.report import render_optimize

        _quiet_progress(quiet, as_json)
        target = output or model.with_name(f"{model.stem}.slim.onnx")
        options = None
        if validate:
            options = _validation_options(
                provider, inputs, input_shape, samples, seed, atol, rtol, min_cosine, tf32
            )
        with _status(f"optimizing {model.name}", quiet or as_json) as status:
            _, report = run_optimize(
                model,
                passes,
                recipe=recipe,
                skip=skip,
                plugins=plugin,
                output=target,
                external_data=external_data,
                verify_each=verify_each,
                target_opset=target_opset,
                validate=options or False,
                on_record=status
                and (lambda r: status.update(f"optimizing {model.name}: {r.name} done")),
            )
        _emit(report, as_json, quiet, render_optimize)
        return 0 if report.written else EXIT_MISMATCH

    _guarded(debug, action)


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

        _quiet_progress(quiet, as_json)
        options = _validation_options(
            provider, inputs, input_shape, samples, seed, atol, rtol, min_cosine, tf32
        )
        report = validate(reference, candidate, **asdict(options))
        _emit(report, as_json, quiet, render_validation)
        return 0 if report.passed else EXIT_MISMATCH

    _guarded(debug, action)


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

        _emit(describe(model), as_json, False, render_description)

    _guarded(debug, action)


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

    _guarded(debug, action)


def _status(message: str, silent: bool):
    """A spinner while the API works (its own progress bars take over for long steps)."""
    import contextlib

    return contextlib.nullcontext() if silent else stderr.status(message)


def main() -> None:
    app(prog_name="onnxslim")


if __name__ == "__main__":
    sys.exit(main())
