"""``distill``: fine-tune a student ONNX model on a teacher's outputs.

>>> from onnxslim.distill import distill
>>> report = distill("model.onnx", "pruned.onnx", "train.npz", output="tuned.onnx",
...                  loss="kl", epochs=10)  # doctest: +SKIP
>>> report.metric_after >= report.metric_before  # doctest: +SKIP
True

Two backends train: ``native`` (the default) differentiates the student's graph itself and
runs forward, loss, backward and optimizer step as one ONNX graph in any onnxruntime build
(CPU, or CUDA with onnxruntime-gpu); ``ort-training`` uses onnxruntime-training where it is
installed. A QDQ student (``onnxslim quantize``) trains its float master weights through its
fake quantization (native only) and comes back as QDQ with the same scales.

Everything that can be refused is checked before training starts: options, a student with
integer-only ops, outputs that do not pair up, data that does not fit, an op without a
gradient rule.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from onnxslim.distill.artifacts import build_artifacts, require_training
from onnxslim.distill.data import TrainingData, load_training_data
from onnxslim.distill.errors import (
    DistillDataError,
    DistillOptionError,
    OutputMismatchError,
    QuantizedStudentError,
)
from onnxslim.distill.losses import (
    CROSS_ENTROPY_OPSET,
    LOSS_KINDS,
    LossGraph,
    LossKind,
    PositionMask,
    build_loss,
)
from onnxslim.distill.metrics import mean_cosine, metric_name, top1
from onnxslim.distill.native import NativeBackend
from onnxslim.distill.optimizers import OPTIMIZERS, OptimizerKind, OptimizerSettings
from onnxslim.distill.ort_training import OrtTrainingBackend
from onnxslim.distill.parameters import native_parameters, ort_training_parameters
from onnxslim.distill.quantized import QuantizedWeights, lower_quantized
from onnxslim.distill.teacher import TeacherTargets
from onnxslim.distill.trainer import EpochRecord, Schedule, TrainingBackend, TrainOptions, train
from onnxslim.distill.training_graph import build_training_graphs, inferred_graph
from onnxslim.distill.versions import default_opset, for_native_training, for_training_runtime
from onnxslim.distill.writeback import write_back
from onnxslim.inputs import input_specs
from onnxslim.model import (
    Model,
    ModelSource,
    iter_graphs,
    load,
    refuse_overwriting_sources,
    save,
    to_proto,
)
from onnxslim.pipeline import PassTable
from onnxslim.runtime import open_session

__all__ = ["DistillOptions", "DistillReport", "distill", "distill_model"]

DataSource = str | os.PathLike | Mapping[str, np.ndarray]

BackendKind = Literal["native", "ort-training"]
BACKENDS: tuple[str, ...] = ("native", "ort-training")
_QUANTIZE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# The input that mask=auto uses: the name transformer exports give the padding mask.
_AUTO_MASK = "attention_mask"


@dataclass(frozen=True)
class DistillOptions:
    """What to match and how to train.

    ``outputs`` names student outputs to match (``name`` or ``student=teacher`` when the names
    differ; default: every float output). ``alpha`` weighs the hard-label cross-entropy that
    ``kl`` adds when the data has ``labels``; ``ce`` trains on the labels alone (the baseline).
    ``mask`` names a student input (``[batch, positions]``, 0 for padding) that weighs the
    positions of matched outputs shaped ``[batch, positions, features]`` in the loss;
    ``auto`` uses an ``attention_mask`` input where the student has one, ``none`` weighs
    every position alike.
    ``freeze`` holds shell-style patterns of initializer names to keep. The learning rate
    rises linearly over the first ``warmup`` share of the steps, then follows ``schedule``.
    ``val_split`` of the samples score each epoch (top-1 for ``kl`` and ``ce``, cosine
    otherwise); ``patience`` epochs without improvement stop training (0: never).
    ``backend``: ``native`` (any onnxruntime; ``provider`` cpu or cuda) or ``ort-training``
    (onnxruntime-training, CPU). ``threads`` per training step (0: onnxruntime's default).
    """

    loss: LossKind = "kl"
    outputs: Sequence[str] = ()
    temperature: float = 4.0
    alpha: float = 0.5
    mask: str = "auto"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    optimizer: OptimizerKind = "adamw"
    weight_decay: float = 0.0
    schedule: Schedule = "cosine"
    warmup: float = 0.05
    freeze: Sequence[str] = ()
    val_split: float = 0.1
    patience: int = 5
    seed: int = 0
    threads: int = 0
    backend: BackendKind = "native"
    provider: str = "cpu"
    progress: bool = True

    def check(self) -> None:
        """DistillOptionError for a value out of range."""
        checks = [
            (self.loss in LOSS_KINDS, f"loss must be one of {', '.join(LOSS_KINDS)}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in ("cosine", "constant"), "schedule must be cosine or constant"),
            (0 <= self.warmup < 1, "warmup must be in [0, 1)"),
            (self.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}"),
            (self.provider in ("cpu", "cuda"), "provider must be cpu or cuda"),
            (
                self.backend == "native" or self.provider == "cpu",
                "the ort-training backend trains on the cpu only; use backend=native for cuda",
            ),
            (self.temperature > 0, "temperature must be positive"),
            (bool(self.mask), "mask must name a student input, or be auto or none"),
            (self.alpha >= 0, "alpha must be zero or positive"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.weight_decay >= 0, "weight_decay must be zero or positive"),
            (0 <= self.val_split < 1, "val_split must be in [0, 1)"),
            (self.patience >= 0, "patience must be zero or positive"),
            (self.threads >= 0, "threads must be zero (onnxruntime's choice) or positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise DistillOptionError(f"distill: {message}")


@dataclass
class DistillReport:
    """What ``distill`` did: the pairing, the data, each epoch, and the score before/after."""

    loss: str
    backend: str
    outputs: list[list[str]]
    metric: str
    parameters: list[str]
    parameter_count: int
    train_samples: int
    val_samples: int
    teacher_cached: bool
    quantized_weights: int = 0
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    metric_before: float | None = None
    stopped_early: bool = False
    build_seconds: float = 0.0
    train_seconds: float = 0.0
    output: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def metric_after(self) -> float | None:
        """The validation score of the weights kept (those of the best epoch)."""
        if self.best_epoch == 0:
            return self.metric_before
        return self.epochs[self.best_epoch - 1].val_metric

    @property
    def seconds_per_epoch(self) -> float:
        return sum(e.seconds for e in self.epochs) / len(self.epochs) if self.epochs else 0.0

    def epoch_table(self) -> PassTable:
        """One row per epoch, as the optimize report and ``onnxslim distill`` show it."""
        return PassTable(
            f"distill ({self.loss}; {self.metric} on {self.val_samples} held-out samples)",
            ["epoch", "train loss", "val loss", self.metric, "lr", "seconds"],
            [
                [e.epoch, e.train_loss, e.val_loss, e.val_metric, e.lr, e.seconds]
                for e in self.epochs
            ],
        )

    def summary(self) -> str:
        """One line: what was trained, for how long, and the score before and after."""

        def percent(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2%}"

        quantized = (
            f", {self.quantized_weights} through fake quantization"
            if self.quantized_weights
            else ""
        )
        return (
            f"trained {len(self.parameters)} weights ({self.parameter_count:,} values{quantized}) "
            f"with {self.backend} for "
            f"{len(self.epochs)} epochs, kept epoch {self.best_epoch}; {self.metric} "
            f"{percent(self.metric_before)} -> {percent(self.metric_after)}"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metric_after"] = self.metric_after
        data["seconds_per_epoch"] = self.seconds_per_epoch
        return data


def _is_quantized(student: Model) -> bool:
    return any(
        node.op in _QUANTIZE_OPS for graph in iter_graphs(student.graph) for node in graph.nodes
    )


def _teacher_model(teacher: ModelSource) -> Model | onnx.ModelProto:
    """The teacher as its session is built from: a loaded Model whatever its size (see
    ``runtime.open_session``), or the ModelProto given."""
    if isinstance(teacher, Model | onnx.ModelProto):
        return teacher
    return load(teacher)


def _teacher_signature(teacher: Model | onnx.ModelProto) -> onnx.ModelProto:
    """The teacher's graph for matching outputs; weights in external files stay there (a
    teacher over 2 GiB fits no ModelProto)."""
    if isinstance(teacher, onnx.ModelProto):
        return teacher
    return to_proto(teacher, keep_external=True)


def _float_outputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return [o for o in proto.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
    ]


def _shape_text(value: onnx.ValueInfoProto) -> str:
    dims = value.type.tensor_type.shape.dim
    return "[" + ", ".join(str(d.dim_value or d.dim_param or "?") for d in dims) + "]"


def _pair_outputs(
    student: onnx.ModelProto, teacher: onnx.ModelProto, requested: Sequence[str]
) -> list[tuple[onnx.ValueInfoProto, str]]:
    """(student output, teacher output name) for each output to match. A requested name may
    also be an intermediate tensor of either model (a layer's hidden states): it is matched
    like an output."""
    pairs = [tuple(item.split("=", 1)) if "=" in item else (item, item) for item in requested]
    student_outputs = _matchable(student, [a for a, _ in pairs])
    teacher_outputs = _matchable(teacher, [b for _, b in pairs])
    if not requested:
        floats = _float_outputs(student)
        if not floats:
            raise OutputMismatchError("the student has no float32 outputs to distill")
        teacher_floats = _float_outputs(teacher)
        if len(floats) == len(teacher_floats) == 1:
            pairs = [(floats[0].name, teacher_floats[0].name)]
        else:
            pairs = [(o.name, o.name) for o in floats]
    matched = []
    for student_name, teacher_name in pairs:
        if student_name not in student_outputs:
            raise OutputMismatchError(
                f"'{student_name}' is neither an output nor a tensor of the student "
                f"(its outputs: {', '.join(o.name for o in student.graph.output)})"
            )
        if teacher_name not in teacher_outputs:
            raise OutputMismatchError(
                f"the teacher has no output or tensor '{teacher_name}' to match the student's "
                f"(its outputs: {', '.join(o.name for o in teacher.graph.output)}); pair them "
                f"with outputs=['{student_name}=<teacher output>']"
            )
        ours, theirs = student_outputs[student_name], teacher_outputs[teacher_name]
        for value, role in ((ours, "student"), (theirs, "teacher")):
            if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise OutputMismatchError(
                    f"the {role}'s output '{value.name}' is not float32; only float32 outputs "
                    "can be distilled"
                )
        a, b = _dims(ours), _dims(theirs)
        if len(a) != len(b) or any(
            isinstance(x, int) and isinstance(y, int) and x and y and x != y
            for x, y in zip(a, b, strict=True)
        ):
            raise OutputMismatchError(
                f"the student's output '{student_name}' has shape {_shape_text(ours)} but the "
                f"teacher's '{teacher_name}' has shape {_shape_text(theirs)}"
            )
        matched.append((ours, teacher_name))
    return matched


def _matchable(proto: onnx.ModelProto, names: Sequence[str]) -> dict[str, onnx.ValueInfoProto]:
    """The graph outputs of ``proto``, and those of ``names`` that are intermediate tensors,
    typed by shape inference."""
    found = {o.name: o for o in proto.graph.output}
    if all(name in found for name in names):
        return found
    graph = inferred_graph(proto.graph, proto.opset_import, proto.ir_version)
    for value in graph.value_info:
        if value.name in names and value.name not in found:
            found[value.name] = value
    return found


def _expose(proto: onnx.ModelProto, values: Sequence[onnx.ValueInfoProto]) -> None:
    """Make the intermediate tensors ``values`` outputs of ``proto`` too (for training only:
    the model written back keeps its own outputs)."""
    present = {o.name for o in proto.graph.output}
    proto.graph.output.extend(v for v in values if v.name not in present)


def _position_mask(
    proto: onnx.ModelProto, matched: Sequence[onnx.ValueInfoProto], option: str
) -> tuple[PositionMask | None, list[str]]:
    """The mask ``option`` names (``auto``: an ``attention_mask`` input, if any) and a note
    saying which outputs it weighs."""
    if option == "none":
        return None, []
    inputs = {value.name: value for value in proto.graph.input}
    name = _AUTO_MASK if option == "auto" else option
    if name not in inputs:
        if option == "auto":
            return None, []
        raise DistillOptionError(
            f"distill: mask '{name}' is not an input of the student (its inputs: "
            f"{', '.join(inputs)})"
        )
    mask = PositionMask(name, len(inputs[name].type.tensor_type.shape.dim))
    weighed = [value.name for value in matched if mask.applies_to(value)]
    if not weighed:
        if option == "auto":
            return None, []
        raise DistillOptionError(
            f"distill: mask '{name}' {_shape_text(inputs[name])} weighs outputs with one more "
            f"axis (the features); none of the matched outputs has {mask.rank + 1}: "
            f"{', '.join(f'{v.name} {_shape_text(v)}' for v in matched)}"
        )
    shown = ", ".join(weighed[:3]) + (" ..." if len(weighed) > 3 else "")
    return mask, [f"the loss leaves out the positions '{name}' masks, in {shown}"]


def _check_labels(data: TrainingData, first: onnx.ValueInfoProto) -> None:
    expected = _dims(first)[1:-1]
    shape = list(data.labels.shape[1:])
    if len(shape) != len(expected) or any(
        e and e != s for e, s in zip(expected, shape, strict=True)
    ):
        raise DistillDataError(
            f"'labels' has shape {list(data.labels.shape)}; the student's output "
            f"'{first.name}' {_shape_text(first)} needs one label per sample and position, "
            f"[N{''.join(f', {d}' for d in expected)}]"
        )


def _label_use(options: DistillOptions, data: TrainingData, opset: int) -> tuple[bool, list[str]]:
    """Whether the loss takes the data's labels, and notes on labels left unused."""
    if options.loss == "ce" and data.labels is None:
        raise DistillDataError("loss=ce trains on hard labels: the data needs a 'labels' array")
    if data.labels is None:
        return False, []
    if options.loss in ("mse", "cosine") or (options.loss == "kl" and options.alpha == 0):
        return False, ["labels ignored: they only join the kl loss with alpha > 0"]
    if opset < CROSS_ENTROPY_OPSET:
        message = f"cross-entropy with labels needs opset ≥ {CROSS_ENTROPY_OPSET}"
        if options.loss == "ce":
            raise DistillOptionError(f"loss=ce: {message}; the student has {opset}")
        return False, [f"labels ignored: {message}"]
    return True, []


def _split(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    held_out = min(max(round(count * fraction), 1 if fraction > 0 else 0), count - 1)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


@dataclass
class _Prepared:
    """What trains: the student converted (and with float masters for quantized weights) for
    the backend, and the teacher as the backend's session runs it."""

    student: onnx.ModelProto
    teacher: onnx.ModelProto
    quantized: QuantizedWeights
    teacher_session: Model | onnx.ModelProto | None = None  # else ``teacher``


def _prepare(teacher: ModelSource, student: Model, options: DistillOptions) -> _Prepared:
    teacher_model = _teacher_model(teacher)
    if options.backend == "ort-training":
        teacher_proto = teacher_model
        if isinstance(teacher_model, Model):
            teacher_proto = teacher_model.to_proto()
        if _is_quantized(student):
            raise QuantizedStudentError(
                "the student is quantized (QuantizeLinear/DequantizeLinear): onnxruntime-training "
                "cannot train through them; use backend='native', or distill before quantizing"
            )
        return _Prepared(
            for_training_runtime(student.to_proto(), "student"),
            for_training_runtime(teacher_proto, "teacher"),
            QuantizedWeights(),
        )
    lowered, quantized = lower_quantized(student.to_proto())
    return _Prepared(
        for_native_training(lowered, "student"),
        _teacher_signature(teacher_model),
        quantized,
        teacher_model,
    )


def _backend(
    prepared: _Prepared,
    loss: LossGraph,
    parameters: list[str],
    options: DistillOptions,
    eval_outputs: list[str],
    scope: contextlib.ExitStack,
) -> tuple[TrainingBackend, list[str], list[str]]:
    """The backend, the parameters it trains, and notes; ``scope`` holds what it opens."""
    if options.backend == "ort-training":
        require_training()
        scratch = Path(scope.enter_context(tempfile.TemporaryDirectory(prefix="onnxslim-distill-")))
        artifacts = build_artifacts(
            prepared.student,
            loss,
            parameters,
            scratch,
            optimizer=options.optimizer,
            weight_decay=options.weight_decay,
            extra_outputs=eval_outputs,
        )
        return OrtTrainingBackend(artifacts, threads=options.threads), parameters, []
    if not parameters:
        raise DistillOptionError(
            "nothing to train: the student has no float32 weights left after freeze="
        )
    graphs = build_training_graphs(
        prepared.student,
        loss,
        parameters,
        OptimizerSettings(kind=options.optimizer, weight_decay=options.weight_decay),
        eval_outputs=eval_outputs,
    )
    notes = []
    if graphs.frozen:
        shown = ", ".join(graphs.frozen[:3]) + (" ..." if len(graphs.frozen) > 3 else "")
        notes.append(
            f"{len(graphs.frozen)} initializers kept as they are (the loss does not depend "
            f"on them): {shown}"
        )
    chosen = set(graphs.parameters)
    initial = {
        t.name: numpy_helper.to_array(t)
        for t in prepared.student.graph.initializer
        if t.name in chosen
    }
    sessions = tuple(
        scope.enter_context(open_session(model, options.provider, threads=options.threads))
        for model in (graphs.step_model, graphs.eval_model)
    )
    backend = NativeBackend(graphs, initial, sessions, device=options.provider)
    return backend, graphs.parameters, notes


def distill_model(
    teacher: ModelSource,
    student: Model,
    data: DataSource | TrainingData,
    options: DistillOptions | None = None,
) -> DistillReport:
    """Train ``student`` in place on ``teacher``'s outputs over ``data``; the report.

    ``data`` is a ``.npz`` (keys: the student's input names, optionally ``labels``), a folder
    of ``<input>.npy``, a dict of arrays, or :class:`TrainingData`; every array holds all
    samples along axis 0, the inputs' batch axis.
    """
    options = options or DistillOptions()
    options.check()
    prepared = _prepare(teacher, student, options)
    pairs = _pair_outputs(prepared.student, prepared.teacher, options.outputs)
    _expose(prepared.student, [value for value, _ in pairs])
    first = pairs[0][0]
    classes = _dims(first)[-1] if options.loss in ("kl", "ce") and _dims(first) else None
    if not isinstance(data, TrainingData):
        data = load_training_data(data, input_specs(prepared.student), classes=classes)
    opset = default_opset(prepared.student)
    use_labels, notes = _label_use(options, data, opset)
    if use_labels:
        _check_labels(data, first)
    if len(data) < 2 and options.val_split > 0:
        raise DistillDataError("the data holds one sample: too few to hold some out for validation")
    train_indices, val_indices = _split(len(data), options.val_split, options.seed)
    choose = ort_training_parameters if options.backend == "ort-training" else native_parameters
    parameters = choose(prepared.student, options.freeze)
    mask, mask_notes = (None, [])
    if options.loss != "ce":
        mask, mask_notes = _position_mask(
            prepared.student, [value for value, _ in pairs], options.mask
        )
    notes += mask_notes
    loss = build_loss(
        [value for value, _ in pairs],
        options.loss,
        opset=opset,
        temperature=options.temperature,
        alpha=options.alpha,
        labels=use_labels,
        mask=mask,
    )
    if not use_labels:
        data = TrainingData(data.inputs, None)
    eval_outputs = [value.name for value, _ in pairs]
    with contextlib.ExitStack() as scope:
        start = time.perf_counter()
        backend, parameters, build_notes = _backend(
            prepared, loss, parameters, options, eval_outputs, scope
        )
        build_seconds = time.perf_counter() - start
        targets = TeacherTargets(
            scope.enter_context(
                open_session(
                    prepared.teacher_session or prepared.teacher,
                    options.provider,
                    expose=[n for _, n in pairs],
                )
            ),
            data,
            [name for _, name in pairs],
            batch_size=options.batch_size,
            progress=options.progress,
        )
        report = DistillReport(
            loss=options.loss,
            backend=options.backend,
            outputs=[[value.name, name] for value, name in pairs],
            metric=metric_name(options.loss, use_labels),
            parameters=[prepared.quantized.stored_name(p) for p in parameters],
            parameter_count=0,
            train_samples=len(train_indices),
            val_samples=len(val_indices),
            teacher_cached=targets.cached,
            quantized_weights=len(prepared.quantized.fake_quantized & set(parameters)),
            build_seconds=build_seconds,
            notes=notes + build_notes,
        )
        start = time.perf_counter()
        result = train(
            backend,
            data,
            targets,
            {value.name: name for value, name in pairs},
            train_indices=train_indices,
            val_indices=val_indices,
            metric=top1 if options.loss in ("kl", "ce") else mean_cosine,
            options=TrainOptions(
                epochs=options.epochs,
                batch_size=options.batch_size,
                lr=options.lr,
                schedule=options.schedule,
                warmup=options.warmup,
                patience=options.patience,
                seed=options.seed,
                progress=options.progress,
            ),
        )
        report.train_seconds = time.perf_counter() - start
    masters = prepared.quantized.masters
    prepared.quantized.write_back(student, result.parameters)
    write_back(student, {k: v for k, v in result.parameters.items() if k not in masters})
    report.parameter_count = int(sum(v.size for v in result.parameters.values()))
    report.epochs = result.epochs
    report.best_epoch = result.best_epoch
    report.metric_before = result.metric_before
    report.stopped_early = result.stopped_early
    if result.best_epoch == 0 and val_indices.size:
        report.notes.append("no epoch beat the student as it was: its weights are unchanged")
    return report


def distill(
    teacher: ModelSource,
    student: ModelSource,
    data: DataSource,
    output: str | os.PathLike | None = None,
    **options: Any,
) -> DistillReport:
    """Distill ``teacher`` into ``student`` over ``data``; write the result to ``output``.

    ``options`` are the fields of :class:`DistillOptions` (``loss``, ``epochs``, ``lr``, ...).
    A student file is never modified (the trained copy goes to ``output`` when given); a
    :class:`Model` is trained in place, as :func:`distill_model` does.
    """
    try:
        settings = DistillOptions(**options)
    except TypeError as exc:
        raise DistillOptionError(f"distill: {exc}") from exc
    model = load(student)
    output_path = Path(output) if output is not None else None
    if output_path is not None:
        refuse_overwriting_sources(model, [output_path])
    report = distill_model(teacher, model, data, settings)
    if output_path is not None:
        save(model, output_path)
        report.output = str(output_path)
    return report
