"""How much each channel of each group matters, by one of four criteria.

* ``l1`` / ``l2``: the norm of the weights that *produce* the channel (a Conv's output filter, a
  Gemm or MatMul column, a depthwise filter), summed over the group's producers. Consumer
  weights are left out on purpose: a channel whose producers are zero contributes nothing
  downstream, whatever its consumers would do with it, and must score lowest.
* ``bn-scale``: the absolute BatchNormalization scale (network slimming); groups without a
  BatchNormalization fall back to ``l1``.
* ``activation``: the mean absolute value of the producers' outputs, after the activation that
  follows them, on calibration data run through onnxruntime.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.prune.groups import POINTWISE
from onnxslim.passes.prune.layout import GroupAnalysis, Layout

from onnxslim.errors import InputDataError
from onnxslim.inputs import input_specs, load_inputs
from onnxslim.model import Model, to_proto
from onnxslim.rewrite import constant_value
from onnxslim.runtime import open_session

__all__ = ["channel_scores", "calibration_feeds"]

_MAX_SAMPLES = 16


def _spread(
    scores: dict[int, np.ndarray], per_index: np.ndarray, layout: Layout, analysis: GroupAnalysis
) -> None:
    """Add a per-index vector along ``layout.axis`` to the scores of the groups it holds."""
    offset = 0
    for segment in layout.segments:
        part = per_index[offset : offset + segment.length].reshape(segment.size, segment.block)
        root = analysis.find(segment.group)
        scores[root] = scores.get(root, 0.0) + part.sum(axis=1)
        offset += segment.length


def _weight_scores(analysis: GroupAnalysis, producer: str, norm: str) -> dict[int, np.ndarray]:
    scores: dict[int, np.ndarray] = {}
    for edit in analysis.edits:
        if edit.producer != producer:
            continue
        values = np.moveaxis(
            constant_value(edit.node.inputs[edit.index]).astype(np.float64), edit.axis, 0
        )
        rows = values.reshape(values.shape[0], -1)
        per_index = np.sqrt((rows**2).sum(axis=1)) if norm == "l2" else np.abs(rows).sum(axis=1)
        _spread(scores, per_index, edit.layout, analysis)
    return scores


def calibration_feeds(model: Model, path: str | Path) -> list[dict[str, np.ndarray]]:
    """Up to 16 samples from a .npz (or folder) for the activation criterion."""
    feeds = load_inputs(path, input_specs(to_proto(model)))
    if not feeds:
        raise InputDataError(f"{path}: holds no samples")
    return feeds[:_MAX_SAMPLES]


def _as_read(tensor: gs.Tensor, analysis: GroupAnalysis) -> gs.Tensor:
    """The tensor after the activation (and normalization) that alone reads ``tensor``: a
    channel that a ReLU always zeroes matters little however large it was before."""
    while len(tensor.outputs) == 1:
        reader = tensor.outputs[0]
        following = reader.outputs[0] if reader.outputs else None
        if reader.op not in (*POINTWISE, "BatchNormalization") or following is None:
            break
        if analysis.layouts.get(following.name) != analysis.layouts.get(tensor.name):
            break
        tensor = following
    return tensor


def _activation_scores(
    analysis: GroupAnalysis, model: Model, feeds: Sequence[dict[str, np.ndarray]]
) -> dict[int, np.ndarray]:
    produced = [
        _as_read(edit.node.outputs[0], analysis)
        for edit in analysis.edits
        if edit.producer == "weight" and edit.node.outputs[0].name in analysis.layouts
    ]
    watched = {tensor.name: analysis.layouts[tensor.name] for tensor in produced}
    names = list(watched)
    totals: dict[str, np.ndarray] = defaultdict(float)
    with open_session(model, expose=names) as session:
        for feed in feeds:
            for name, value in zip(names, session.run(names, feed), strict=True):
                axis = watched[name].axis
                other = tuple(a for a in range(value.ndim) if a != axis)
                totals[name] = totals[name] + np.abs(value.astype(np.float64)).mean(axis=other)
    scores: dict[int, np.ndarray] = {}
    for name, total in totals.items():
        _spread(scores, total / len(feeds), watched[name], analysis)
    return scores


def channel_scores(
    analysis: GroupAnalysis,
    criterion: str,
    model: Model,
    feeds: Sequence[dict[str, np.ndarray]] | None = None,
) -> tuple[dict[int, np.ndarray], list[int]]:
    """Scores per group root (one per channel, higher matters more), and the groups that
    ``bn-scale`` scored by ``l1`` for want of a BatchNormalization."""
    if criterion == "activation":
        return _activation_scores(analysis, model, feeds or []), []
    if criterion in ("l1", "l2"):
        return _weight_scores(analysis, "weight", criterion), []
    scores = _weight_scores(analysis, "bn", "l1")
    fallback = _weight_scores(analysis, "weight", "l1")
    missing = [root for root in fallback if root not in scores]
    for root in missing:
        scores[root] = fallback[root]
    return scores, missing
