"""quantize: integer weights and activations through QuantizeLinear/DequantizeLinear.

The pass stores weights as integer initializers (the file really shrinks) and, unless
``activations=none``, wraps activations in Q/DQ pairs whose ranges come from streaming
calibration (:mod:`onnxslim.calibration`). Placement (see ``graph``) follows the
patterns onnxruntime's CPU provider fuses into QLinearConv, QLinearMatMul, QGemm,
QLinearAdd and MatMulNBits.

BatchNormalization is folded into the convolutions first (the ``fuse-batchnorm`` pass), so
that the folded weights, not the unfolded ones, are what gets quantized.

The accuracy guard (``target_cosine=``) measures, on calibration samples, the cosine
similarity of the quantized model's outputs with the float model's. Below the target, it ranks
layers by how much keeping each one float helps and keeps the most sensitive ones float until
the target is met; the per-layer table says which.

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
import onnx
import onnx_graphsurgeon as gs
from onnxslim.passes.fusions import FuseBatchNorm
from onnxslim.passes.infer_shapes import InferShapes
from onnxslim.passes.quantize.graph import (
    DEFAULT_OPS,
    Layer,
    LayerResult,
    WeightCache,
    WeightConfig,
    find_layers,
    insert_qdq,
    mark_activations,
)
from onnxslim.passes.quantize.numerics import QUANT_TYPES, QuantParams, QuantType, activation_params
from onnxslim.passes.quantize.opset import raise_to_opset21, set_opset

from onnxslim.calibration import (
    CALIBRATION_METHODS,
    TensorStats,
    batched,
    calibrate,
    calibration_samples,
)
from onnxslim.errors import InputDataError, InvalidModelError, OnnxSlimError, PipelineSpecError
from onnxslim.inputs import input_specs
from onnxslim.model import copy_graph, read_constant, to_proto
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass
from onnxslim.runtime import open_session, run
from onnxslim.validate import cosine_similarity, sqnr_db

__all__ = ["Quantize"]

# A tensor whose range reaches beyond this holds sentinels (attention masks of -3.4e38), whose
# quantization step would swallow every real value beside them.
_SENTINEL = 1e6
_GUARD_SAMPLES = 16  # samples the accuracy guard and the per-layer report evaluate on
_TABLE_COLUMNS = ["layer", "op", "weights", "weight SQNR dB", "output SQNR dB", "kept"]


@register_pass("quantize")
class Quantize(Pass):
    """Quantize weights (int8/uint8/int4/int16) and activations with Q/DQ pairs that
    onnxruntime fuses into integer kernels, calibrated on data, with an accuracy guard.

    ``weights``: int8 (symmetric, per output channel), uint8, int16 (opset 21), int4
    (block-wise with ``block_size``, opset 21; MatMul becomes MatMulNBits). ``activations``:
    uint8, int8, int16 or none (weight-only: no calibration). ``calibration``: minmax,
    percentile (``percentile=``) or entropy over ``samples`` samples of ``calib`` (a .npz or a
    folder of .npy/.npz; random inputs with a warning when absent). ``ops`` limits the op
    types, ``exclude`` skips layers by node or output name (fnmatch patterns),
    ``reduce_range`` uses 7-bit weights, ``target_cosine`` keeps the most sensitive layers
    float until the outputs reach that cosine similarity with the float model.
    """

    lossless = False

    weights: Literal["int8", "uint8", "int4", "int16"] = "int8"
    """Weight type: int8 (symmetric), uint8, int16 (opset 21) or int4 (block-wise)."""
    activations: Literal["uint8", "int8", "int16", "none"] = "uint8"
    """Activation type, or none for weight-only quantization (no calibration)."""
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
    target_cosine: float | None = None
    """Keep the most sensitive layers float until the outputs reach this cosine."""
    seed: int = 0
    """Seed for synthesized calibration inputs."""

    def __post_init__(self) -> None:
        self._check_options()

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        static = self.activations != "none"
        weight_type = QUANT_TYPES[self.weights]
        if self.reduce_range and self.weights in ("int8", "uint8"):
            weight_type = weight_type.reduced()
        activation_type = QUANT_TYPES[self.activations] if static else None
        if graph.opset < 13:
            ctx.log(f"opset {graph.opset} has no per-channel DequantizeLinear (13+): not quantized")
            return False
        needs_opset21 = weight_type.needs_opset21 or (static and activation_type.needs_opset21)
        needs_opset21 = needs_opset21 and graph.opset < 21
        before = (int(graph.opset), int(ctx.model.shell.ir_version))
        if needs_opset21:
            blocker = raise_to_opset21(graph, ctx.model)
            if blocker:
                ctx.log(f"{self.weights}/{self.activations} need opset 21: {blocker}")
                return False
            ctx.log("opset raised to 21 (int4 and int16 Q/DQ)")

        fused = FuseBatchNorm().run(graph, ctx)
        if fused:
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
        InferShapes().run(graph, ctx)
        layers, excluded = find_layers(graph, self.ops, self.exclude, static)
        if not layers:
            ctx.log("no layer to quantize (ops: " + ", ".join(self.ops) + ")")
            set_opset(graph, ctx.model, *before)
            return fused

        float_model = to_proto(ctx.model)
        keys = [layer.key for layer in layers]
        try:
            samples = self._samples(
                float_model, ctx, needed=static or self.target_cosine is not None
            )
            params: dict[str, QuantParams] = {}
            if static:
                params = self._calibrate(float_model, graph, layers, samples, activation_type, ctx)
            evaluator = _Evaluator(float_model, samples[:_GUARD_SAMPLES], keys) if samples else None
        except (InputDataError, InvalidModelError) as exc:
            if self.calib is not None:
                raise
            ctx.log(
                "left float: the model cannot run on synthesized calibration inputs "
                f"({exc}); give calib= data"
            )
            set_opset(graph, ctx.model, *before)
            return fused
        builder = _Builds(
            graph, ctx, self, WeightConfig(weight_type, self.per_channel, self.block_size), params
        )

        kept_float: list[str] = []
        if self.target_cosine is not None:
            kept_float = self._guard(builder, evaluator, keys, ctx)
        final, results = builder.build(set(kept_float))
        try:
            if evaluator is None:
                cosine, output_sqnr = None, {}
                with open_session(final):
                    pass
            else:
                cosine, output_sqnr = evaluator.compare(final)
        except OnnxSlimError as exc:
            ctx.log(f"the quantized model does not load in onnxruntime, left float: {exc}")
            set_opset(graph, ctx.model, *before)
            return fused
        except _ShapesChanged as exc:
            ctx.log(f"quantizing changes what the model computes, left float: {exc}")
            set_opset(graph, ctx.model, *before)
            return fused
        builder.commit()
        evaluated = min(len(samples), _GUARD_SAMPLES)
        self._report(ctx, results, excluded, kept_float, output_sqnr, cosine, evaluated)
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
        if self.target_cosine is not None and not 0 < self.target_cosine <= 1:
            raise PipelineSpecError(
                f"quantize(target_cosine={self.target_cosine}): must be in (0, 1]"
            )
        if self.calibration not in CALIBRATION_METHODS:  # reachable through the Python API
            raise PipelineSpecError(f"quantize(calibration={self.calibration!r}): unknown method")

    def _samples(
        self, float_model: onnx.ModelProto, ctx: PassContext, needed: bool
    ) -> Sequence[dict[str, np.ndarray]]:
        if self.calib is None and not needed:
            return []

        def warn(message: str) -> None:
            ctx.log(message)
            warnings.warn(message, stacklevel=4)

        return calibration_samples(float_model, self.calib, self.samples, seed=self.seed, warn=warn)

    def _calibrate(
        self,
        float_model: onnx.ModelProto,
        graph: gs.Graph,
        layers: list[Layer],
        samples: Sequence[Mapping[str, np.ndarray]],
        qtype: QuantType,
        ctx: PassContext,
    ) -> dict[str, QuantParams]:
        marks = mark_activations(graph, layers)
        names = [name for name, alias in marks.items() if alias is None]
        stats = calibrate(float_model, names, samples, histograms=self.calibration != "minmax")
        _include_selectable_constants(graph, names, stats)
        sentinel = [n for n in names if max(-stats[n].minimum, stats[n].maximum) > _SENTINEL]
        # A sum with a sentinel carries it: scores + mask is -3.4e38 wherever the mask is.
        tensors = graph.tensors()
        for name in names:
            producer = tensors[name].inputs[0] if tensors[name].inputs else None
            carries = producer is not None and producer.op in ("Add", "Sub")
            if carries and any(t.name in sentinel for t in producer.inputs):
                sentinel.append(name)
        sentinel = list(dict.fromkeys(sentinel))
        if sentinel:
            ctx.log(
                f"{len(sentinel)} tensor(s) reach beyond +-{_SENTINEL:g} (mask values, not "
                f"activations) and stay float: {', '.join(sentinel[:5])}"
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

    def _guard(
        self, builder: _Builds, evaluator: _Evaluator, keys: list[str], ctx: PassContext
    ) -> list[str]:
        """Keys of the layers to keep float so that the output cosine reaches the target."""
        target = self.target_cosine
        cosine = evaluator.cosine(builder.build(set())[0])
        if cosine >= target:
            ctx.log(f"accuracy guard: cosine {cosine:.6f} >= {target} with every layer quantized")
            return []
        gains = {key: evaluator.cosine(builder.build({key})[0]) for key in keys}
        ranked = sorted(keys, key=lambda key: gains[key], reverse=True)
        kept: list[str] = []
        for key in ranked:
            kept.append(key)
            cosine = evaluator.cosine(builder.build(set(kept))[0])
            if cosine >= target:
                break
        verdict = "reached" if cosine >= target else "NOT reached even with all layers float"
        ctx.log(
            f"accuracy guard: target cosine {target} {verdict} ({cosine:.6f}); "
            f"{len(kept)} layer(s) kept float: {', '.join(kept)}"
        )
        return kept

    def _report(
        self,
        ctx: PassContext,
        results: list[LayerResult],
        excluded: list[str],
        kept_float: list[str],
        output_sqnr: dict[str, float],
        cosine: float | None,
        evaluated: int,
    ) -> None:
        kept = set(kept_float)
        rows = []
        for result in results:
            weights = self.weights if result.weight_sqnr is not None else "-"
            rows.append(
                [
                    result.key,
                    result.op,
                    weights,
                    _rounded(result.weight_sqnr),
                    _rounded(output_sqnr.get(result.key)),
                    "",
                ]
            )
        rows += [[key, "", "float", None, None, "accuracy guard"] for key in kept_float]
        rows += [[key, "", "float", None, None, "excluded"] for key in excluded]
        ctx.table("quantize: per-layer SQNR (float vs quantized)", _TABLE_COLUMNS, rows)
        quantized = len(results)
        mode = f"{self.weights} weights, " + (
            f"{self.activations} activations ({self.calibration} calibration)"
            if self.activations != "none"
            else "weight-only"
        )
        summary = f"quantized {quantized} layer(s): {mode}"
        if kept:
            summary += f"; {len(kept)} kept float by the accuracy guard"
        if cosine is not None:
            summary += f"; output cosine vs float {cosine:.6f} on {evaluated} sample(s)"
            ctx.metric("output_cosine", cosine)
        ctx.log(summary)


def _rounded(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return value
    return round(value, 1)


class _Builds:
    """Builds quantized variants of the graph (all layers, or some kept float) on copies, and
    commits the chosen one to the pass's graph."""

    def __init__(
        self,
        graph: gs.Graph,
        ctx: PassContext,
        options: Quantize,
        config: WeightConfig,
        params: dict[str, QuantParams],
    ) -> None:
        self.graph = graph
        self.ctx = ctx
        self.options = options
        self.config = config
        self.params = params
        self.static = options.activations != "none"
        self.cache = WeightCache()
        self.last: gs.Graph | None = None

    def build(self, keep_float: set[str]) -> tuple[onnx.ModelProto, list[LayerResult]]:
        copy = copy_graph(self.graph)
        layers, _ = find_layers(copy, self.options.ops, self.options.exclude, self.static)
        layers = [layer for layer in layers if layer.key not in keep_float]
        marks = mark_activations(copy, layers) if self.static else {}
        results = insert_qdq(copy, layers, marks, self.params, self.config, self.cache)
        copy.cleanup(remove_unused_graph_inputs=False)
        self.last = copy
        return to_proto(dataclasses.replace(self.ctx.model, graph=copy)), results

    def commit(self) -> None:
        """Make the pass's graph the last variant built."""
        self.graph.nodes = self.last.nodes
        self.graph.inputs = self.last.inputs
        self.graph.outputs = self.last.outputs


