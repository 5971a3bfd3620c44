"""SmoothQuant: move activation outliers into the weights before quantizing.

For a linear layer ``y = x @ W`` and any positive vector ``s`` over the input channels,
``y = (x / s) @ (diag(s) W)``. With ``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)`` the
channels of ``x / s`` are even (the outliers shrink) and the weights' rows grow where the
activations shrank; ``alpha`` balances the two (0.5 in the paper). Layers that read the same
``x`` (Q, K and V) share one ``s``.

The division goes where it costs nothing when it can: into the LayerNormalization that
produces ``x`` (its scale and bias are divided by ``s``), when nothing but the smoothed layers
reads ``x``. Otherwise a ``Mul`` by ``1 / s`` is inserted, shared by the layers that read
``x``, and kept float. Either way the float model computes the same function, up to float
rounding; quantize calibrates the smoothed model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.quantize.layers import Layer

from onnxslim.calibration import TensorStats
from onnxslim.model import read_constant
from onnxslim.rewrite import STANDARD_DOMAINS, fresh_name

__all__ = ["SmoothGroup", "smoothing_groups", "smooth"]

_LIMIT = 1e4  # the largest factor a channel is scaled by, either way
# An activation has outliers when its widest channel's range exceeds this many times the
# median channel's (LayerNorm outputs of trained transformers: 15-20; without outliers: 2-6).
_OUTLIERS = 8.0


@dataclass
class SmoothGroup:
    """Linear layers that read one activation over its last axis, and share its scales."""

    tensor: gs.Tensor
    layers: list[Layer]


def _smoothable(layer: Layer) -> bool:
    if layer.source is None or layer.weight != 1 or len(layer.source.shape) != 2:
        return False
    if layer.op == "Gemm":
        return not layer.node.attrs.get("transA", 0)
    return layer.op == "MatMul"


def smoothing_groups(layers: Sequence[Layer]) -> list[SmoothGroup]:
    """The layers SmoothQuant applies to (MatMul and Gemm with a 2-D constant weight),
    grouped by the activation they read."""
    groups: dict[str, SmoothGroup] = {}
    for layer in layers:
        if _smoothable(layer):
            tensor = layer.node.inputs[0]
            groups.setdefault(tensor.name, SmoothGroup(tensor, [])).layers.append(layer)
    return list(groups.values())


def _input_rows(layer: Layer, weights: np.ndarray) -> np.ndarray:
    """The weight as ``[input channels, outputs]``."""
    transposed = layer.op == "Gemm" and layer.node.attrs.get("transB", 0)
    return weights.T if transposed else weights


def smooth(
    graph: gs.Graph,
    groups: Sequence[SmoothGroup],
    stats: Mapping[str, TensorStats],
    alpha: float,
) -> tuple[list[SmoothGroup], list[gs.Node]]:
    """Smooth those of ``groups`` whose input has outlier channels, in ``graph``, with the
    per-channel ranges ``stats``; returns the groups smoothed and the Mul nodes inserted (to
    be kept float)."""
    taken = set(graph.tensors()) | {node.name for node in graph.nodes if node.name}
    smoothed, inserted = [], []
    for group in groups:
        channel = stats.get(group.tensor.name)
        if channel is None or channel.channel_max is None:
            continue
        activation = np.maximum(np.abs(channel.channel_min), np.abs(channel.channel_max))
        if activation.max() <= _OUTLIERS * np.median(activation):
            continue  # no outlier channel: smoothing would only cost a Mul
        weights = {id(layer): layer.source.values() for layer in group.layers}
        rows = [
            np.abs(_input_rows(layer, weights[id(layer)])).max(axis=1) for layer in group.layers
        ]
        weight = np.max(rows, axis=0)
        if activation.shape != weight.shape:
            continue
        usable = (activation > 0) & (weight > 0)
        scale = np.ones_like(activation, dtype=np.float64)
        scale[usable] = activation[usable].astype(np.float64) ** alpha / (
            weight[usable].astype(np.float64) ** (1 - alpha)
        )
        scale = np.clip(scale, 1 / _LIMIT, _LIMIT).astype(np.float32)
        for layer in group.layers:
            scaled = _input_rows(layer, weights[id(layer)]) * scale[:, None]
            values = _input_rows(layer, scaled).astype(np.float32)
            layer.node.inputs[1] = gs.Constant(
                fresh_name(f"{layer.source.name}_smoothed", taken), values
            )
        smoothed.append(group)
        if not _fold_into_layernorm(graph, group, scale, taken):
            inserted.append(_divide(graph, group, scale, taken))
    if inserted:
        graph.toposort()
    return smoothed, inserted


def _fold_into_layernorm(
    graph: gs.Graph, group: SmoothGroup, scale: np.ndarray, taken: set[str]
) -> bool:
    """Divide the scale and bias of the LayerNormalization that produces the group's input,
    when only the group's layers read it."""
    tensor = group.tensor
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is None or producer.op != "LayerNormalization":
        return False
    if producer.domain not in STANDARD_DOMAINS or len(producer.inputs) < 2:
        return False
    readers = {id(node) for node in tensor.outputs}
    if readers != {id(layer.node) for layer in group.layers} or tensor in graph.outputs:
        return False
    axis = int(producer.attrs.get("axis", -1))
    rank = len(tensor.shape) if tensor.shape is not None else None
    if axis != -1 and (rank is None or axis != rank - 1):
        return False
    parameters = producer.inputs[1:3]
    if not all(isinstance(p, gs.Constant) for p in parameters):
        return False
    for index, parameter in enumerate(parameters, start=1):
        values = np.broadcast_to(read_constant(parameter), scale.shape) / scale
        producer.inputs[index] = gs.Constant(
            fresh_name(f"{parameter.name}_smoothed", taken), values.astype(np.float32)
        )
    return True


def _divide(graph: gs.Graph, group: SmoothGroup, scale: np.ndarray, taken: set[str]) -> gs.Node:
    tensor = group.tensor
    inverse = gs.Constant(fresh_name(f"{tensor.name}_smooth_scale", taken), 1 / scale)
    smoothed = gs.Variable(fresh_name(f"{tensor.name}_smoothed", taken), tensor.dtype, tensor.shape)
    node = gs.Node(
        "Mul",
        fresh_name(f"{tensor.name}_smooth", taken),
        inputs=[tensor, inverse],
        outputs=[smoothed],
    )
    for layer in group.layers:
        layer.node.inputs[0] = smoothed
    graph.nodes.append(node)
    return node
