"""quantize: integer weights and activations, checked against a quality floor.

The pass stores weights as integer initializers (the file really shrinks) and quantizes
activations in one of three ways:

* ``dynamic``: ranges measured per input at run time (``dynamic``); the form onnxruntime fuses
  into DynamicQuantizeMatMul, robust to the activation outliers of trained transformers;
* static (``uint8``, ``int8``, ``int16``): Q/DQ pairs with ranges from streaming calibration
  (:mod:`onnxslim.calibration`), placed where onnxruntime fuses them into QLinearConv,
  QLinearMatMul, QGemm, QLinearAdd... (see ``graph``);
* ``none``: weights only.

``auto`` (the default) picks ``dynamic`` for transformers and static uint8 for the rest
(``scheme``). ``smooth=alpha`` migrates activation outliers into the weights first
(SmoothQuant, ``smooth``), exactly in float.

Whatever the scheme, the result is measured on samples held out of calibration (``evaluate``):
cosine similarity with the float model's outputs, top-1 agreement for classifiers, each
judged by a lower confidence bound over the held-out samples (mean less two standard errors;
Wilson for top-1), so that a result is not accepted for being lucky on a few samples. Below
the floor (``min_cosine``, ``min_top1``) the accuracy guard keeps the most sensitive layers float
until it holds (``guard``: sensitivity from one extra run); when nothing short of keeping
the whole model float holds, the pass raises QualityFloorError and nothing is written. A model
that is already quantized is refused unless ``requantize=true``.

Example spec: ``quantize(calib=fixtures/digits_calib.npz, calibration=percentile)``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.convert_opset import ConversionError, convert
from onnxslim.passes.infer_shapes import InferShapes
from onnxslim.passes.quantize.dynamic import insert_dynamic, supports_dynamic
from onnxslim.passes.quantize.evaluate import (
    BATCH,
    HELD_OUT_MAX,
    HeldOut,
    Quality,
    QualityFloor,
    ShapesChanged,
    classifier_outputs,
    probability_outputs,
    split_held_out,
)
from onnxslim.passes.quantize.gptq import hessians
from onnxslim.passes.quantize.graph import (
    LayerResult,
    WeightCache,
    WeightConfig,
    blockwise,
    gather_before_dequantize,
    insert_qdq,
    layer_weight,
    mark_activations,
    resolve_params,
)
from onnxslim.passes.quantize.guard import add_shadows, keep_float_until
from onnxslim.passes.quantize.layers import (
    DEFAULT_OPS,
    Layer,
    column_axis,
    find_layers,
    integer_flow,
    tied_layers,
)
from onnxslim.passes.quantize.numerics import QUANT_TYPES, QuantParams, QuantType, activation_params
from onnxslim.passes.quantize.opset import raise_to_opset21, set_opset
from onnxslim.passes.quantize.scheme import choose_activations
from onnxslim.passes.quantize.smooth import smooth, smoothing_groups

from onnxslim.calibration import (
    CALIBRATION_METHODS,
    TensorStats,
    calibrate,
    calibration_samples,
)
from onnxslim.errors import (
    InputDataError,
    InvalidModelError,
    OnnxSlimError,
    PipelineSpecError,
    QualityFloorError,
)
from onnxslim.model import Model, copy_graph, iter_graphs, read_constant
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import DEFAULT_PIPELINE, register_pass

__all__ = ["Quantize", "AlreadyQuantizedError", "QUANTIZED_OPS"]

# A tensor whose range reaches beyond this holds sentinels (attention masks of -3.4e38), whose
# quantization step would swallow every real value beside them.
_SENTINEL = 1e6
# SQNR in dB of the weight, of the layer's output with only that layer quantized, and of its
# output with every layer quantized (the error accumulated up to it, which the accuracy
# guard's choice starts from); short, for 80 columns.
_TABLE_COLUMNS = ["layer", "op", "type", "weight dB", "alone dB", "model dB", "kept"]
# Ops that mark a model as quantized already.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulNBits",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QGemm",
    }
)
_WORST_SHOWN = 5
_MIN_COSINE = 0.99
_INT4_MIN_COSINE = 0.90
# The SmoothQuant alpha tried when a transformer's dynamic result misses the floor (high:
# dynamic ranges absorb outliers per input, so most of them may move into the weights).
_AUTO_SMOOTH = 0.8
_SMOOTH_SAMPLES = 64  # calibration samples the per-channel ranges for smoothing come from


class AlreadyQuantizedError(OnnxSlimError):
    """The model already holds quantized ops; quantizing it again would stack the errors of
    both quantizations (exit code 2, as for any input the command cannot take)."""


@register_pass("quantize")
class Quantize(Pass):
    """Quantize weights and activations to integers that onnxruntime runs as integer kernels,
    and check the result against a quality floor on held-out samples.

    ``weights``: int8 (symmetric, per output channel), uint8, int16 (opset 21), int4
    (block-wise with ``block_size``; MatMul becomes MatMulNBits; the opset is raised to 21).
    ``activations``: auto (dynamic for transformers, uint8 otherwise), dynamic (ranges per
    input at run time), uint8, int8, int16 (calibrated) or none (weight-only). ``calibration``:
    minmax, percentile (``percentile=``) or entropy over ``samples`` samples of ``calib`` (a
    .npz or a folder of .npy/.npz; random inputs with a warning when absent); samples beyond
    those, or the last quarter, are held out to measure the result. ``smooth=alpha`` migrates
    activation outliers into the weights first (SmoothQuant; 0.5 is typical). ``min_cosine``
    and ``min_top1`` are the floor (classifiers are judged by top-1 agreement); below it the
    most sensitive layers stay float (``guard=false``: fail at once). ``ops``, ``exclude``
    (fnmatch patterns of node or output names), ``per_channel``, ``reduce_range`` (7-bit
    weights) refine; ``requantize=true`` quantizes what is still float in a quantized model.
    """

    lossless = False
    prepare = DEFAULT_PIPELINE

    weights: Literal["int8", "uint8", "int4", "int16"] = "int8"
    """Weight type: int8 (symmetric), uint8, int16 (opset 21) or int4 (block-wise)."""
    activations: Literal["auto", "dynamic", "uint8", "int8", "int16", "none"] = "auto"
    """Activation scheme: auto (static uint8, else dynamic, whichever meets the floor),
    dynamic (per-batch ranges at run time), a static type, or none (weight-only)."""
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    """How activation ranges are chosen from the calibration data."""
    percentile: float = 99.99
    """Percent of values the percentile method keeps."""
    samples: int = 128
    """Calibration samples to use (rows of the data)."""
    calib: Path | None = None
    """Calibration data (.npz or a folder); without it, random inputs and a warning."""
    ops: list[str] = field(default_factory=lambda: list(DEFAULT_OPS))
    """Op types to quantize."""
    exclude: list[str] = field(default_factory=list)
    """Node or output names (fnmatch patterns) to keep float."""
    per_channel: bool = True
    """One weight scale per output channel (else per tensor)."""
    reduce_range: bool = False
    """7-bit weights, for CPUs without VNNI."""
    block_size: int = 32
    """int4 block size (a power of two, 16 or more for MatMulNBits)."""
    rounding: Literal["auto", "nearest", "mse", "gptq"] = "auto"
    """Block-wise weights: nearest, mse (clipping searched per block, data-free), gptq
    (errors compensated on calib data); auto: gptq with calib, else mse."""
    blockwise: bool = False
    """int8/uint8 MatMul weights block-wise, weight-only (onnxruntime's MatMulNBits, 8 bits)."""
    zero_points: bool = False
    """Block-wise weights asymmetric, a zero point per block: all levels for lopsided blocks."""
    embeddings: bool = False
    """Quantize Gather tables in weight-only modes (dequantized whole on every call)."""
    smooth: float | None = None
    """SmoothQuant strength alpha in [0, 1]: move activation outliers into the weights."""
    min_cosine: float | None = None
    """Quality floor: held-out output cosine with the float model (default 0.99, int4 0.90),
    met by its lower bound (mean - 2 standard errors over the held-out samples)."""
    min_top1: float | None = 0.98
    """Quality floor: held-out top-1 agreement, for classifier-like outputs, met by its Wilson
    lower bound (capped at what full agreement on the held-out samples can show)."""
    guard: bool = True
    """Keep the least accurate layers float until the floor is met (else fail)."""
    requantize: bool = False
    """Quantize what is still float in an already quantized model."""
    seed: int = 0
    """Seed for synthesized calibration inputs."""

    def __post_init__(self) -> None:
        self._check_options()

    def floor(self) -> QualityFloor:
        """The quality the result must keep: ``min_cosine`` (by default 0.99, or 0.90 for
        int4 weights, whose 16 levels cannot do better on most layers) and ``min_top1``."""
        default = _INT4_MIN_COSINE if self.weights == "int4" else _MIN_COSINE
        return QualityFloor(default if self.min_cosine is None else self.min_cosine, self.min_top1)

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        self._refuse_quantized(graph)
        original = copy_graph(graph)
        versions = (int(graph.opset), int(ctx.model.shell.ir_version))

        def untouched(reason: str) -> bool:
            ctx.log(reason)
            graph.nodes, graph.inputs, graph.outputs = (
                original.nodes,
                original.inputs,
                original.outputs,
            )
            set_opset(graph, ctx.model, *versions)
            return False

        InferShapes().run(graph, ctx)
        candidates, _ = find_layers(graph, self.ops, self.exclude, static=False)
        activations, reason = self._scheme(graph, candidates)
        if not self._opset_for(activations, graph, ctx):
            return untouched(f"not quantized: {ctx.notes.pop()}")
        layers, excluded = self._layers(graph, activations)
        self._note_float_weights(graph, activations, ctx)
        if activations == "dynamic":
            unsupported = [k for k in _keys(candidates) if k not in _keys(layers)]
            if unsupported:
                ctx.log(
                    f"{len(unsupported)} layer(s) have no dynamic integer kernel and stay float "
                    f"(use activations=uint8 for them): {', '.join(unsupported[:_WORST_SHOWN])}"
                )
        if not layers:
            return untouched("no layer to quantize (ops: " + ", ".join(self.ops) + ")")
        floor = self.floor()
        try:
            data = self._data(ctx, activations)
            attempt = self._attempt(graph, ctx, data, activations, self.smooth)
            if not attempt.quality.meets(floor) and self._smooth_may_help(activations):
                retry = self._attempt(graph, ctx, data, activations, _AUTO_SMOOTH)
                ctx.log(
                    f"{activations} activations alone: {attempt.quality.describe()}, below the "
                    f"floor; with smooth={_AUTO_SMOOTH}: {retry.quality.describe()}"
                )
                if retry.quality.score(floor) > attempt.quality.score(floor):
                    attempt = retry
            if not attempt.quality.meets(floor):
                self._keep_float(attempt, floor, data, ctx)
        except _CannotCalibrate as exc:
            if self.calib is not None:
                raise exc.error from None
            return untouched(
                "left float: the model cannot run on synthesized calibration inputs "
                f"({exc.error}); give calib= data"
            )
        except ShapesChanged as exc:
            return untouched(f"quantizing changes what the model computes, left float: {exc}")
        except QualityFloorError:
            untouched("below the quality floor: nothing quantized")
            raise
        except (InputDataError, InvalidModelError) as exc:
            return untouched(f"the quantized model does not run in onnxruntime, left float: {exc}")
        attempt.builds.commit(graph)
        # Shapes in the file let onnxruntime fuse more (SkipLayerNormalization needs them).
        ctx.model.keep_value_info = True
        scheme = f"{activations} activations ({reason})" if self.activations == "auto" else ""
        self._report(ctx, attempt, excluded, scheme, len(data.calibration))
        return True

    # ----------------------------------------------------------------------------- steps

    def _check_options(self) -> None:
        unknown = [op for op in self.ops if op not in DEFAULT_OPS]
        if unknown:
            raise PipelineSpecError(
                f"quantize(ops=...): cannot quantize {unknown[0]!r}; "
                f"choose among {'|'.join(DEFAULT_OPS)}"
            )
        if not 0 < self.percentile <= 100:
            raise PipelineSpecError(f"quantize(percentile={self.percentile}): must be in (0, 100]")
        if self.samples < 1:
            raise PipelineSpecError(f"quantize(samples={self.samples}): must be at least 1")
        if self.block_size < 2 or self.block_size & (self.block_size - 1):
            raise PipelineSpecError(
                f"quantize(block_size={self.block_size}): must be a power of two (16 or more "
                "for onnxruntime's MatMulNBits)"
            )
        for name in ("min_cosine", "min_top1"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise PipelineSpecError(f"quantize({name}={value}): must be in [0, 1]")
        if self.smooth is not None and not 0 < self.smooth < 1:
            raise PipelineSpecError(
                f"quantize(smooth={self.smooth}): SmoothQuant's alpha must be in (0, 1); "
                "0.5 is typical"
            )
        if self.activations == "dynamic" and self.weights not in ("int8", "uint8"):
            raise PipelineSpecError(
                f"quantize(weights={self.weights}, activations=dynamic): dynamic integer "
                "MatMuls take int8 or uint8 weights; use activations=none for int4/int16"
            )
        if self.blockwise and self.activations not in ("auto", "none"):
            raise PipelineSpecError(
                f"quantize(blockwise=true, activations={self.activations}): block-wise weights "
                "are weight-only (MatMulNBits); use activations=none"
            )
        if self.zero_points and self.weights != "int4" and not self.blockwise:
            raise PipelineSpecError(
                f"quantize(zero_points=true, weights={self.weights}): zero points per block are "
                "for block-wise weights; use weights=int4 or blockwise=true"
            )
        if self.calibration not in CALIBRATION_METHODS:  # reachable through the Python API
            raise PipelineSpecError(f"quantize(calibration={self.calibration!r}): unknown method")

    def _refuse_quantized(self, graph: gs.Graph) -> None:
        found = [n.op for g in iter_graphs(graph) for n in g.nodes if n.op in QUANTIZED_OPS]
        if found and not self.requantize:
            raise AlreadyQuantizedError(
                f"the model is already quantized ({len(found)} {found[0]} and similar nodes): "
                "quantizing it again would stack quantization errors and grow the file; "
                "quantize the float original, or give requantize=true to quantize only what "
                "is still float"
            )

    def _scheme(self, graph: gs.Graph, layers: list[Layer]) -> tuple[str, str]:
        if self.activations != "auto":
            return self.activations, "as asked"
        if self.weights not in ("int8", "uint8"):
            return "none", f"{self.weights} weights are weight-only"
        if self.blockwise:
            return "none", "block-wise weights are weight-only"
        return choose_activations(graph, layers)

    def _opset_for(self, activations: str, graph: gs.Graph, ctx: PassContext) -> bool:
        """Raise the opset to what the types need (13 for per-channel DequantizeLinear, 21 for
        int4 and int16); False, with a note, when the model cannot be raised."""
        weight_type = QUANT_TYPES[self.weights]
        needed = 13
        if weight_type.needs_opset21 or activations == "int16" or self.blockwise:
            needed = 21
        opset = int(graph.opset)
        if opset >= needed:
            return True
        if needed == 21 and raise_to_opset21(graph, ctx.model) is None:
            ctx.log(f"opset raised from {opset} to 21 for {self.weights}/{activations}")
            return True
        try:
            convert(ctx.model, needed, log=ctx.log)
        except ConversionError as exc:
            ctx.log(f"{self.weights}/{activations} need opset {needed}: {exc}")
            return False
        ctx.log(f"opset converted from {opset} to {needed} for {self.weights}/{activations}")
        return True

    def _layers(self, graph: gs.Graph, activations: str) -> tuple[list[Layer], list[str]]:
        """The layers to quantize under ``activations``, and those ``exclude`` names."""
        layers, excluded = find_layers(graph, self.ops, self.exclude, static=_static(activations))
        if activations == "none" and not self.embeddings:
            layers = [layer for layer in layers if layer.op != "Gather"]
        tied = {id(layer) for layer in tied_layers(graph, layers)}
        layers = [layer for layer in layers if id(layer) not in tied]
        if _static(activations):
            layers = integer_flow(graph, layers)
        if activations == "dynamic":
            layers = [layer for layer in layers if supports_dynamic(layer) or layer.op == "Gather"]
            for layer in layers:
                if layer.op == "Gather":
                    # A scale per column (hidden channel): trained embeddings have outlier
                    # channels (MiniLM's position table: 39 dB against 15 dB with one scale),
                    # and the rows read are dequantized after the Gather all the same.
                    layer.axis = column_axis(layer)
        return layers, excluded

    def _note_float_weights(self, graph: gs.Graph, activations: str, ctx: PassContext) -> None:
        """Say which weight layers ``_layers`` keeps float on purpose, and why."""
        layers, _ = find_layers(graph, self.ops, self.exclude, static=_static(activations))
        if activations == "none" and not self.embeddings:
            tables = [layer.key for layer in layers if layer.op == "Gather"]
            if tables:
                ctx.log(
                    f"{len(tables)} Gather table(s) (embeddings) stay float: a "
                    "DequantizeLinear before a Gather dequantizes the whole table on every "
                    "call (embeddings=true quantizes them)"
                )
            layers = [layer for layer in layers if layer.op != "Gather"]
        tied = tied_layers(graph, layers)
        if tied:
            ctx.log(
                f"{len(tied)} layer(s) share their weight with a reader that is not quantized "
                "the same way (tied embedding and lm_head) and stay float, stored once: "
                + ", ".join(layer.key for layer in tied[:_WORST_SHOWN])
            )

    def rounding_method(self) -> str:
        """How block-wise weights are rounded: ``rounding``, or for auto gptq when there is
        calibration data and the data-free clipping search otherwise."""
        if self.rounding != "auto":
            return self.rounding
        return "gptq" if self.calib is not None else "mse"

    def _smooth_may_help(self, activations: str) -> bool:
        """Whether to retry a transformer's result with SmoothQuant: only for the scheme that
        ``auto`` chose, when smoothing was not asked for either way."""
        return (
            self.guard
            and self.activations == "auto"
            and self.smooth is None
            and activations == "dynamic"
        )

    def _data(self, ctx: PassContext, activations: str) -> _Data:
        """The float model and its samples, split into calibration and held-out ones.

        Dynamic ranges span the whole input, so that scheme is measured one sample at a time,
        as a batch of one runs it."""
        # A Model, not a ModelProto: sessions are built from it whatever its size (a proto
        # cannot hold more than 2 GiB).
        float_model = dataclasses.replace(ctx.model, graph=copy_graph(ctx.model.graph))
        try:
            calibrated = activations != "none" or self.rounding_method() == "gptq"
            samples = self._samples(float_model, ctx, calibrated=calibrated)
            calibration, held_out, disjoint = split_held_out(samples, self.samples)
            batch = 1 if activations == "dynamic" else BATCH
            held = HeldOut(float_model, held_out, batch)
        except (InputDataError, InvalidModelError) as exc:
            raise _CannotCalibrate(exc) from exc
        if not disjoint:
            ctx.log("one sample only: the result is measured on the calibration sample itself")
        held.classifiers = classifier_outputs(ctx.model.graph)
        held.probabilities = probability_outputs(ctx.model.graph) - held.classifiers
        return _Data(float_model, calibration, held)

    def _attempt(
        self,
        graph: gs.Graph,
        ctx: PassContext,
        data: _Data,
        activations: str,
        alpha: float | None,
    ) -> _Attempt:
        """Quantize a copy of ``graph`` (smoothed first with ``alpha``) with every layer, and
        measure it on the held-out samples."""
        work = copy_graph(graph)
        model = dataclasses.replace(ctx.model, graph=work)
        layers, _ = self._layers(work, activations)
        float_only: list[str] = []
        if alpha is not None:
            float_only = self._smooth(work, data, layers, alpha, ctx)
            layers, _ = self._layers(work, activations)
        params: dict[str, QuantParams] = {}
        if _static(activations):
            qtype = QUANT_TYPES[activations]
            source = model if alpha is not None else data.float_model
            kept = [layer for layer in layers if layer.key not in float_only]
            params = self._calibrate(source, work, kept, data.calibration, qtype, ctx)
        weight_type = QUANT_TYPES[self.weights]
        if self.reduce_range and self.weights in ("int8", "uint8"):
            weight_type = weight_type.reduced()
        config = WeightConfig(
            weight_type,
            self.per_channel,
            self.block_size,
            self.blockwise,
            self.rounding_method(),
            self.zero_points,
        )
        builds = _Builds(work, model, self, activations, config, params, float_only)
        if config.rounding == "gptq":
            kept = [layer for layer in layers if layer.key not in float_only]
            source = model if alpha is not None else data.float_model
            builds.cache.hessians = self._hessians(source, kept, config, data, ctx)
        keys = [layer.key for layer in layers if layer.key not in float_only]
        shadows, pairs = builds.shadows()
        final, results = builds.build(set())
        quality, local, output_sqnr = data.held.profile(shadows, final, pairs, keys)
        return _Attempt(builds, keys, activations, alpha, results, quality, local, output_sqnr)

    def _samples(
        self, float_model: Model, ctx: PassContext, calibrated: bool
    ) -> Sequence[dict[str, np.ndarray]]:
        def warn(message: str) -> None:
            if calibrated:
                ctx.log(message)
                warnings.warn(message, stacklevel=5)
            else:
                ctx.log(
                    "no calib data: the result is measured on synthesized inputs (give calib= "
                    "data for a meaningful check)"
                )

        count = self.samples + HELD_OUT_MAX
        return calibration_samples(float_model, self.calib, count, seed=self.seed, warn=warn)

    def _smooth(
        self,
        graph: gs.Graph,
        data: _Data,
        layers: list[Layer],
        alpha: float,
        ctx: PassContext,
    ) -> list[str]:
        """Apply SmoothQuant to ``graph`` in place; the keys of the nodes it added (they stay
        float)."""
        groups = smoothing_groups(layers)
        names = [group.tensor.name for group in groups]
        if not names:
            ctx.log("smooth: no MatMul/Gemm with a 2-D constant weight to smooth")
            return []
        samples = data.calibration[:_SMOOTH_SAMPLES]
        stats = _calibrated(data.float_model, names, samples, channels=names)
        smoothed, inserted = smooth(graph, groups, stats, alpha)
        ctx.log(
            f"smooth (alpha {alpha}): {len(smoothed)} of {len(groups)} activation(s) have "
            f"outlier channels and were smoothed, for {sum(len(g.layers) for g in smoothed)} "
            f"layer(s); {len(smoothed) - len(inserted)} folded into their LayerNormalization, "
            f"{len(inserted)} through a float Mul"
        )
        return [node.outputs[0].name for node in inserted]

    def _hessians(
        self,
        float_model: Model,
        layers: list[Layer],
        config: WeightConfig,
        data: _Data,
        ctx: PassContext,
    ) -> dict[tuple, np.ndarray]:
        """GPTQ's input second moments, by weight key, for the block-wise 2-D MatMul weights
        among ``layers`` (a weight read by several inputs sums theirs)."""
        targets = [
            layer
            for layer in layers
            if layer.op == "MatMul"
            and blockwise(layer, config)
            and layer.block_axis == 0
            and len(layer.source.shape) == 2
        ]
        names = list(dict.fromkeys(layer.node.inputs[0].name for layer in targets))
        if not names:
            return {}
        try:
            measured = hessians(float_model, names, data.calibration)
        except (InputDataError, InvalidModelError) as exc:
            raise _CannotCalibrate(exc) from exc
        result: dict[tuple, np.ndarray] = {}
        for layer in targets:
            hessian = measured.get(layer.node.inputs[0].name)
            if hessian is None:
                continue
            key = layer.source.key
            result[key] = result[key] + hessian if key in result else hessian
        ctx.log(
            f"gptq: input statistics of {len(result)} weight(s) from "
            f"{len(data.calibration)} calibration sample(s)"
        )
        return result

    def _calibrate(
        self,
        float_model: Model,
        graph: gs.Graph,
        layers: list[Layer],
        samples: Sequence[Mapping[str, np.ndarray]],
        qtype: QuantType,
        ctx: PassContext,
    ) -> dict[str, QuantParams]:
        marks = mark_activations(graph, layers)
        names = [name for name, alias in marks.items() if alias is None]
        stats = _calibrated(float_model, names, samples, histograms=self.calibration != "minmax")
        _include_selectable_constants(graph, names, stats)
        sentinel = [
            n
            for n in names
            if stats[n].nonfinite or max(-stats[n].minimum, stats[n].maximum) > _SENTINEL
        ]
        # A sum with a sentinel carries it: scores + mask is -3.4e38 wherever the mask is.
        tensors = graph.tensors()
        for name in names:
            producer = tensors[name].inputs[0] if tensors[name].inputs else None
            carries = producer is not None and producer.op in ("Add", "Sub", "Where")
            if carries and any(t.name in sentinel for t in producer.inputs):
                sentinel.append(name)
        sentinel = list(dict.fromkeys(sentinel))
        if sentinel:
            ctx.log(
                f"{len(sentinel)} tensor(s) hold infinities or reach beyond +-{_SENTINEL:g} "
                f"(mask values, not activations) and stay float: {', '.join(sentinel[:5])}"
            )
        # Empty in some sample: a data-dependent size, and onnxruntime's integer kernels crash
        # (segfault) on empty tensors.
        unseen = [n for n in names if stats[n].count == 0 or stats[n].empty]
        if unseen:
            ctx.log(
                f"{len(unseen)} tensor(s) were empty on some calibration data and stay float: "
                f"{', '.join(unseen[:5])}"
            )
        skipped = set(sentinel) | set(unseen)
        return {name: self._params(stats[name], qtype) for name in names if name not in skipped}

    def _params(self, stats: TensorStats, qtype: QuantType) -> QuantParams:
        low, high = stats.range(self.calibration, self.percentile)
        return activation_params(low, high, qtype)

    def _keep_float(
        self, attempt: _Attempt, floor: QualityFloor, data: _Data, ctx: PassContext
    ) -> None:
        """Keep the least accurate layers float until ``attempt`` meets ``floor`` (updating
        it), or raise QualityFloorError."""
        quality, local = attempt.quality, attempt.local
        ranked = sorted(attempt.keys, key=lambda key: _finite(local.get(key)))
        worst = ", ".join(
            f"{key} ({local[key]:.1f} dB)" for key in ranked[:_WORST_SHOWN] if key in local
        )
        misses = "; ".join(quality.misses(floor))
        if not self.guard:
            raise QualityFloorError(
                f"quantize: {misses} on {quality.samples} held-out sample(s), below the floor; "
                f"least accurate layers: {worst}. Nothing written (guard=true keeps such "
                "layers float)"
            )
        builds = attempt.builds
        last: list = [None, None]  # the variant evaluated last: its kept layers, its results

        def evaluate(kept: list[str]) -> Quality:
            model, results = builds.build(set(kept))
            last[:] = [kept, results]
            return data.held.quality(model)

        noise = [10 ** (-_finite(local.get(key)) / 10) for key in ranked]
        found = keep_float_until(ranked, evaluate, floor, quality, noise)
        if found is None:
            raise QualityFloorError(
                f"quantize: {misses} on {quality.samples} held-out sample(s) with every layer "
                "quantized, and keeping layers float does not reach the floor short of the "
                f"whole model; least accurate layers: {worst}. Nothing written: try smooth=0.8, "
                "activations=dynamic, or a lower min_cosine/min_top1"
            )
        ctx.log(
            f"accuracy guard: with every layer quantized, {quality.describe()}, below the floor; "
            f"{len(found.kept)} layer(s) kept float ({found.evaluations} variants evaluated): "
            + ", ".join(found.kept)
        )
        # Usually the variant evaluated last is the one chosen; else build that one again.
        kept, results = last
        if kept != found.kept:
            _, results = builds.build(set(found.kept))
        attempt.results = results
        attempt.quality = found.quality
        attempt.kept = found.kept

    def _report(
        self,
        ctx: PassContext,
        attempt: _Attempt,
        excluded: list[str],
        scheme: str,
        calibrated: int,
    ) -> None:
        local, output_sqnr = attempt.local, attempt.output_sqnr
        rows = [
            [
                result.key,
                result.op,
                self.weights if result.weight_sqnr is not None else "-",
                _rounded(result.weight_sqnr),
                _rounded(local.get(result.key)),
                _rounded(output_sqnr.get(result.key)),
                "",
            ]
            for result in attempt.results
        ]
        rows += [
            [
                key,
                "",
                "float",
                None,
                _rounded(local.get(key)),
                _rounded(output_sqnr.get(key)),
                "accuracy guard",
            ]
            for key in attempt.kept
        ]
        rows += [[key, "", "float", None, None, None, "excluded"] for key in excluded]
        ctx.table(
            "quantize: per-layer SQNR of the weight, of the output with the layer quantized "
            "alone, and in the model with every layer quantized",
            _TABLE_COLUMNS,
            rows,
        )
        activations = attempt.activations
        mode = f"{self.weights} weights, " + {
            "none": "weight-only",
            "dynamic": "dynamic activations",
        }.get(
            activations,
            f"{activations} activations ({self.calibration} calibration on {calibrated} sample(s))",
        )
        if attempt.alpha is not None:
            mode += f", smoothed (alpha {attempt.alpha})"
        summary = f"quantized {len(attempt.results)} layer(s): {mode}"
        if scheme:
            summary += f"; chosen: {scheme}"
        if attempt.kept:
            summary += f"; {len(attempt.kept)} kept float by the accuracy guard"
        ctx.log(summary)
        quality = attempt.quality
        ctx.log(f"held-out quality: {quality.describe()}")
        ctx.metric("scheme", activations + (f"+smooth({attempt.alpha})" if attempt.alpha else ""))
        ctx.metric("held-out cosine", round(quality.cosine, 6))
        ctx.metric("held-out cosine bound", round(quality.cosine_bound, 6))
        if quality.top1 is not None:
            ctx.metric("held-out top-1", round(quality.top1, 6))
            ctx.metric("held-out top-1 bound", round(quality.top1_bound, 6))
        ctx.metric("held-out samples", quality.samples)
        ctx.metric("layers kept float", len(attempt.kept))


def _rounded(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return value
    return round(value, 1)


def _finite(value: float | None) -> float:
    """A SQNR to rank by: a missing or NaN one ranks as the best (nothing known against it)."""
    return math.inf if value is None or math.isnan(value) else value


def _static(activations: str) -> bool:
    return activations not in ("dynamic", "none")


def _keys(layers: list[Layer]) -> list[str]:
    return [layer.key for layer in layers]


class _CannotCalibrate(Exception):
    """The float model could not run on the calibration data (``error`` says why)."""

    def __init__(self, error: OnnxSlimError) -> None:
        super().__init__(str(error))
        self.error = error


def _calibrated(*args, **kwargs) -> dict[str, TensorStats]:
    """:func:`onnxslim.calibration.calibrate`, its data errors set apart from the rest."""
    try:
        return calibrate(*args, **kwargs)
    except (InputDataError, InvalidModelError) as exc:
        raise _CannotCalibrate(exc) from exc


@dataclasses.dataclass
class _Data:
    """The float model, its calibration samples and its held-out ones."""

    float_model: Model
    calibration: Sequence[Mapping[str, np.ndarray]]
    held: HeldOut


@dataclasses.dataclass
class _Attempt:
    """One way of quantizing the model, measured: how it was built and what it achieved."""

    builds: _Builds
    keys: list[str]
    activations: str
    alpha: float | None
    results: list[LayerResult]
    quality: Quality
    local: dict[str, float]
    output_sqnr: dict[str, float]
    kept: list[str] = dataclasses.field(default_factory=list)


class _Builds:
    """Builds quantized variants of the graph (all layers, or some kept float) on copies,
    the float model with shadows for the guard, and commits the chosen variant."""

    def __init__(
        self,
        graph: gs.Graph,
        model: Model,
        options: Quantize,
        activations: str,
        config: WeightConfig,
        params: dict[str, QuantParams],
        float_only: list[str],
    ) -> None:
        self.graph = graph
        self.model = model
        self.options = options
        self.activations = activations
        self.static = activations not in ("dynamic", "none")
        self.config = config
        self.params = params
        self.float_only = set(float_only)
        self.cache = WeightCache()
        self.last: gs.Graph | None = None

    def _layers(self, graph: gs.Graph, keep_float: set[str]) -> list[Layer]:
        layers, _ = self.options._layers(graph, self.activations)
        skipped = keep_float | self.float_only
        layers = [layer for layer in layers if layer.key not in skipped]
        return integer_flow(graph, layers) if self.static and skipped else layers

    def _weight(self, layer: Layer):
        return layer_weight(layer, self.config, self.params, self.static, self.cache)

    def build(self, keep_float: set[str]) -> tuple[Model, list[LayerResult]]:
        copy = copy_graph(self.graph)
        layers = self._layers(copy, keep_float)
        if self.activations == "dynamic":
            dynamic = [layer for layer in layers if supports_dynamic(layer)]
            tables = [layer for layer in layers if not supports_dynamic(layer)]
            results = insert_dynamic(copy, dynamic, self.config, self.cache)
            results += insert_qdq(copy, tables, {}, {}, self.config, self.cache)
        else:
            marks = mark_activations(copy, layers) if self.static else {}
            results = insert_qdq(copy, layers, marks, self.params, self.config, self.cache)
        if not self.static:  # static tables get a Q on the rows instead (see graph)
            gather_before_dequantize(copy)
        copy.cleanup(remove_unused_graph_inputs=False)
        self.last = copy
        return self._model(copy), results

    def shadows(self) -> tuple[Model, dict[str, str]]:
        """The float model with a shadow per layer (see ``guard.add_shadows``)."""
        copy = copy_graph(self.graph)
        layers = self._layers(copy, set())
        if self.activations == "dynamic":
            dynamic = [layer for layer in layers if supports_dynamic(layer)]
            tables = [layer for layer in layers if not supports_dynamic(layer)]
            pairs = add_shadows(copy, dynamic, None, self._weight)
            pairs |= add_shadows(copy, tables, {}, self._weight)
        else:
            marks = mark_activations(copy, layers) if self.static else {}
            tables = {
                layer.source.tensor.name: weight.params
                for layer in layers
                if layer.op == "Gather" and (weight := self._weight(layer)) is not None
            }
            params = resolve_params(marks, self.params, tables)
            pairs = add_shadows(copy, layers, params, self._weight)
        if not self.static:
            # A shadow table is dequantized whole on every run otherwise (MiniLM's: 47 MB).
            gather_before_dequantize(copy)
            # Not cleanup(): the shadows' outputs are read by nothing yet.
            copy.nodes = [node for node in copy.nodes if node.outputs]
        return self._model(copy), pairs

    def _model(self, graph: gs.Graph) -> Model:
        return dataclasses.replace(self.model, graph=graph)

    def commit(self, graph: gs.Graph) -> None:
        """Make ``graph`` the last variant built."""
        graph.nodes = self.last.nodes
        graph.inputs = self.last.inputs
        graph.outputs = self.last.outputs


def _include_selectable_constants(
    graph: gs.Graph, names: list[str], stats: dict[str, TensorStats]
) -> None:
    """Widen the range of a Where's output by the constants it can select.

    An attention mask is ``Where(padding, -3.4e38, 0)``: calibration data without padding sees
    only zeros, and the quantized mask would then mask nothing. The constants are values the
    tensor takes on other data, so they belong to its range (and a sentinel, or an infinity,
    keeps it float).
    """
    tensors = graph.tensors()
    for name in names:
        producer = tensors[name].inputs[0] if tensors[name].inputs else None
        if producer is None or producer.op != "Where":
            continue
        for branch in producer.inputs[1:]:
            if branch.inputs and branch.inputs[0].op == "Constant":  # a Constant node's output
                branch = branch.inputs[0].attrs.get("value")
            if isinstance(branch, gs.Constant):
                stats[name].update(np.asarray(read_constant(branch), dtype=np.float64))
