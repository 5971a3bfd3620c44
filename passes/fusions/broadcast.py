"""Broadcasting a tensor to run-time sizes, which onnxruntime's fused kernels want where a
graph relied on implicit broadcasting (an attention mask over the query rows, a rotary table
over the batch): the sizes are read with ``Shape`` from the tensors that carry them,
concatenated into a target, and an ``Expand`` broadcasts to it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.rewrite import DimOf, Scope, dim_source

__all__ = ["dim_extent", "expand_to"]


def dim_extent(dim: DimOf, graph: gs.Graph, scope: Scope) -> gs.Variable:
    """A 1-element int64 tensor holding the run-time size of ``dim``, read from the tensor
    that first carries it (``dim_source``)."""
    source = dim_source(dim.tensor, dim.axis)
    extent = gs.Variable(scope.fresh_name(f"{source.tensor.name}_dim{source.axis}"), np.int64, [1])
    scope.add_node(
        graph,
        gs.Node(
            "Shape",
            name=scope.fresh_node_name(f"{source.tensor.name}_Shape"),
            attrs={"start": source.axis, "end": source.axis + 1},
            inputs=[source.tensor],
            outputs=[extent],
        ),
    )
    return extent


def expand_to(
    tensor: gs.Tensor, pieces: Sequence[gs.Tensor], graph: gs.Graph, scope: Scope, suffix: str
) -> gs.Variable:
    """``tensor`` expanded to the shape that ``pieces`` (1-D int64 tensors) concatenate to."""
    target = gs.Variable(scope.fresh_name(f"{tensor.name}_{suffix}_shape"), np.int64)
    scope.add_node(
        graph,
        gs.Node(
            "Concat",
            name=scope.fresh_node_name(f"{tensor.name}_Concat"),
            attrs={"axis": 0},
            inputs=list(pieces),
            outputs=[target],
        ),
    )
    expanded = gs.Variable(scope.fresh_name(f"{tensor.name}_{suffix}"), tensor.dtype)
    scope.add_node(
        graph,
        gs.Node(
            "Expand",
            name=scope.fresh_node_name(f"{tensor.name}_Expand"),
            inputs=[tensor, target],
            outputs=[expanded],
        ),
    )
    return expanded
