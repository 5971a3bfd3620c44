"""The single-pass commands (``quantize``, ``prune``, ``convert``, ``float16``, ``sparsify``,
``cluster``), each built from its pass's typed options.

A command's options are its pass's :meth:`~onnxslim.pipeline.Pass.options`: name, type,
default and help (the field's attribute docstring), so an option added to a pass appears on
its command without an edit here, and the two cannot drift. A row of :data:`COMMANDS` adds
only what people type differently: short flags and aliases, command defaults, the output's
name and the steps around the pass. The pass is built from the typed values
(:func:`~onnxslim.registry.create_pass`), never from a spec string, so any path works.

Every command writes ``MODEL.<suffix>.onnx`` unless given ``OUTPUT`` (or ``-o``), shares the
optimize report, ``--json``, ``--quiet``, ``--debug`` and ``--input-shape``, and exits 4,
writing nothing, when its pass changed nothing.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from onnxslim.cli.shell import (
    DebugOption,
    FixShapeOption,
    JsonOption,
    ModelArgument,
    OutputArgument,
    OutputOption,
    PrepareOption,
    QuietOption,
    app,
    guarded,
    output_path,
    run_optimize,
    split_commas,
)
from onnxslim.errors import OnnxSlimError
from onnxslim.inputs import DATA_LAYOUT
from onnxslim.pipeline import OptionSpec, Pass
from onnxslim.registry import builtin_pass
from onnxslim.report import plain_text

__all__ = ["PassCommand", "COMMANDS", "register_pass_command", "cli_flags", "in_cli_terms"]


@dataclass(frozen=True)
class PassCommand:
    """How one pass becomes a command.

    ``flags`` gives an option its command-line names where the derived ``--option-name`` is
    not what people type (``{"target": ("--opset",)}``; booleans as ``"--yes/--no"``).
    ``defaults`` are the command's own defaults; giving one option of ``exclusive`` on the
    command line drops the command defaults of the others. List options named in ``extend``
    add what the command line gives to the pass's default list instead of replacing it
    (``float16 --block Sigmoid`` keeps Resize and the rest). ``before`` and ``after`` are
    pipeline specs run around the pass. ``suffix`` names the output ``MODEL.<suffix>.onnx``
    (a string, or a function of the pass).
    """

    name: str
    pass_name: str
    help: str
    suffix: str | Callable[[Pass], str]
    flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    exclusive: tuple[str, ...] = ()
    extend: tuple[str, ...] = ()
    before: str = ""
    after: str = ""


COMMANDS = (
    PassCommand(
        "quantize",
        "quantize",
        "Quantize MODEL's weights and activations to integers.",
        suffix=lambda p: p.weights,
        flags={"ops": ("--op", "--ops"), "per_channel": ("--per-channel/--per-tensor",)},
    ),
    PassCommand(
        "prune",
        "prune-channels",
        "Remove the least important channels of MODEL's layers.",
        suffix="pruned",
        flags={"global_ranking": ("--global-ranking/--no-global-ranking", "--global")},
        # The pass prepares the graph itself (PruneChannels.prepare_steps); the lossless
        # pipeline after folds the BatchNormalizations that bn-scale scored.
        after="default",
    ),
    PassCommand(
        "convert",
        "convert-opset",
        "Move MODEL to another opset and/or IR version.",
        suffix="converted",
        flags={"target": ("--opset",)},
    ),
    PassCommand(
        "float16",
        "float16",
        "Convert MODEL to float16 (or bfloat16) weights and compute.",
        suffix=lambda p: p.dtype,
        flags={"keep_io_types": ("--keep-io-types/--half-io",)},
        extend=("block",),
    ),
    PassCommand(
        "sparsify",
        "prune-weights",
        "Zero MODEL's smallest weights and store them sparsely.",
        suffix="sparse",
        flags={"sparse_storage": ("--sparse-storage/--dense-storage",)},
        defaults={"sparsity": 0.5, "sparse_storage": True},
        exclusive=("sparsity", "threshold"),
    ),
    PassCommand(
        "cluster",
        "cluster-weights",
        "Cluster MODEL's weights into 2^bits shared values (k-means).",
        suffix="clustered",
    ),
)

_COMMON = {
    "model",
    "output_argument",
    "output",
    "input_shape",
    "prepare",
    "as_json",
    "quiet",
    "debug",
}


def cli_flags(command: PassCommand, option: OptionSpec) -> tuple[str, ...]:
    """The command-line names of a pass option: from the table, else ``--option-name``
    (``--option-name/--no-option-name`` for booleans)."""
    if option.name in command.flags:
        return command.flags[option.name]
    flag = "--" + option.name.replace("_", "-")
    if _base_type(option.annotation) is bool and option.default is True:
        return (f"{flag}/--no-{flag[2:]}",)
    return (flag,)


def _base_type(annotation: Any) -> Any:
    """``float`` of ``float | None``; the annotation itself otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return annotation


