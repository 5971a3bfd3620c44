"""The post-export API: optimize a model in one call, with an optional numerics check.

>>> import onnxslim
>>> model, report = onnxslim.optimize("model.onnx", output="model.slim.onnx")  # doctest: +SKIP
>>> report.after.nodes <= report.before.nodes  # doctest: +SKIP
True
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxslim.checking import check_input_model
from onnxslim.model import (
    Model,
    ModelSource,
    all_constants,
    constant_nbytes,
    file_bytes,
    load,
    save,
    write_staged,
)
from onnxslim.model import refuse_overwriting_sources as _refuse_overwriting_sources
from onnxslim.pipeline import PassContext, PassManager, PassRecord, Step, flatten_steps
from onnxslim.registry import (
    DEFAULT_PIPELINE,
    load_plugin,
    load_recipe,
    parse_pipeline,
    without_passes,
)
from onnxslim.staging import StagedWrite

__all__ = ["optimize", "OptimizeResult", "OptimizeReport", "ModelSummary", "ValidationOptions"]


@dataclass
class ModelSummary:
    """Size facts of a model at one stage."""

    nodes: int
    initializers: int
    initializer_bytes: int
    file_bytes: int | None = None

    @classmethod
    def of(cls, model: Model, files: Sequence[Path] = ()) -> ModelSummary:
        constants = list(all_constants(model.graph))
        return cls(
            nodes=model.node_count(),
            initializers=len(constants),
            initializer_bytes=sum(constant_nbytes(t) for t in constants),
            file_bytes=file_bytes(files),
        )


@dataclass
class ValidationOptions:
    """How ``optimize(validate=...)`` compares the result with the original."""

    providers: Sequence[str] = ("cpu",)
    inputs: Any = None
    input_shapes: dict[str, list[int]] | None = None
    samples: int = 1
    seed: int = 0
    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float | None = None
    tf32: bool = False


@dataclass
class OptimizeReport:
    """What ``optimize`` did: sizes before and after, a record per pass, timings, validation."""

    pipeline: str
    before: ModelSummary
    after: ModelSummary
    passes: list[PassRecord]
    load_seconds: float
    optimize_seconds: float
    save_seconds: float = 0.0
    output: str | None = None
    written: bool = False
    validation: Any = None
    notes: list[str] = field(default_factory=list)
    stages: list[Any] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return self.load_seconds + self.optimize_seconds + self.save_seconds

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_seconds"] = self.total_seconds
        data["validation"] = self.validation.to_dict() if self.validation else None
        return data


@dataclass
class OptimizeResult:
    """The optimized model and the report; unpacks as ``model, report``."""

    model: Model
    report: OptimizeReport

    def __iter__(self) -> Iterator[Any]:
        yield self.model
        yield self.report

    def to_proto(self) -> onnx.ModelProto:
        return self.model.to_proto()


def resolve_steps(
    passes: str | Sequence[Step] | None = None,
    *,
    recipe: str | os.PathLike | None = None,
    skip: Sequence[str] = (),
    plugins: Sequence[str | os.PathLike] = (),
) -> list[Step]:
    """The steps to run: a spec string, ready-made steps, a recipe file, or the default."""
    for plugin in plugins:
        load_plugin(plugin)
    if recipe is not None:
        return without_passes(load_recipe(recipe), skip)
    if passes is None or isinstance(passes, str):
        return parse_pipeline(passes or DEFAULT_PIPELINE, skip=skip)
    return without_passes(list(passes), skip)


def optimize(
    model: ModelSource,
    passes: str | Sequence[Step] | None = None,
    *,
    recipe: str | os.PathLike | None = None,
    skip: Sequence[str] = (),
    plugins: Sequence[str | os.PathLike] = (),
    output: str | os.PathLike | None = None,
    external_data: bool | None = None,
    verify_each: bool = False,
    validate: bool | ValidationOptions = False,
    check_input: bool = True,
    target_opset: int | None = None,
    on_record=None,
) -> OptimizeResult:
    """Load ``model``, run the pipeline, optionally save and validate.

    ``model`` is a path, serialized bytes, a ModelProto (e.g. straight from
    ``torch.onnx.export``; it is copied, never modified) or a :class:`Model`. ``passes`` is a
    spec string (default: the lossless pipeline to a fixed point) or a list of steps.

    With ``output`` the result is written atomically; with ``validate`` as well, it is written
    only if its outputs match the original's under onnxruntime (``report.written`` tells).
    ``target_opset`` lets passes that need a newer opset (e.g. fusing LayerNormalization)
    raise the model's opset when they have something to gain.
    """
    steps = resolve_steps(passes, recipe=recipe, skip=skip, plugins=plugins)
    options = ValidationOptions() if validate is True else (validate or None)
    output_path = Path(output) if output is not None else None

    start = time.perf_counter()
    loaded = load(model)
    if check_input:
        runtime = not any(step.accepts_unloadable_input for step in flatten_steps(steps))
        check_input_model(loaded, runtime=runtime, unchanged=isinstance(model, str | os.PathLike))
    if output_path is not None:
        _refuse_overwriting_sources(loaded, [output_path])
    load_seconds = time.perf_counter() - start
    before = ModelSummary.of(loaded, loaded.source_files())

    with tempfile.TemporaryDirectory(prefix="onnxslim-") as scratch:
        original = _OriginalFile(model, Path(scratch))
        if options is not None or any(step.needs_original for step in flatten_steps(steps)):
            original.path()  # before the passes change a Model given in memory
        reference = original.path() if options is not None else None
        start = time.perf_counter()
        manager = PassManager(steps, verify_each=verify_each, on_record=on_record)
        ctx = PassContext(model=loaded, target_opset=target_opset, original=original.path)
        records = manager.run(loaded, ctx)
        optimize_seconds = time.perf_counter() - start

        report = OptimizeReport(
            pipeline=",".join(step.label() for step in steps),
            before=before,
            after=ModelSummary.of(loaded),
            passes=records,
            load_seconds=load_seconds,
            optimize_seconds=optimize_seconds,
            output=str(output_path) if output_path else None,
            stages=list(ctx.stages),
        )
        start = time.perf_counter()
        if output_path is not None:
            _write(loaded, output_path, external_data, reference, options, report)
        elif options is not None:
            candidate = save(loaded, Path(scratch) / "candidate.onnx", external_data=external_data)
            report.validation = _validate(reference, candidate, options)
        report.save_seconds = time.perf_counter() - start
    return OptimizeResult(model=loaded, report=report)


class _OriginalFile:
    """The untouched input model as a file: its own path, or a copy written on first use."""

    def __init__(self, source: ModelSource, scratch: Path) -> None:
        self._source = source
        self._scratch = scratch
        self._path: Path | None = None

    def path(self) -> Path:
        if self._path is None:
            if isinstance(self._source, str | os.PathLike):
                self._path = Path(self._source)
            else:
                self._path = save(load(self._source), self._scratch / "original.onnx")
        return self._path


def _validate(reference: Path, candidate: Path, options: ValidationOptions):
    from onnxslim.validate import validate

    return validate(reference, candidate, **asdict(options))


def _write(
    model: Model,
    output: Path,
    external_data: bool | None,
    reference: Path | None,
    options: ValidationOptions | None,
    report: OptimizeReport,
) -> None:
    """Save; with validation, check the staged files first, so that a failing model is never
    written."""
    with StagedWrite(output, protected=model.source_files()) as staged:
        write_staged(model, staged, external_data=external_data)
        if options is not None:
            report.validation = _validate(reference, staged.model_path, options)
            if not report.validation.passed:
                report.after.file_bytes = file_bytes(staged.files())
                report.notes.append(f"{output} was not written: the outputs do not match")
                return
        staged.commit()
        report.written = True
        report.after.file_bytes = file_bytes(staged.files())