def _include_selectable_constants(
    graph: gs.Graph, names: list[str], stats: dict[str, TensorStats]
) -> None:
    """Widen the range of a Where's output by the constants it can select.

    An attention mask is ``Where(padding, -3.4e38, 0)``: calibration data without padding sees
    only zeros, and the quantized mask would then mask nothing. The constants are values the
    tensor takes on other data, so they belong to its range (and a sentinel keeps it float).
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


class _ShapesChanged(Exception):
    """The quantized model computes outputs of other shapes than the float one."""


class _Evaluator:
    """Compares quantized variants with the float model on a few calibration samples.

    The float model runs once, with every layer's output exposed, for both the output cosine
    and the per-layer SQNR."""

    def __init__(
        self, float_model: onnx.ModelProto, samples: list[dict[str, np.ndarray]], keys: list[str]
    ) -> None:
        self.keys = keys
        self.feeds = [feed for feed, _ in batched(samples, input_specs(float_model), len(samples))]
        self.outputs = [o.name for o in float_model.graph.output]
        self.reference = self._run(float_model, keys)

    def _run(
        self, model: onnx.ModelProto, expose: Sequence[str] = ()
    ) -> list[dict[str, np.ndarray]]:
        with open_session(model, expose=expose) as session:
            return [run(session, feed) for feed in self.feeds]

    def cosine(self, model: onnx.ModelProto) -> float:
        """The smallest cosine similarity over float outputs between ``model`` and float."""
        return self._worst_cosine(self._run(model))

    def compare(self, model: onnx.ModelProto) -> tuple[float, dict[str, float]]:
        """The output cosine, and the SQNR of each layer's output (the tensor named by its
        key) against the float model's: the error accumulated up to that layer."""
        results = self._run(model, self.keys)
        for reference, result in zip(self.reference, results, strict=True):
            changed = [n for n in self.outputs if reference[n].shape != result[n].shape]
            if changed:
                raise _ShapesChanged(
                    f"output '{changed[0]}' has shape {list(result[changed[0]].shape)} instead "
                    f"of {list(reference[changed[0]].shape)} (a quantized value sets a size)"
                )
        sqnr = {
            key: sqnr_db(
                np.concatenate([r[key].ravel() for r in self.reference]),
                np.concatenate([r[key].ravel() for r in results]),
            )
            for key in self.keys
            if key in results[0]
            and key in self.reference[0]
            and all(
                r[key].shape == q[key].shape for r, q in zip(self.reference, results, strict=True)
            )
        }
        return self._worst_cosine(results), sqnr

    def _worst_cosine(self, results: list[dict[str, np.ndarray]]) -> float:
        worst = 1.0
        for name in self.outputs:
            if not np.issubdtype(self.reference[0][name].dtype, np.floating):
                continue
            ref = np.concatenate([r[name].ravel() for r in self.reference])
            got = np.concatenate([r[name].ravel() for r in results])
            worst = min(worst, cosine_similarity(ref, got))
        return worst