def _cli_annotation(command: PassCommand, option: OptionSpec) -> Any:
    """``Annotated[type, typer.Option(...)]`` for one pass option."""
    base = _base_type(option.annotation)
    origin = typing.get_origin(base)
    extra: dict[str, Any] = {}
    if origin is Literal:
        cli_type: Any = base  # typer offers the choices
    elif origin in (list, tuple):
        cli_type = list[str]
        extra["metavar"] = "TEXT"
    elif base in (bool, int, float, str, Path):
        cli_type = base
    else:  # anything else is typed as text and parsed by the pass's own coercion
        cli_type = str
    default = command.defaults.get(option.name, option.default)
    optional = default is None and cli_type is not bool
    help_text = in_cli_terms(plain_text(option.help), command)
    if origin in (list, tuple):
        if option.name in command.extend:
            replaces = "; added to the default list"
        else:
            replaces = "; replaces the default list" if option.default else ""
        help_text += f" (repeatable, or comma-separated{replaces})"
    typer_option = typer.Option(
        *cli_flags(command, option),
        help=help_text,
        show_default=_shown_default(default),
        **extra,
    )
    return Annotated[cli_type | None if optional else cli_type, typer_option]


def _shown_default(default: Any) -> bool | str:
    if default is None or default == []:
        return False
    if isinstance(default, list | tuple):
        return ", ".join(map(str, default))
    return default is not False


def _options(command: PassCommand) -> list[OptionSpec]:
    options = builtin_pass(command.pass_name).options()
    clashes = {o.name for o in options} & _COMMON
    if clashes:  # a pass author's mistake, caught by the CLI tests
        raise TypeError(f"{command.pass_name}: option names {sorted(clashes)} clash with the CLI")
    return options


def in_cli_terms(message: str, command: PassCommand) -> str:
    """A pass's message in the words of its command: ``quantize(percentile=120.0)`` becomes
    ``quantize --percentile 120.0``, ``calib=PATH.npz`` becomes ``--calib PATH.npz``,
    ``round_to`` becomes ``--round-to`` and the pass's name the command's."""
    options = {o.name: cli_flags(command, o)[0].split("/") for o in _options(command)}

    def flag(name: str, value: str) -> str:
        names = options[name]
        value = value.strip().strip("'\"")
        if value.lower() in ("true", "false") and (len(names) > 1 or value.lower() == "true"):
            return names[0] if value.lower() == "true" else names[1]
        return f"{names[0]} {value}".removesuffix(" ...")

    def call(match: re.Match) -> str:
        words = [command.name]
        for name, value in re.findall(r"(\w+)=(\[[^\]]*\]|[^,]*)", match.group(1)):
            words.append(flag(name, value) if name in options else f"{name}={value}")
        return " ".join(words)

    pass_name = re.escape(command.pass_name)
    message = re.sub(rf"(?<![\w-]){pass_name}\(([^)]*)\)", call, message)
    for name, names in options.items():
        key = re.escape(name)
        message = re.sub(
            rf"(?<![\w-]){key}=([\w-]+(?:\.[\w-]+)*)", lambda m, n=name: flag(n, m[1]), message
        )
        message = re.sub(rf"(?<![\w-]){key}=(?=[\s,;)]|$)", names[0], message)
        message = re.sub(rf"(?<![\w-]){key}=", f"{names[0]} ", message)
        if "_" in name:
            message = re.sub(rf"(?<![\w-]){key}\b", names[0], message)
        message = re.sub(rf"^({pass_name}: (?:\S+ and )?){key}\b", rf"\g<1>{names[0]}", message)
    return re.sub(rf"(?<![\w-]){pass_name}\b", command.name, message)


