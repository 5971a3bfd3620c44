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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from onnxslim.checking import check_input_model
from onnxslim.errors import NothingChangedError, PipelineSpecError
from onnxslim.inputs import InputSpec, resolve_shapes
from onnxslim.model import (
    Model,
    ModelSource,
    all_constants,
    constant_nbytes,
    file_bytes,
    iter_graphs,
    load,
    save,
    write_staged,
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
from onnxslim.staging import StagedWrite

__all__ = [
    "optimize",
    "set_input_shapes",
    "OptimizeResult",
    "OptimizeReport",
    "ModelSummary",
    "ValidationOptions",
]


@dataclass
class ModelSummary:
    """Size facts of a model at one stage."""

    nodes: int
    initializers: int
    initializer_bytes: int
    file_bytes: int | None = None
    opset: int | None = None
    ir_version: int | None = None

    @classmethod
    def of(cls, model: Model, files: Sequence[Path] = ()) -> ModelSummary:
        constants = list(all_constants(model.graph))
        return cls(
            nodes=model.node_count(),
            initializers=len(constants),
            initializer_bytes=sum(constant_nbytes(t) for t in constants),
            file_bytes=file_bytes(files),
            opset=model.opset,
            ir_version=model.ir_version,
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
    """What ``optimize`` did: sizes before and after, a record per pass, timings, validation.

    ``changed`` is False when no pass changed the model; ``metrics`` gathers the figures that
    passes published (``ctx.metric``), by pass name.
    """

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

    @property
    def changed(self) -> bool:
        return any(record.changed for record in self.passes)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """``{pass name: {metric: value}}``; a pass that ran more than once keeps its last."""
        metrics: dict[str, dict[str, float]] = {}
        for record in self.passes:
            if record.metrics:
                metrics.setdefault(_base_name(record.name), {}).update(record.metrics)
        return metrics

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_seconds"] = self.total_seconds
        data["changed"] = self.changed
        data["metrics"] = self.metrics
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


def _base_name(label: str) -> str:
    """``quantize`` of a record named ``quantize(calib=...)``."""
    return label.split("(", 1)[0]


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
        if passes is not None:
            raise PipelineSpecError(
                "give a recipe or passes, not both: a recipe is a whole pipeline"
            )
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
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    require_change: str | None = None,
    prepare: bool = True,
    on_record=None,
) -> OptimizeResult:
    """Load ``model``, run the pipeline, optionally save and validate.

    ``model`` is a path, serialized bytes, a ModelProto (e.g. straight from
    ``torch.onnx.export``; it is copied, never modified) or a :class:`Model`. ``passes`` is a
    spec string (default: the lossless pipeline to a fixed point) or a list of steps.

    With ``output`` the result is written atomically; with ``validate`` as well, it is written
    only if its outputs match the original's under onnxruntime (``report.written`` tells).
    Validation runs on ``validate.inputs``, else on the data a pass was given (``calib=``),
    else on synthesized inputs.
    ``target_opset`` lets passes that need a newer opset (e.g. fusing LayerNormalization)
    raise the model's opset when they have something to gain. ``input_shapes`` writes static
    shapes into the inputs first (see :func:`set_input_shapes`). With ``require_change`` (a
    pass name), a run in which that pass changed nothing raises NothingChangedError with the
    pass's notes, and nothing is written. ``prepare`` runs the
    lossless pipeline before each compression pass (see
    :meth:`~onnxslim.pipeline.Pass.prepare_steps`).
    """
    steps = resolve_steps(passes, recipe=recipe, skip=skip, plugins=plugins, prepare=prepare)
    options = ValidationOptions() if validate is True else (validate or None)
    if options is not None:
        options = _with_user_data(options, steps, input_shapes)
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
    if input_shapes:
        set_input_shapes(loaded, input_shapes)

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
        if require_change is not None:
            _require_change(report, require_change)
        start = time.perf_counter()
        if output_path is not None:
            _write(loaded, output_path, external_data, reference, options, report)
        elif options is not None:
            candidate = save(loaded, Path(scratch) / "candidate.onnx", external_data=external_data)
            report.validation = _validate(reference, candidate, options)
        report.save_seconds = time.perf_counter() - start
    return OptimizeResult(model=loaded, report=report)


def set_input_shapes(model: Model, shapes: Mapping[str, Sequence[int]]) -> None:
    """Write static shapes into ``model``'s inputs, as onnxsim's ``--overwrite-input-shape``
    does: the sizes replace the inputs' dims, and every symbolic dim they name takes its size
    throughout the graph (other inputs, outputs, intermediate shapes), so shape inference and
    the passes after it see static shapes.

    A shape must keep the input's rank and static dims (InputDataError says which disagree).
    """
    inputs = [t for t in model.graph.inputs if not isinstance(t, gs.Constant)]
    specs = [
        InputSpec(t.name, 0, None if t.shape is None else tuple(_dim(d) for d in t.shape))
        for t in inputs
    ]
    resolve_shapes(specs, {name: list(dims) for name, dims in shapes.items()})  # checks them
    sizes: dict[str, int] = {}
    for spec in specs:
        for dim, size in zip(spec.shape or (), shapes.get(spec.name, ()), strict=False):
            if isinstance(dim, str):
                sizes.setdefault(dim, int(size))
    for tensor in inputs:
        if tensor.name in shapes:
            tensor.shape = [int(d) for d in shapes[tensor.name]]
    for graph in iter_graphs(model.graph):
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Variable) and tensor.shape is not None:
                tensor.shape = [sizes.get(d, d) if isinstance(d, str) else d for d in tensor.shape]


def _dim(dim: Any) -> int | str | None:
    """A dim as InputSpec holds it (graphsurgeon writes unknown dims as None or -1)."""
    if isinstance(dim, str):
        return dim or None
    return None if dim is None or int(dim) < 0 else int(dim)


def _with_user_data(
    options: ValidationOptions,
    steps: Sequence[Step],
    input_shapes: Mapping[str, Sequence[int]] | None,
) -> ValidationOptions:
    """``options`` to validate on the data the user gave: ``inputs``, else a pass's
    calibration data; synthesized inputs take the shapes written into the model."""
    if options.inputs is None:
        calib = next(
            (p.calib for p in flatten_steps(steps) if getattr(p, "calib", None) is not None),
            None,
        )
        if calib is not None:
            return replace(options, inputs=calib, input_shapes=None)
    if options.inputs is None and input_shapes and not options.input_shapes:
        return replace(options, input_shapes={k: list(v) for k, v in input_shapes.items()})
    return options


def _require_change(report: OptimizeReport, name: str) -> None:
    records = [r for r in report.passes if _base_name(r.name) == name]
    if any(record.changed for record in records):
        return
    notes = [note for record in records for note in record.notes]
    reason = "; ".join(notes) if notes else "it found nothing to change"
    label = records[-1].name if records else name
    raise NothingChangedError(f"{label} changed nothing, so nothing was written: {reason}")


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
