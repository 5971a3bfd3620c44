"""cluster-weights: non-uniform weight quantization by k-means (weight clustering).

Each weight is replaced by ``2**bits`` centroids, found by one-dimensional k-means over the
whole tensor or per output channel, and the index of each weight's centroid. The file stores
the indices packed into uint8 (four to a byte for 2 bits, two for 3 and 4 bits) and a float
codebook; a Cast, a short unpacking chain and a Gather (GatherElements per channel) rebuild
the dense weight, which onnxruntime computes once when it loads the model (constant folding),
so inference runs at the speed of the dense model. With ``fold=true`` the clustered values
are written back as a dense float weight instead: no smaller, but compressible, and readable
by any runtime or tool.

Run it last: a later fold-constants would fold the rebuilt weights back into dense ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnxslim.passes.weights.storage import (
    REBUILD_OPSET,
    RebuildGraph,
    Weight,
    find_weights,
    pack_bits,
)

from onnxslim.errors import PipelineSpecError
from onnxslim.model import iter_graphs
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import DEFAULT_PIPELINE, register_pass
from onnxslim.validate import sqnr_db

__all__ = ["ClusterWeights", "kmeans_1d"]

# Centroids are fitted on at most this many values per channel (all are assigned).
_ASSIGN_CHUNK = 1 << 22  # values assigned to centroids at once
_FIT_SAMPLE = 1 << 16
# Indices of so many bits are stored this many bits wide (8 // width to a byte).
_PACK_WIDTHS = {2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}


@register_pass("cluster-weights")
@dataclass
class ClusterWeights(Pass):
    """Cluster each weight into ``2**bits`` float centroids (bits 2-8, per tensor or
    ``per_channel``), stored as bit-packed uint8 indices plus a codebook that a Gather reads
    when the model loads, or folded back to dense float weights with ``fold=true``.
    """

    lossless = False
    prepare = DEFAULT_PIPELINE

    bits: int = 4
    """Index width: 2**bits centroids per codebook (2 to 8)."""
    per_channel: bool = False
    """One codebook per output channel."""
    fold: bool = False
    """Write the clustered values back as dense float weights."""
    iterations: int = 20
    """k-means iterations."""
    min_size: int = 256
    """Leave weights with fewer elements alone."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        if not 2 <= self.bits <= 8:
            raise PipelineSpecError(f"cluster-weights: bits must be 2 to 8, got {self.bits}")
        if self.iterations < 1:
            raise PipelineSpecError("cluster-weights: iterations must be at least 1")
        if not self.fold and int(graph.opset) < REBUILD_OPSET:
            ctx.log(
                f"opset {graph.opset} lacks GatherElements: use fold=true or convert-opset to "
                f"{REBUILD_OPSET} or later first"
            )
            return False
        weights = find_weights(graph, self.min_size)
        if not weights:
            ctx.log(f"no weight of {self.min_size} or more elements to cluster")
            return False
        names = {name for g in iter_graphs(graph) for name in g.tensors()}
        rows, skipped = [], []
        for weight in weights:
            values = weight.values()
            axis = weight.channel_axis if self.per_channel else None
            codebook, indices = _cluster(values, axis, 1 << self.bits, self.iterations)
            clustered = _rebuild(codebook.astype(values.dtype), indices, values.shape, axis)
            before = values.nbytes
            width = _PACK_WIDTHS[self.bits]
            packed = pack_bits(indices, width)
            lookup_bytes = packed.nbytes + codebook.size * values.itemsize
            if not self.fold and lookup_bytes >= before:
                skipped.append(weight.name)
                continue
            if self.fold:
                weight.constant.values = clustered
                after = clustered.nbytes
            else:
                book = codebook.astype(values.dtype)
                _replace_by_lookup(graph, weight, book, packed, width, indices.shape, names)
                after = lookup_bytes
            rows.append(
                [
                    weight.name,
                    weight.op,
                    "x".join(map(str, values.shape)),
                    _finite(sqnr_db(values, clustered)),
                    before,
                    after,
                ]
            )
        ctx.table(
            f"cluster-weights ({1 << self.bits} centroids "
            f"{'per channel' if self.per_channel else 'per tensor'})",
            ["weight", "op", "shape", "SQNR dB", "bytes before", "bytes after"],
            rows,
        )
        if skipped:
            ctx.log(
                f"left dense, as indices and codebook would not be smaller: {', '.join(skipped)}"
            )
        if not rows:
            return False
        before, after = sum(r[4] for r in rows), sum(r[5] for r in rows)
        ctx.log(f"{len(rows)} weights clustered: {before} -> {after} bytes")
        return True


def _finite(value: float) -> float | None:
    """A table cell: rounded, or None for an exact (infinite-SQNR) reconstruction."""
    return round(float(value), 2) if np.isfinite(value) else None


