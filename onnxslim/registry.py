"""Where passes are found by name: built-ins, plugins, spec strings and TOML recipes.

A pipeline spec is a comma-separated list of pass names, each with optional options in
parentheses, and square brackets around steps to repeat until nothing changes::

    cleanup,fold-constants(max_growth_bytes=0),[cleanup,fold-constants]*5

``default`` stands for the default pipeline, so a plugin pass joins it without retyping it:
``default,my-pass``.

A recipe is a TOML file with the same information, typed by TOML itself::

    [[steps]]
    pass = "cleanup"

    [[steps]]
    repeat = ["fold-constants", "cleanup"]
    max_iterations = 5

    [[steps]]
    pass = "fold-constants"
    max_growth_bytes = 0

Relative paths in a step's options (calibration data, a teacher model) are read from the
recipe's folder, so a recipe and its data travel together.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
import types
import typing
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

import tomllib

from onnxslim.errors import PipelineSpecError
from onnxslim.pipeline import DEFAULT_MAX_ITERATIONS, FixedPoint, Pass, Step

__all__ = [
    "register_pass",
    "registered_passes",
    "get_pass",
    "builtin_pass",
    "create_pass",
    "parse_pipeline",
    "without_passes",
    "load_recipe",
    "load_plugin",
    "DEFAULT_PIPELINE",
    "DEFAULT_NAME",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "onnxslim.passes"
# Shapes first, so that folding and the shape-aware rewrites see static shapes in round one.
DEFAULT_PIPELINE = (
    "[infer-shapes,simplify-shapes,cleanup,fold-constants,eliminate-noops,collapse-chains,"
    "fuse-batchnorm,fuse-affine,fuse-layernorm,fuse-gelu,fuse-rmsnorm,fuse-rotary,"
    "fuse-attention,symbolic-shapes,cse]*10"
)

# In a spec, this name stands for the default pipeline; no pass may take it.
DEFAULT_NAME = "default"

_REGISTRY: dict[str, type[Pass]] = {}
_discovered = False


def register_pass(name: str):
    """Class decorator: make a Pass available under ``name`` in specs, recipes and the CLI.

    The class becomes a dataclass if it is not one yet, so its annotated fields are its options.
    """

    def decorate(cls: type[Pass]) -> type[Pass]:
        if not issubclass(cls, Pass):
            raise TypeError(f"{cls.__name__} must subclass onnxslim.Pass to be registered")
        if name == DEFAULT_NAME:
            raise PipelineSpecError(
                f"'{DEFAULT_NAME}' names the default pipeline in specs; choose another pass name"
            )
        if not is_dataclass(cls):
            cls = dataclass(cls)
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise PipelineSpecError(
                f"pass name '{name}' is already taken by {existing.__module__}.{existing.__name__}"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _discover() -> None:
    """Import the built-in passes and every installed plugin, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    importlib.import_module("onnxslim.passes")
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as exc:
            raise PipelineSpecError(
                f"plugin '{entry_point.name}' ({entry_point.value}) failed to load: {exc}"
            ) from exc


def registered_passes() -> dict[str, type[Pass]]:
    _discover()
    return dict(sorted(_REGISTRY.items()))


def builtin_pass(name: str) -> type[Pass]:
    """A pass that ships with onnxslim, without loading plugins (whose failure to load must
    not break the commands built from the built-in passes)."""
    importlib.import_module("onnxslim.passes")
    return _REGISTRY[name]


