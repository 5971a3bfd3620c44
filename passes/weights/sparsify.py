"""prune-weights: unstructured magnitude pruning, optionally stored sparsely.

Zeroing the smallest weights keeps the graph and its shapes as they are; what it buys is a
smaller file (with ``sparse_storage``) and headroom for runtimes with sparse kernels. Two
sparse forms exist, and ``sparse_format=auto`` takes the smaller for each weight:

* ``coo``: an ONNX sparse initializer, the non-zero values and their int64 linear indices (the
  checker accepts no other index type). Protobuf writes the indices as varints of 1 to 4
  bytes, so a float32 weight shrinks once about half of it is zero; at 80% it is a third.
  onnx's strict shape inference does not type sparse initializers as dense tensors, so check
  such a model with ``onnx.checker`` without ``full_check``; onnxruntime expands them when it
  loads the model.
* ``mask``: the non-zero values and a bit per weight (1/32 of a float32 weight), rebuilt by
  CumSum, Gather and Where, which onnxruntime folds into a dense initializer when it loads
  the model. Smaller than ``coo`` below about 85% sparsity; needs opset 11. Run it last: a
  later fold-constants would fold the weights back to dense ones.

A weight whose sparse forms would not be smaller stays dense, and the note says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import SparseValues
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

__all__ = ["PruneWeights", "sparse_form"]


@register_pass("prune-weights")
@dataclass
class PruneWeights(Pass):
    """Zero the smallest-magnitude weights: a ``sparsity`` fraction per layer (or across all
    layers with ``scope=global``), or all below ``threshold``; ``sparse_storage`` writes the
    pruned weights sparsely (``sparse_format``: an ONNX sparse initializer ``coo``, a bit
    ``mask`` plus the non-zero values, or ``auto``: the smaller).
    """

    lossless = False
    prepare = DEFAULT_PIPELINE

    sparsity: float | None = None
    """Fraction of each layer's weights to zero, in [0, 1)."""
    threshold: float | None = None
    """Zero the weights at or below this magnitude (instead of sparsity=)."""
    scope: Literal["layer", "global"] = "layer"
    """Rank weights per layer, or across all layers."""
    sparse_storage: bool = False
    """Store pruned weights in a smaller sparse form where there is one."""
    sparse_format: Literal["auto", "coo", "mask"] = "auto"
    """Sparse form: ONNX sparse initializer (coo), bit mask, or the smaller (auto)."""
    min_size: int = 256
    """Leave weights with fewer elements alone."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        self._check_options()
        weights = find_weights(graph, self.min_size)
        if not weights:
            ctx.log(f"no weight of {self.min_size} or more elements to prune")
            return False
        limits = self._limits(weights)
        rows, dense = [], []
        names = {name for g in iter_graphs(graph) for name in g.tensors()}
        for weight, limit in zip(weights, limits, strict=True):
            values = weight.values()
            before = _zero_fraction(values)
            if limit is None:
                pruned = _prune_count(values, round(self.sparsity * values.size))
            else:
                pruned = np.where(np.abs(values) <= limit, 0, values).astype(values.dtype)
            weight.constant.values = pruned
            storage, stored = "dense", pruned.nbytes
            if self.sparse_storage:
                storage, stored = self._store(graph, weight, pruned, names)
                if storage == "dense":
                    dense.append(weight)
            rows.append(
                [
                    weight.name,
                    weight.op,
                    "x".join(map(str, values.shape)),
                    round(before, 4),
                    round(_zero_fraction(pruned), 4),
                    storage,
                    stored,
                ]
            )
        ctx.table(
            "prune-weights",
            ["weight", "op", "shape", "zeros before", "zeros after", "storage", "bytes"],
            rows,
        )
        if dense:
            ctx.log(
                f"{len(dense)} weights stay dense: their sparse form would not be smaller "
                f"({', '.join(w.name for w in dense[:5])}{' ...' if len(dense) > 5 else ''})"
            )
        sizes = [int(np.prod(w.constant.shape)) for w in weights]
        zeros = sum(row[4] * size for row, size in zip(rows, sizes, strict=True))
        ctx.log(
            f"{zeros / sum(sizes):.1%} of {sum(sizes)} weights in {len(weights)} layers are zero"
        )
        return True

    def _check_options(self) -> None:
        if (self.sparsity is None) == (self.threshold is None):
            raise PipelineSpecError("prune-weights needs exactly one of sparsity= or threshold=")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise PipelineSpecError(
                f"prune-weights: sparsity must be in [0, 1), got {self.sparsity}"
            )
        if self.threshold is not None and self.threshold < 0:
            raise PipelineSpecError(f"prune-weights: threshold must be >= 0, got {self.threshold}")

    def _store(
        self, graph: gs.Graph, weight: Weight, pruned: np.ndarray, names: set[str]
    ) -> tuple[str, int]:
        """Store the pruned weight in the smallest allowed form; (form, bytes)."""
        sizes = {"dense": pruned.nbytes}
        nonzero = np.count_nonzero(pruned)
        # A sparse initializer is one protobuf message: past 2 GiB it cannot be written,
        # and its values go through Python lists on the way (a few times the weight's size).
        index_bytes = -(-max(int(pruned.size).bit_length(), 1) // 7)  # varint of the last one
        fits = nonzero * (pruned.itemsize + index_bytes) < _COO_LIMIT
        coo = sparse_form(weight.name, pruned) if self.sparse_format != "mask" and fits else None
        if coo is not None:
            sizes["coo"] = coo.ByteSize()
        if self.sparse_format != "coo" and nonzero and int(graph.opset) >= REBUILD_OPSET:
            sizes["mask"] = -(-pruned.size // 8) + nonzero * pruned.itemsize
        form = min(sizes, key=sizes.get)
        if form == "coo":
            weight.constant._values = SparseValues(coo)
        elif form == "mask":
            _replace_by_mask(graph, weight, pruned, names)
        return form, sizes[form]

    def _limits(self, weights: list[Weight]) -> list[float | None]:
        """The magnitude at or below which each weight is zeroed (None: by count per layer)."""
        if self.threshold is not None:
            return [self.threshold] * len(weights)
        if self.scope == "layer":
            return [None] * len(weights)
        magnitudes = np.concatenate([np.abs(w.values()).ravel() for w in weights])
        count = round(self.sparsity * magnitudes.size)
        if count == 0:
            return [-1.0] * len(weights)  # below every magnitude: nothing is zeroed
        limit = float(np.partition(magnitudes, count - 1)[count - 1])
        return [limit] * len(weights)


def _prune_count(values: np.ndarray, count: int) -> np.ndarray:
    """``values`` with exactly its ``count`` smallest magnitudes zeroed.

    The ``count``-th magnitude is found by partitioning the magnitudes (in the weight's own
    type), not by ranking positions: int64 positions would take twice a float32 weight's
    memory, which a weight of hundreds of millions of values cannot spare."""
    pruned = values.copy()
    if count <= 0:
        return pruned
    magnitudes = np.abs(pruned.ravel())
    limit = np.partition(magnitudes, count - 1)[count - 1]
    flat = pruned.reshape(-1)
    below = magnitudes < limit
    flat[below] = 0
    ties = np.flatnonzero(magnitudes == limit)[: count - int(np.count_nonzero(below))]
    flat[ties] = 0
    return pruned


# The largest sparse initializer built (bytes, estimated before building it).
_COO_LIMIT = 2**29


def _zero_fraction(values: np.ndarray) -> float:
    return float(np.count_nonzero(values == 0) / values.size) if values.size else 0.0


def _replace_by_mask(graph: gs.Graph, weight: Weight, pruned: np.ndarray, names: set[str]) -> None:
    """Make the weight's readers read it rebuilt from a bit mask and its non-zero values:
    value ``i`` of the weight is the ``cumsum(mask)[i] - 1``-th non-zero where the mask is set."""
    build = RebuildGraph(weight, names)
    flat = pruned.ravel()
    kept = flat != 0
    mask = build.unpack(pack_bits(kept, 1), 1, flat.size)
    axis = build.constant("axis", np.array(0, np.int32))
    slots = build.op("CumSum", [mask, axis], np.int32)
    slots = build.op("Sub", [slots, build.constant("one", np.array(1, np.int32))], np.int32)
    values = build.constant("nonzero", flat[kept])
    gathered = build.op("Gather", [values, slots], flat.dtype, axis=0)
    present = build.op("Cast", [mask], np.bool_, to=onnx.TensorProto.BOOL)
    zero = build.constant("zero", np.zeros((), flat.dtype))
    dense = build.op("Where", [present, gathered, zero], flat.dtype)
    build.install(graph, build.reshape(dense, pruned.shape))


def sparse_form(name: str, values: np.ndarray) -> onnx.SparseTensorProto:
    """``values`` as a SparseTensorProto with linear int64 indices.

    Values go in the typed fields rather than raw bytes: onnx-graphsurgeon reads sparse
    values only from there, and protobuf packs the indices as varints, smaller than raw int64.
    """
    flat = values.ravel()
    positions = np.flatnonzero(flat)
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    kept = onnx.helper.make_tensor(name, elem_type, [positions.size], flat[positions], raw=False)
    indices = onnx.helper.make_tensor(
        f"{name}_indices", onnx.TensorProto.INT64, [positions.size], positions, raw=False
    )
    return onnx.helper.make_sparse_tensor(kept, indices, list(values.shape))