def kmeans_1d(values: np.ndarray, clusters: int, iterations: int) -> np.ndarray:
    """Sorted centroids ``[rows, clusters]`` of each row of ``values`` (k-means, Lloyd).

    Initialised at quantiles, so centroids crowd where weights do. Rows are solved together:
    each row is shifted by a multiple of a span wider than all values, which turns the
    per-row nearest-centroid search into one ``searchsorted`` over all rows.
    """
    rows = values.shape[0]
    data = values.astype(np.float64)
    if data.shape[1] > _FIT_SAMPLE:
        pick = np.random.default_rng(0).choice(data.shape[1], _FIT_SAMPLE, replace=False)
        data = data[:, np.sort(pick)]
    centroids = np.quantile(data, np.linspace(0, 1, clusters), axis=1).T
    for _ in range(iterations):
        labels = _assign(data, centroids)
        flat = (labels + np.arange(rows)[:, None] * clusters).ravel()
        sums = np.bincount(flat, data.ravel(), rows * clusters).reshape(rows, clusters)
        counts = np.bincount(flat, None, rows * clusters).reshape(rows, clusters)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids):
            break
        centroids = np.sort(updated, axis=1)
    return centroids


def _assign(data: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each value; centroids sorted per row."""
    rows, clusters = centroids.shape
    span = 2 * max(float(np.abs(data).max(initial=0)), float(np.abs(centroids).max())) + 1
    shift = np.arange(rows)[:, None] * span
    midpoints = ((centroids[:, 1:] + centroids[:, :-1]) / 2 + shift).ravel()
    found = np.searchsorted(midpoints, (data + shift).ravel()).reshape(data.shape)
    return found - np.arange(rows)[:, None] * (clusters - 1)


def _cluster(
    values: np.ndarray, axis: int | None, clusters: int, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    """(codebook, uint8 indices): codebook ``[K]`` and indices shaped like ``values`` per
    tensor; per channel, codebook ``[C, K]`` and indices ``[C, M]`` with the channel first."""
    rows = values.reshape(1, -1) if axis is None else _channel_rows(values, axis)
    centroids = kmeans_1d(rows, clusters, iterations)
    indices = _assign_in_chunks(rows, centroids)
    if axis is None:
        return centroids[0], indices.reshape(values.shape)
    return centroids, indices


def _assign_in_chunks(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """:func:`_assign` as uint8, a few million values at a time: its float64 and int64
    temporaries are 8 bytes a value, which a weight of hundreds of millions cannot afford."""
    indices = np.empty(rows.shape, dtype=np.uint8)
    height = max(1, _ASSIGN_CHUNK // max(rows.shape[1], 1))
    width = min(rows.shape[1], _ASSIGN_CHUNK)
    for top in range(0, rows.shape[0], height):
        band = slice(top, top + height)
        for left in range(0, rows.shape[1], max(width, 1)):
            cells = rows[band, left : left + width].astype(np.float64)
            indices[band, left : left + width] = _assign(cells, centroids[band])
    return indices


def _channel_rows(values: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)


def _rebuild(
    codebook: np.ndarray, indices: np.ndarray, shape: tuple[int, ...], axis: int | None
) -> np.ndarray:
    """The dense weight the lookup graph computes."""
    if axis is None:
        return codebook[indices]
    moved = (shape[axis], *shape[:axis], *shape[axis + 1 :])
    dense = np.take_along_axis(codebook, indices, axis=1).reshape(moved)
    return np.moveaxis(dense, 0, axis)


def _replace_by_lookup(
    graph: gs.Graph,
    weight: Weight,
    codebook: np.ndarray,
    packed: np.ndarray,
    width: int,
    index_shape: tuple[int, ...],
    names: set[str],
) -> None:
    """Make every reader of the weight read the codebook looked up by the unpacked indices."""
    build = RebuildGraph(weight, names)
    count = int(np.prod(index_shape))
    indices = build.unpack(packed, width, count)
    book = build.constant("codebook", codebook)
    shape = tuple(weight.constant.shape)
    if codebook.ndim == 1:
        dense = build.reshape(build.op("Gather", [book, indices], codebook.dtype, axis=0), shape)
    else:
        axis = weight.channel_axis
        rows = build.op(
            "GatherElements", [book, build.reshape(indices, index_shape)], codebook.dtype, axis=1
        )
        dense = build.reshape(rows, (shape[axis], *shape[:axis], *shape[axis + 1 :]))
        if axis != 0:
            perm = [*range(1, axis + 1), 0, *range(axis + 1, len(shape))]
            dense = build.op("Transpose", [dense], codebook.dtype, perm=perm)
    build.install(graph, dense)