def register_pass_command(command: PassCommand, into: typer.Typer = app) -> None:
    """Add ``command`` to the ``onnxslim`` app (or to ``into``), its options derived from its
    pass."""
    options = _options(command)
    parameters = [
        _parameter("model", ModelArgument),
        _parameter("output_argument", OutputArgument, None),
        _parameter("output", OutputOption, None),
        *(
            _parameter(f"option_{o.name}", _cli_annotation(command, o), _cli_default(command, o))
            for o in options
        ),
        _parameter("input_shape", FixShapeOption, []),
        _parameter("prepare", PrepareOption, True),
        _parameter("as_json", JsonOption, False),
        _parameter("quiet", QuietOption, False),
        _parameter("debug", DebugOption, False),
        _parameter("ctx", typer.Context),
    ]

    def run(**values: Any) -> None:
        ctx: typer.Context = values["ctx"]
        given = {
            o.name
            for o in options
            if ctx.get_parameter_source(f"option_{o.name}").name == "COMMANDLINE"
        }
        defaults = dict(command.defaults)
        if given & set(command.exclusive):
            defaults = {k: v for k, v in defaults.items() if k not in command.exclusive}
        chosen = {**defaults, **{name: values[f"option_{name}"] for name in given}}
        for o in options:
            if o.name in chosen and typing.get_origin(_base_type(o.annotation)) in (list, tuple):
                chosen[o.name] = split_commas(chosen[o.name])
                if o.name in command.extend and o.name in given:
                    default = list(command.defaults.get(o.name, o.default) or [])
                    chosen[o.name] = default + [v for v in chosen[o.name] if v not in default]
        target = output_path(values["output_argument"], values["output"], None)
        guarded(values["debug"], lambda: _run(command, values["model"], target, chosen, values))

    run.__name__ = command.name
    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    epilog = None
    if any(o.name == "calib" for o in options):
        epilog = f"Calibration data (--calib): {DATA_LAYOUT}"
    description = in_cli_terms(plain_text(builtin_pass(command.pass_name).description()), command)
    help_text = f"{command.help}\n\nThe {command.pass_name} pass: {description}"
    into.command(command.name, help=help_text, epilog=epilog)(run)


def _cli_default(command: PassCommand, option: OptionSpec) -> Any:
    default = command.defaults.get(option.name, option.default)
    if isinstance(default, tuple):
        return list(default)
    return default


def _parameter(name: str, annotation: Any, default: Any = inspect.Parameter.empty):
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
    )


def _run(
    command: PassCommand,
    model: Path,
    target: Path | None,
    chosen: dict[str, Any],
    values: dict[str, Any],
) -> int:
    from onnxslim.inputs import parse_input_shapes
    from onnxslim.registry import create_pass, parse_pipeline

    try:
        step = create_pass(command.pass_name, chosen, from_text=True)
        steps = [
            *(parse_pipeline(command.before) if command.before else []),
            step,
            *(parse_pipeline(command.after) if command.after else []),
        ]
        if target is None:
            suffix = command.suffix(step) if callable(command.suffix) else command.suffix
            target = model.with_name(f"{model.stem}.{suffix}.onnx")
        shapes = values["input_shape"]
        return run_optimize(
            model,
            target,
            title=f"onnxslim {command.name}",
            as_json=values["as_json"],
            quiet=values["quiet"],
            passes=steps,
            input_shapes=parse_input_shapes(shapes) if shapes else None,
            prepare=values["prepare"],
            require_change=command.pass_name,
            wording=lambda text: in_cli_terms(text, command),
        )
    except OnnxSlimError as exc:
        exc.args = (in_cli_terms(str(exc), command),)
        raise


for _command in COMMANDS:
    register_pass_command(_command)
