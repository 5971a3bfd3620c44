"""Shared pieces of the ``onnxslim`` command line: the app, its conventions, options, errors.

Command modules in this package register themselves on :data:`app`; this module knows the
conventions users bring from OnnxSlim and onnx-simplifier (``onnxslim IN OUT``, ``-h``,
``--version``), how errors become one line and an exit code, and how results are printed.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer._click.exceptions import ClickException, UsageError  # typer >= 0.29 vendors click
from typer.core import TyperGroup

from onnxslim import __version__, progress
from onnxslim.errors import EXIT_INTERNAL, EXIT_QUALITY, OnnxSlimError

__all__ = [
    "app",
    "guarded",
    "emit",
    "out",
    "err",
    "quiet_progress",
    "one_line_warnings",
    "split_commas",
    "output_path",
    "validation_options",
    "run_optimize",
    "ModelArgument",
    "OutputArgument",
    "OutputOption",
    "DEFAULT_COMMAND",
    "UsageError",
]

DEFAULT_COMMAND = "optimize"


class _Group(TyperGroup):
    """The ``onnxslim`` group: ``onnxslim MODEL [OUTPUT]`` runs ``optimize`` (what OnnxSlim and
    onnxsim users type), and a usage error is one line, like every other error."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and _names_a_model(args[0]):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def format_commands(self, ctx: typer.Context, formatter) -> None:
        """Each command with its whole first sentence, wrapped rather than cut off."""
        rows = [
            (name, command.get_short_help_str(limit=1000))
            for name, command in self.commands.items()
            if not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except ClickException as exc:
            if not standalone_mode:
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # `onnxslim` alone: the help
                exc.show()
            else:
                _print_usage_error(exc)
            sys.exit(exc.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            err().print("[bold red]interrupted[/]")
            sys.exit(130)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _names_a_model(argument: str) -> bool:
    return argument.endswith(".onnx") or Path(argument).is_file()


def _print_usage_error(exc: ClickException) -> None:
    ctx = getattr(exc, "ctx", None)
    message = " ".join(exc.format_message().split())
    hint = f" (see: {ctx.command_path} -h)" if ctx is not None else ""
    err().print(
        f"[bold red]error:[/] {escape(message)}{escape(hint)}", highlight=False, soft_wrap=True
    )


app = typer.Typer(
    name="onnxslim",
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: reads at 80 columns, and [brackets] stay as typed
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        out().print(f"onnxslim {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    """Optimize, compress, validate and inspect ONNX models.

    onnxslim MODEL.onnx [OUTPUT.onnx] is short for onnxslim optimize MODEL.onnx [OUTPUT.onnx].
    Exit codes: 0 success, 1 quality bar missed (nothing written), 2 bad input,
    3 internal error, 4 nothing to do (nothing written).
    """


def out() -> Console:
    """The console for results (stdout), made per use so it honours COLUMNS and redirection."""
    return Console()


def err() -> Console:
    """The console for errors and warnings (stderr), above any spinner or progress bar."""
    return progress.console()


# Options shared by several commands.
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
ProviderOption = Annotated[
    list[str],
    typer.Option(
        "--provider",
        "-p",
        metavar="NAME",
        help="Execution provider: cpu, cuda or tensorrt (repeatable, or comma-separated).",
    ),
]
InputsOption = Annotated[
    Path | None,
    typer.Option(
        "--inputs", help="Input data: a .npz, a folder of .npz, or a folder of .npy files."
    ),
]
InputShapeOption = Annotated[
    list[str],
    typer.Option(
        "--input-shape",
        metavar="NAME:DIMS",
        help="Shape of an input's symbolic dims for synthesized inputs, e.g. "
        "input:1,3,224,224 (repeatable).",
    ),
]
PrepareOption = Annotated[
    bool,
    typer.Option(
        "--prepare/--no-prepare",
        help="Run the lossless pipeline before the pass, which turns an export's weights "
        "behind Transpose, Cast and Constant nodes into initializers it can read.",
    ),
]
FixShapeOption = Annotated[
    list[str],
    typer.Option(
        "--input-shape",
        metavar="NAME:DIMS",
        help="Write a static input shape into the model, e.g. input:1,3,224,224 (repeatable); "
        "its symbolic dims take these sizes everywhere.",
    ),
]
SamplesOption = Annotated[int, typer.Option("--samples", min=1, help="Synthesized input samples.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for synthesized inputs.")]
AtolOption = Annotated[
    float | None,
    typer.Option(
        "--atol", help="Absolute tolerance. Default: 1e-4, or none with --min-cosine alone."
    ),
]
RtolOption = Annotated[
    float | None,
    typer.Option(
        "--rtol", help="Relative tolerance. Default: 1e-3, or none with --min-cosine alone."
    ),
]
MinCosineOption = Annotated[
    float | None,
    typer.Option(
        "--min-cosine",
        help="Minimum cosine similarity per output; alone, it decides (for lossy models).",
    ),
]
ModelArgument = Annotated[
    Path, typer.Argument(metavar="MODEL", help="The ONNX model (never modified).")
]
OutputArgument = Annotated[
    Path | None,
    typer.Argument(metavar="OUTPUT", help="Where to write the result (or -o).", show_default=False),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Where to write the result.", show_default=False),
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
            err().print_exception()
        # escape: messages quote specs and paths, whose [brackets] rich would take as markup
        err().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err().print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            err().print_exception()
        err().print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
            "(run with --debug for the traceback, and please report it)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERNAL) from None
    raise typer.Exit(code)


def quiet_progress(quiet: bool, as_json: bool) -> None:
    progress.set_progress_enabled(not (quiet or as_json))


@contextlib.contextmanager
def one_line_warnings(quiet: bool) -> Iterator[list[str]]:
    """Python warnings raised inside, printed once each as a ``warning:`` line on stderr (not
    as a UserWarning with a source line); yields the messages shown, so that a report does
    not repeat them among its notes."""
    shown: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text in shown:
            return
        shown.append(text)
        if not quiet:
            words = text.removeprefix("WARNING: ").removeprefix("warning: ")
            err().print(f"[yellow]warning:[/] {escape(words)}", highlight=False, soft_wrap=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield shown


def split_commas(values: Iterable[str]) -> list[str]:
    """``-p cpu,cuda`` and ``-p cpu -p cuda`` alike."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def output_path(positional: Path | None, option: Path | None, default: Path | None) -> Path | None:
    """The output, given as ``OUTPUT`` or ``-o OUTPUT`` (not both), else ``default``."""
    if positional is not None and option is not None and positional != option:
        raise UsageError(f"the output is given twice ({positional} and -o {option})")
    return positional or option or default


def validation_options(
    providers: list[str],
    inputs: Path | None,
    input_shapes: list[str],
    samples: int,
    seed: int,
    atol: float | None,
    rtol: float | None,
    min_cosine: float | None,
    tf32: bool,
):
    """Validation settings from the command line; with ``--min-cosine`` alone, the cosine
    decides (element-wise tolerances are off unless given)."""
    from onnxslim.api import ValidationOptions
    from onnxslim.inputs import parse_input_shapes

    cosine_alone = min_cosine is not None and atol is None and rtol is None
    return ValidationOptions(
        providers=tuple(split_commas(providers) or ["cpu"]),
        inputs=inputs,
        input_shapes=parse_input_shapes(input_shapes) if input_shapes else None,
        samples=samples,
        seed=seed,
        atol=float("inf") if cosine_alone else (1e-4 if atol is None else atol),
        rtol=0.0 if cosine_alone else (1e-3 if rtol is None else rtol),
        min_cosine=min_cosine,
        tf32=tf32,
    )


def emit(result: Any, as_json: bool, quiet: bool, render: Callable[[Any, Console], None]) -> None:
    from onnxslim.report import to_json

    if as_json:
        out().print_json(to_json(result))
    elif not quiet:
        render(result, out())


def run_optimize(
    model: Path,
    output: Path,
    *,
    title: str,
    as_json: bool,
    quiet: bool,
    wording: Callable[[str], str] | None = None,
    **api_options: Any,
) -> int:
    """Run ``onnxslim.api.optimize`` with a spinner and print its report; the exit code.

    Every command that rewrites a model (``optimize``, ``quantize``, ``prune``, ...) is this
    call with its own steps and ``title``, so they share one report and one set of exit codes.
    ``wording`` rewrites the notes of the report in the command's terms.
    """
    from onnxslim.api import optimize
    from onnxslim.report import render_optimize

    quiet_progress(quiet, as_json)
    with one_line_warnings(quiet) as shown, progress.status(f"{title}: {model.name}") as update:
        _, report = optimize(
            model,
            output=output,
            on_record=lambda record: update(f"{title}: {model.name}: {record.name} done"),
            **api_options,
        )
    render = functools.partial(render_optimize, title=title, shown=tuple(shown), wording=wording)
    emit(report, as_json, quiet, render)
    return 0 if report.written else EXIT_QUALITY