def get_pass(name: str) -> type[Pass]:
    passes = registered_passes()
    if name in passes:
        return passes[name]
    close = difflib.get_close_matches(name, passes, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise PipelineSpecError(f"unknown pass '{name}'{hint}; available: {', '.join(passes)}")


def create_pass(
    name: str,
    options: dict[str, Any] | None = None,
    *,
    from_text: bool = False,
    base_dir: Path | None = None,
):
    """An instance of pass ``name`` with ``options`` checked against its fields' types.

    Options typed ``Path`` that are relative resolve against ``base_dir`` when given: a
    recipe's data files are found beside the recipe, wherever it is run from.
    """
    cls = get_pass(name)
    specs = {spec.name: spec for spec in cls.options()}
    values = {}
    for key, raw in (options or {}).items():
        if key not in specs:
            valid = ", ".join(f"{s.name}: {s.type_name}" for s in specs.values()) or "none"
            raise PipelineSpecError(f"pass '{name}' has no option '{key}'; its options: {valid}")
        spec = specs[key]
        value = _coerce(raw, spec.annotation, from_text, f"{name}({key}=...)")
        if isinstance(value, Path) and base_dir is not None and not value.is_absolute():
            value = base_dir / value
        values[key] = value
    return cls(**values)


def _coerce(raw: Any, annotation: Any, from_text: bool, where: str) -> Any:
    """Check (and for spec strings, convert) an option value against its annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        is_none = raw is None or (from_text and str(raw).lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(raw, arg, from_text, where)
            except PipelineSpecError as exc:
                errors.append(str(exc))
        raise PipelineSpecError(errors[0] if errors else f"{where}: bad value {raw!r}")
    if origin is typing.Literal:
        if raw in args:
            return raw
        raise PipelineSpecError(f"{where}: {raw!r} is not one of {', '.join(map(repr, args))}")
    if origin in (list, tuple):
        items = raw.split("|") if from_text and isinstance(raw, str) else raw
        if not isinstance(items, list | tuple):
            raise PipelineSpecError(f"{where}: expected a list, got {raw!r}")
        item_type = args[0] if args else Any
        return [_coerce(item, item_type, from_text, where) for item in items if item != ""]
    if annotation is Any:
        return raw
    if annotation is bool:
        return _to_bool(raw, from_text, where)
    if annotation in (int, float):
        if isinstance(raw, bool):
            raise PipelineSpecError(f"{where}: expected {annotation.__name__}, got {raw!r}")
        if isinstance(raw, int | float) and not (annotation is int and isinstance(raw, float)):
            return annotation(raw)
        if from_text and isinstance(raw, str):
            try:
                return annotation(raw.replace("_", ""))
            except ValueError:
                pass
        raise PipelineSpecError(f"{where}: expected {annotation.__name__}, got {raw!r}")
    if annotation is str:
        if isinstance(raw, str):
            return raw
        raise PipelineSpecError(f"{where}: expected a string, got {raw!r}")
    if annotation is Path:
        if isinstance(raw, str | Path) and str(raw):
            return Path(raw).expanduser()
        raise PipelineSpecError(f"{where}: expected a path, got {raw!r}")
    return raw


def _to_bool(raw: Any, from_text: bool, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if from_text and isinstance(raw, str):
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
    raise PipelineSpecError(f"{where}: expected true or false, got {raw!r}")


# ------------------------------------------------------------------------------- spec strings


def parse_pipeline(spec: str, *, skip: typing.Iterable[str] = ()) -> list[Step]:
    """Steps from a spec string such as ``cleanup,[fold-constants,cleanup]*5``.

    Passes named in ``skip`` are dropped wherever they appear.
    """
    parser = _SpecParser(spec)
    return without_passes(parser.parse_list(closing=None), skip)


def without_passes(steps: list[Step], skip: typing.Iterable[str]) -> list[Step]:
    """``steps`` with the passes named in ``skip`` dropped wherever they appear."""
    skipped = set(skip)
    for name in skipped:
        get_pass(name)  # an unknown name is an error, not a silent no-op
    kept: list[Step] = []
    for step in steps:
        if isinstance(step, FixedPoint):
            inner = without_passes(step.steps, skipped)
            if inner:
                kept.append(FixedPoint(inner, step.max_iterations))
        elif step.name not in skipped:
            kept.append(step)
    return kept


class _SpecParser:
    """A small recursive-descent parser; errors point at the offending position."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> PipelineSpecError:
        return PipelineSpecError(f"pipeline spec {self.text!r}, at position {self.pos}: {message}")

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_spaces()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse_list(self, closing: str | None) -> list[Step]:
        steps: list[Step] = self.parse_step()
        while True:
            char = self.peek()
            if char == "" and closing:
                raise self.error(f"missing '{closing}'")
            if char == (closing or ""):
                return steps
            if char != ",":
                raise self.error(f"expected ',' but found {char!r}")
            self.pos += 1
            steps.extend(self.parse_step())

    def parse_step(self) -> list[Step]:
        """One step, or the default pipeline's steps for ``default``."""
        if self.peek() == "[":
            self.pos += 1
            steps = self.parse_list(closing="]")
            if self.peek() != "]":
                raise self.error("missing ']'")
            self.pos += 1
            limit = DEFAULT_MAX_ITERATIONS
            if self.peek() == "*":
                self.pos += 1
                limit = int(self.read_while(str.isdigit) or "0")
                if limit < 1:
                    raise self.error("a repeat count after '*' must be a positive integer")
            return [FixedPoint(steps, limit)]
        name = self.read_while(lambda c: c.isalnum() or c in "-_.")
        if not name:
            raise self.error(f"expected a pass name but found {self.peek()!r}")
        if name == DEFAULT_NAME:
            if self.peek() == "(":
                raise self.error(f"'{DEFAULT_NAME}' (the default pipeline) takes no options")
            return parse_pipeline(DEFAULT_PIPELINE)
        options: dict[str, str] = {}
        if self.peek() == "(":
            self.pos += 1
            options = self.parse_options()
        return [create_pass(name, options, from_text=True)]

    def parse_options(self) -> dict[str, str]:
        options: dict[str, str] = {}
        while self.peek() != ")":
            key = self.read_while(lambda c: c.isalnum() or c == "_")
            if not key or self.peek() != "=":
                raise self.error("expected option=value")
            self.pos += 1
            self.skip_spaces()
            options[key] = self.read_value()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != ")":
                raise self.error("expected ',' or ')' after an option value")
        self.pos += 1
        return options

    def read_value(self) -> str:
        if self.pos < len(self.text) and self.text[self.pos] in "'\"":
            quote = self.text[self.pos]
            end = self.text.find(quote, self.pos + 1)
            if end < 0:
                raise self.error("unterminated quoted value")
            value = self.text[self.pos + 1 : end]
            self.pos = end + 1
            return value
        return self.read_while(lambda c: c not in ",)").strip()

    def read_while(self, accept) -> str:
        self.skip_spaces()
        start = self.pos
        while self.pos < len(self.text) and accept(self.text[self.pos]):
            self.pos += 1
        return self.text[start : self.pos]


# ------------------------------------------------------------------------------------ recipes


def load_recipe(path: str | Path) -> list[Step]:
    """Steps from a TOML recipe (see the module docstring for the format)."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PipelineSpecError(f"{path}: no such recipe file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PipelineSpecError(f"{path}: not valid TOML: {exc}") from exc
    entries = document.get("steps")
    if not isinstance(entries, list) or not entries:
        raise PipelineSpecError(f"{path}: a recipe needs a non-empty [[steps]] list")
    return [
        step
        for i, entry in enumerate(entries)
        for step in _recipe_steps(entry, f"{path}: step {i + 1}", path.parent)
    ]


def _recipe_steps(entry: Any, where: str, base_dir: Path) -> list[Step]:
    """The steps of one recipe entry: a table, or a spec string (``"default"`` among them)."""
    if isinstance(entry, str):
        return parse_pipeline(entry)
    if not isinstance(entry, dict):
        raise PipelineSpecError(f"{where}: expected a table, got {entry!r}")
    entry = dict(entry)
    if "repeat" in entry:
        inner = entry.pop("repeat")
        limit = entry.pop("max_iterations", DEFAULT_MAX_ITERATIONS)
        if entry:
            raise PipelineSpecError(f"{where}: unexpected keys {sorted(entry)} beside 'repeat'")
        if not isinstance(inner, list) or not inner:
            raise PipelineSpecError(f"{where}: 'repeat' needs a non-empty list of steps")
        steps = [step for item in inner for step in _recipe_steps(item, where, base_dir)]
        return [FixedPoint(steps, int(limit))]
    if "pass" not in entry:
        raise PipelineSpecError(f"{where}: each step needs 'pass = \"name\"' or 'repeat = [...]'")
    name = entry.pop("pass")
    if name == DEFAULT_NAME and not entry:
        return parse_pipeline(DEFAULT_PIPELINE)
    return [create_pass(name, entry, base_dir=base_dir)]


# ------------------------------------------------------------------------------------ plugins


def load_plugin(path: str | Path) -> list[str]:
    """Import a Python file that registers passes; return the names it added."""
    path = Path(path)
    if not path.is_file():
        raise PipelineSpecError(f"{path}: plugin file not found")
    _discover()
    before = set(_REGISTRY)
    module_name = f"onnxslim_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise PipelineSpecError(f"{path}: plugin failed to import: {exc}") from exc
    return sorted(set(_REGISTRY) - before)
