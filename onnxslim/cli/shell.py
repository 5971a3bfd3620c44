"""Shared pieces of the ``onnxslim`` command line: the app, consoles, options, error handling.

Command modules in this package register themselves on :data:`app`; this module knows how
errors become one line and an exit code, and how results are printed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from onnxslim.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_QUALITY, OnnxSlimError

__all__ = [
    "app",
    "guarded",
    "emit",
    "quiet_progress",
    "validation_options",
    "status_spinner",
    "run_optimize",
    "pass_spec",
    "run_spec",
    "ModelArgument",
    "OutputOption",
]

EXIT_MISMATCH = EXIT_QUALITY
EXIT_ERROR = EXIT_BAD_INPUT

app = typer.Typer(
    name="onnxslim",
    help="Optimize, compress, validate and inspect ONNX models.",
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
ModelArgument = Annotated[Path, typer.Argument(help="The ONNX model (never modified).")]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Where to write the result (default: MODEL.<kind>.onnx)."),
]
Tf32Option = Annotated[
    bool, typer.Option("--tf32", help="Allow TF32 on CUDA (faster, ~1e-3 deviation).")
]


def guarded(debug: bool, action: Callable[[], int | None]) -> None:
    """Run a command body; turn onnxslim's errors into one line and an exit code."""
    try:
        code = action() or 0
    except OnnxSlimError as exc:
        if debug:
            stderr.print_exception()
        # escape: messages quote specs and paths, whose [brackets] rich would take as markup
        stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
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


def quiet_progress(quiet: bool, as_json: bool) -> None:
    from onnxslim.progress import set_progress_enabled

    set_progress_enabled(not (quiet or as_json))


def validation_options(
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


def emit(result: Any, as_json: bool, quiet: bool, render: Callable[[Any, Console], None]) -> None:
    from onnxslim.report import to_json

    if as_json:
        stdout.print_json(to_json(result))
    elif not quiet:
        render(result, stdout)


def status_spinner(message: str, silent: bool):
    """A spinner while the API works (its own progress bars take over for long steps)."""
    return contextlib.nullcontext() if silent else stderr.status(message)


def run_optimize(
    model: Path, output: Path, *, as_json: bool, quiet: bool, **api_options: Any
) -> int:
    """Run ``onnxslim.api.optimize`` with a spinner and print its report; the exit code.

    Every command that rewrites a model (``optimize``, ``quantize``, ``prune``, ...) is this
    call with its own pass spec, so they share one report and one set of exit codes.
    """
    from onnxslim.api import optimize
    from onnxslim.report import render_optimize

    quiet_progress(quiet, as_json)
    with status_spinner(f"optimizing {model.name}", quiet or as_json) as status:
        _, report = optimize(
            model,
            output=output,
            on_record=status
            and (lambda r: status.update(f"optimizing {model.name}: {r.name} done")),
            **api_options,
        )
    emit(report, as_json, quiet, render_optimize)
    return 0 if report.written else EXIT_MISMATCH


def pass_spec(name: str, **options: object) -> str:
    """``name(key=value, ...)`` for the options that are set (not None, not empty): what a
    command that runs one pass hands to the pipeline. Paths are quoted, lists joined by ``|``."""
    items = []
    for key, value in options.items():
        if value is None or value == []:
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list | tuple):
            value = "'" + "|".join(value) + "'"
        elif isinstance(value, Path):
            value = f"'{value}'"
        items.append(f"{key}={value}")
    return f"{name}({', '.join(items)})" if items else name


def run_spec(
    model: Path,
    output: Path | None,
    kind: str,
    spec: str,
    *,
    as_json: bool,
    quiet: bool,
    **options: Any,
) -> int:
    """Run a single-pass command's ``spec``; the output defaults to ``MODEL.<kind>.onnx``.
    A command whose pass changes nothing writes nothing and exits 4 (NothingChangedError)."""
    target = output or model.with_name(f"{model.stem}.{kind}.onnx")
    name = spec.split("(")[0].split(",")[0]
    return run_optimize(
        model, target, as_json=as_json, quiet=quiet, passes=spec, must_change=[name], **options
    )
