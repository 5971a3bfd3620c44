"""prune-channels: structured channel pruning on the exported graph, for any framework's model.

The graph is split into dependency groups (``prune.groups``), each group's channels are
scored (``prune.importance``), the lowest-scoring are chosen per group or across groups,
and producers, consumers and every shape that states a channel count are rewritten
(``prune.surgery``). Groups the analysis does not understand stay whole and are listed
with the reason. Graph inputs and outputs keep their shapes.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
from dataclasses import field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.infer_shapes import InferShapes
from onnxslim.passes.prune.groups import analyze
from onnxslim.passes.prune.importance import calibration_feeds, channel_scores
from onnxslim.passes.prune.layout import ChannelGroup
from onnxslim.passes.prune.shapes import pin_shapes
from onnxslim.passes.prune.surgery import SurgeryError, remove_channels

from onnxslim.checking import check_model
from onnxslim.errors import InvalidModelError, PipelineSpecError
from onnxslim.model import Model, all_constants, copy_graph, stub_proto
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import DEFAULT_PIPELINE, register_pass
from onnxslim.shapes import infer_shapes
from onnxslim.summary import estimate_flops

__all__ = ["PruneChannels", "keep_counts"]

Criterion = Literal["l1", "l2", "bn-scale", "activation"]


@register_pass("prune-channels")
class PruneChannels(Pass):
    """Remove the least important channels of Conv, Gemm and MatMul layers, with everything
    that depends on them.

    ``ratio`` of every prunable group's channels go (``global_ranking`` ranks channels across
    groups instead, by scores normalized per group); ``round_to`` keeps channel counts
    multiples of it, ``min_channels`` keeps at least that many, ``exclude`` lists node-name
    patterns whose groups stay whole. ``criterion=activation`` needs ``calib``, a .npz of
    inputs.
    """

    lossless = False
    prepare = DEFAULT_PIPELINE

    ratio: float = 0.5
    """Share of each group's channels to remove, in [0, 1)."""
    criterion: Criterion = "l1"
    """Channel importance: weight norms (l1, l2), BatchNorm scale, or activation."""
    global_ranking: bool = False
    """Rank channels across groups (scores normalized per group), not per group."""
    round_to: int = 1
    """Keep channel counts multiples of this."""
    min_channels: int = 1
    """Keep at least this many channels per group."""
    exclude: list[str] = field(default_factory=list)
    """Node-name patterns whose groups stay whole."""
    calib: Path | None = None
    """Inputs (.npz) for criterion=activation."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise PipelineSpecError(f"prune-channels: ratio must be in [0, 1), got {self.ratio}")
        if self.round_to < 1 or self.min_channels < 1:
            raise PipelineSpecError("prune-channels: round_to and min_channels must be at least 1")
        if self.criterion == "activation" and self.calib is None:
            raise PipelineSpecError(
                "prune-channels: criterion=activation needs calibration inputs: calib=PATH.npz"
            )

    def prepare_steps(self) -> str | None:
        """The default pipeline, without fuse-batchnorm when BatchNorm scales are the
        criterion (folding them would leave nothing to score)."""
        if self.criterion == "bn-scale":
            return DEFAULT_PIPELINE.replace(",fuse-batchnorm", "")
        return DEFAULT_PIPELINE

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        # Work on a copy (weights are shared, not copied): a graph the surgery cannot make
        # valid is dropped whole and the model stays as it was.
        work = copy_graph(graph)
        trial = dataclasses.replace(ctx.model, graph=work)
        infer = functools.partial(InferShapes().run, work, PassContext(model=trial))
        infer()
        work.toposort()
        before = _cost(trial)
        symbolic = pin_shapes(trial)
        analysis = analyze(work)
        groups = [g for g in analysis.groups.values() if g.sources]
        for group in groups:
            if any(fnmatch.fnmatch(n.name, p) for n in group.members for p in self.exclude):
                group.blocked.append("excluded")
        prunable = [g for g in groups if not g.blocked and g.size > 1]
        if not prunable or self.ratio == 0:
            _group_table(ctx, groups, {}, {})
            ctx.log(f"nothing to prune: {len(prunable)} prunable groups, ratio {self.ratio}")
            return False
        scores, fallback = channel_scores(analysis, self.criterion, trial, self._feeds(trial))
        if fallback:
            ctx.log(f"{len(fallback)} groups have no BatchNormalization: scored by l1 instead")
        keep = self._choose({g.id: scores[g.id] for g in prunable})
        if not keep:
            _group_table(ctx, groups, scores, {})
            ctx.log("every group keeps all its channels at this ratio and rounding")
            return False
        try:
            remove_channels(work, analysis, keep)
            tensors = work.tensors()
            for name, shape in symbolic.items():
                if name in tensors and tensors[name].shape is not None:
                    tensors[name].shape = shape
            infer()
            check_model(trial)
        except (InvalidModelError, SurgeryError) as exc:
            _group_table(ctx, groups, scores, {})
            ctx.log(f"model left untouched: the pruned graph would be invalid ({exc})")
            return False
        after = _cost(trial)
        graph.nodes, graph.inputs, graph.outputs = work.nodes, work.inputs, work.outputs
        _group_table(ctx, groups, scores, keep)
        ctx.table(
            "pruned model",
            ["", "before", "after", "ratio"],
            [
                [name, b, a, round(a / b, 3) if b else None]
                for name, b, a in zip(("parameters", "FLOPs"), before, after, strict=True)
            ],
        )
        ctx.log(
            f"pruned {len(keep)} of {len(groups)} channel groups "
            f"({len(groups) - len(prunable)} unprunable)"
        )
        return True

    def _choose(self, scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """The channels each group keeps (highest scores, in index order), for the groups
        that lose any."""
        counts = keep_counts(
            scores, self.ratio, self.global_ranking, self.round_to, self.min_channels
        )
        return {
            root: np.sort(np.argsort(-scores[root], kind="stable")[:count])
            for root, count in counts.items()
            if count < len(scores[root])
        }

    def _feeds(self, model: Model) -> list[dict[str, np.ndarray]] | None:
        return calibration_feeds(model, self.calib) if self.criterion == "activation" else None


def keep_counts(
    scores: dict[int, np.ndarray],
    ratio: float,
    global_ranking: bool,
    round_to: int = 1,
    min_channels: int = 1,
) -> dict[int, int]:
    """How many channels each group keeps.

    Uniformly, every group loses ``floor(size * ratio)``; with ``global_ranking`` the lowest
    ``ratio`` of all channels go, wherever they are, ranked by scores divided by their group's
    mean (raw magnitudes differ between layers by orders of magnitude). Counts are then raised
    to ``min_channels`` and rounded up to a multiple of ``round_to``, never above the size.
    """
    removed = {root: math.floor(len(values) * ratio) for root, values in scores.items()}
    if global_ranking:
        pooled = [
            (value / (values.mean() or 1.0), root)
            for root, values in scores.items()
            for value in values
        ]
        pooled.sort(key=lambda item: item[0])
        removed = dict.fromkeys(scores, 0)
        for _, root in pooled[: math.floor(len(pooled) * ratio)]:
            removed[root] += 1
    counts = {}
    for root, values in scores.items():
        size = len(values)
        count = max(size - removed[root], min_channels)
        counts[root] = min(size, -(-count // round_to) * round_to)
    return counts


def _cost(model: Model) -> tuple[int, int]:
    """Parameters and estimated FLOPs of the model as it is now."""
    proto = infer_shapes(stub_proto(model), data_prop=True)
    flops = sum(estimate_flops(proto)[0].values())
    return sum(math.prod(t.shape) for t in all_constants(model.graph)), flops


def _group_table(
    ctx: PassContext,
    groups: list[ChannelGroup],
    scores: dict[int, np.ndarray],
    keep: dict[int, np.ndarray],
) -> None:
    rows = [_row(g, scores.get(g.id), keep.get(g.id)) for g in groups]
    ctx.table("channel groups", ["group", "members", "channels", "scores", "status"], rows)


def _row(group: ChannelGroup, scores: np.ndarray | None, kept: np.ndarray | None) -> list:
    names = [n.name or n.op for n in group.members]
    members = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
    after = len(kept) if kept is not None else group.size
    score_range = None
    if scores is not None and len(scores):
        score_range = f"{scores.min():.3g}..{scores.max():.3g}"
    if group.blocked:
        extra = f" (+{len(group.blocked) - 1} more)" if len(group.blocked) > 1 else ""
        status = f"unprunable: {group.blocked[0]}{extra}"
    else:
        status = "pruned" if kept is not None else "kept"
    unit = f" (x{group.unit})" if group.unit > 1 else ""
    return [group.label, members, f"{group.size} -> {after}{unit}", score_range, status]
