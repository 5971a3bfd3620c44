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

from onnxslim.checking import check_model
from onnxslim.errors import ModelSaveError, NothingChangedError
from onnxslim.model import (
    Model,
    ModelSource,
    all_constants,
    constant_nbytes,
    file_bytes,
    load,
    save,
)
from onnxslim.model import refuse_overwriting_sources as _refuse_overwriting_sources
from onnxslim.pipeline import Pass, PassContext, PassManager, PassRecord, Step, flatten_steps
from onnxslim.registry import (
    DEFAULT_PIPELINE,
    load_plugin,
    load_recipe,
    parse_pipeline,
    without_passes,
)

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
    prepare: bool = True,
) -> list[Step]:
    """The steps to run: a spec string, ready-made steps, a recipe file, or the default;
    with ``prepare``, each pass's :meth:`~onnxslim.pipeline.Pass.prepare_steps` go before it."""
    for plugin in plugins:
        load_plugin(plugin)
    if recipe is not None:
        steps = without_passes(load_recipe(recipe), skip)
    elif passes is None or isinstance(passes, str):
        steps = parse_pipeline(passes or DEFAULT_PIPELINE, skip=skip)
    else:
        steps = without_passes(list(passes), skip)
    return with_preparation(steps, skip) if prepare else steps


def with_preparation(steps: Sequence[Step], skip: Sequence[str] = ()) -> list[Step]:
    """``steps`` with the preparation each top-level pass asks for right before it, unless
    the step before already is that preparation."""
    prepared: list[Step] = []
    for step in steps:
        spec = step.prepare_steps() if isinstance(step, Pass) else None
        if spec:
            preparation = parse_pipeline(spec, skip=skip)
            labels = [s.label() for s in preparation]
            if [s.label() for s in prepared[-len(labels) :]] != labels:
                prepared.extend(preparation)
        prepared.append(step)
    return prepared


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
    prepare: bool = True,
    must_change: Sequence[str] = (),
    on_record=None,
) -> OptimizeResult:
    """Load ``model``, run the pipeline, optionally save and validate.

    ``model`` is a path, serialized bytes, a ModelProto (e.g. straight from
    ``torch.onnx.export``; it is copied, never modified) or a :class:`Model`. ``passes`` is a
    spec string (default: the lossless pipeline to a fixed point) or a list of steps.

    With ``output`` the result is written atomically; with ``validate`` as well, it is written
    only if its outputs match the original's under onnxruntime (``report.written`` tells).
    ``target_opset`` lets passes that need a newer opset (e.g. fusing LayerNormalization)
    raise the model's opset when they have something to gain. ``prepare`` runs the lossless
    pipeline before each compression pass (see :meth:`~onnxslim.pipeline.Pass.prepare_steps`).
    ``must_change`` names passes of which at least one must change the model (what a command
    that runs one pass is for): otherwise NothingChangedError says why, and nothing is written.
    """
    steps = resolve_steps(passes, recipe=recipe, skip=skip, plugins=plugins, prepare=prepare)
    options = ValidationOptions() if validate is True else (validate or None)
    output_path = Path(output) if output is not None else None

    start = time.perf_counter()
    loaded = load(model)
    if check_input:
        check_model(loaded, full=False)
    if output_path is not None:
        _refuse_overwriting_sources(loaded, [output_path, _data_path(output_path)])
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
        if must_change:
            _require_change(records, must_change)

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


def _require_change(records: Sequence[PassRecord], names: Sequence[str]) -> None:
    """NothingChangedError when no run of the passes ``names`` changed the model."""
    runs = [r for r in records if r.name.split("(")[0] in names]
    if any(r.changed for r in runs):
        return
    reasons = [note for r in runs for note in r.notes][:2]
    because = f": {'; '.join(reasons)}" if reasons else ""
    raise NothingChangedError(
        f"nothing to do: {' / '.join(names)} changed nothing{because}. Nothing written"
    )


def _data_path(output: Path) -> Path:
    return output.parent / f"{output.name}.data"


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
    """Save, and with validation stage the files so that a failing model is never written."""
    if options is None:
        save(model, output, external_data=external_data)
        report.written = True
        report.after.file_bytes = file_bytes([output, _data_path(output)])
        return
    if not output.parent.is_dir():
        raise ModelSaveError(f"{output.parent}: output folder does not exist")
    with tempfile.TemporaryDirectory(prefix=".onnxslim-", dir=output.parent) as staging:
        staged = save(model, Path(staging) / output.name, external_data=external_data)
        report.validation = _validate(reference, staged, options)
        staged_data = _data_path(staged)
        report.after.file_bytes = file_bytes([staged, staged_data])
        if not report.validation.passed:
            report.notes.append(f"{output} was not written: the outputs do not match")
            return
        if staged_data.exists():
            os.replace(staged_data, _data_path(output))
        os.replace(staged, output)
        report.written = True
