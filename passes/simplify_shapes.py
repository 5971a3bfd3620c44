"""simplify-shapes: shape arithmetic that reads only static dims becomes a constant.

Exported transformers ask for dims at run time even where the dim is fixed: ViT computes
``Gather(Shape(x), 1)`` on ``[batch, 197, 768]``, GPT-2 ``Slice(Shape(x), -1:)`` on
``[batch, sequence, 768]``. fold-constants cannot fold them, since the whole shape is not
static; the selected dims are, and those are all the result needs. Shapes come from
infer-shapes: where a selected dim is symbolic or unknown the node stays.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.model import iter_graphs, read_constant
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass
from onnxslim.rewrite import STANDARD_DOMAINS, fresh_name, replace_input, static_dim

__all__ = ["SimplifyShapes"]


# A shape vector as the graph knows it: ints where static, names or None where not.
Dims = list[int | str | None]


@register_pass("simplify-shapes")
class SimplifyShapes(Pass):
    """Replace Gather and Slice of a Shape, and Shape with start/end, by constants where
    every dim they select is static.

    ``Gather(Shape(x), i)`` (constant indices, negative ones counted from the end, axis 0),
    ``Slice(Shape(x), starts, ends, axes, steps)`` with constant parameters and
    ``Shape(x, start, end)`` become int64 constants. The consumers read the constant; a
    tensor that is a graph output keeps its node, so that its name survives.
    """

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        graphs = list(iter_graphs(graph))
        taken = {name for g in graphs for name in g.tensors()}
        outputs = {id(t) for g in graphs for t in g.outputs}
        opset = ctx.model.opset
        changed = False
        for g in graphs:
            # Shape nodes last: their consumers are simplified first, reading the Shape.
            nodes = sorted(g.nodes, key=lambda n: n.op == "Shape")
            for node in nodes:
                if node.domain not in STANDARD_DOMAINS or len(node.outputs) != 1:
                    continue
                result = node.outputs[0]
                if id(result) in outputs or not result.outputs:
                    continue
                value = _static_value(node, opset)
                if value is None:
                    continue
                constant = gs.Constant(fresh_name(f"{result.name}_static", taken), value)
                for consumer in list(result.outputs):
                    replace_input(consumer, result, constant)
                changed = True
        return changed


def _static_value(node: gs.Node, opset: int) -> np.ndarray | None:
    """The int64 value of a Shape, or of a Gather or Slice of one, where it reads only static
    dims; None otherwise."""
    if node.op == "Shape":
        return _only_static(_shape_dims(node))
    if node.op not in ("Gather", "Slice") or not node.inputs:
        return None
    source = node.inputs[0]
    producer = source.inputs[0] if isinstance(source, gs.Variable) and source.inputs else None
    if producer is None or producer.op != "Shape" or producer.domain not in STANDARD_DOMAINS:
        return None
    dims = _shape_dims(producer)
    if dims is None:
        return None
    if node.op == "Gather":
        return _gathered(node, dims)
    return _sliced(node, dims, opset)


def _shape_dims(node: gs.Node) -> Dims | None:
    """The dims a Shape node gives out (its start/end applied); None where the rank is
    unknown."""
    if not node.inputs or node.inputs[0].shape is None:
        return None
    dims = [static_dim(d) if static_dim(d) is not None else d for d in node.inputs[0].shape]
    rank = len(dims)
    # Shape clamps start and end like Python slicing does.
    return dims[slice(node.attrs.get("start", 0), node.attrs.get("end", rank))]


def _gathered(node: gs.Node, dims: Dims) -> np.ndarray | None:
    if node.attrs.get("axis", 0) not in (0, -1) or len(node.inputs) < 2:
        return None
    indices = _constant_ints(node.inputs[1])
    rank = len(dims)
    if indices is None or np.any(indices < -rank) or np.any(indices >= rank):
        return None
    values = _only_static([dims[int(i)] for i in indices.reshape(-1)])
    return None if values is None else values.reshape(indices.shape)


def _sliced(node: gs.Node, dims: Dims, opset: int) -> np.ndarray | None:
    params = _slice_params(node, opset)
    if params is None:
        return None
    starts, ends, axes, steps = params
    if len(starts) != 1 or axes[0] not in (0, -1) or steps[0] == 0:
        return None
    picked = range(len(dims))[slice(starts[0], ends[0], steps[0])]
    return _only_static([dims[i] for i in picked])


def _slice_params(node: gs.Node, opset: int) -> tuple[list[int], ...] | None:
    """(starts, ends, axes, steps) of a Slice, attributes before opset 10 and inputs from then
    on; None where one is not constant."""
    if opset < 10:
        given = [node.attrs.get(name) for name in ("starts", "ends", "axes")] + [None]
    else:
        given = []
        for index in range(1, 5):
            tensor = node.inputs[index] if index < len(node.inputs) else None
            if tensor is None or not tensor.name:
                given.append(None)
                continue
            values = _constant_ints(tensor)
            if values is None or values.ndim != 1:
                return None
            given.append(values)
    starts, ends, axes, steps = given
    if starts is None or ends is None:
        return None
    starts, ends = [int(v) for v in starts], [int(v) for v in ends]
    axes = [0] * len(starts) if axes is None else [int(v) for v in axes]
    steps = [1] * len(starts) if steps is None else [int(v) for v in steps]
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return None
    return starts, ends, axes, steps


def _constant_ints(tensor: gs.Tensor) -> np.ndarray | None:
    """An integer constant's values: an initializer or, as exporters write indices, the output
    of a Constant node."""
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1:
        producer = tensor.inputs[0]
        if producer.op != "Constant" or producer.domain not in STANDARD_DOMAINS:
            return None
        attrs = producer.attrs
        if "value_int" in attrs or "value_ints" in attrs:
            return np.array(attrs.get("value_int", attrs.get("value_ints")), dtype=np.int64)
        tensor = attrs.get("value")
    if not isinstance(tensor, gs.Constant):
        return None
    values = read_constant(tensor)
    return values.astype(np.int64) if values.dtype.kind in "iu" else None


def _only_static(dims: Dims | None) -> np.ndarray | None:
    if dims is None or any(not isinstance(d, int) for d in dims):
        return None
    return np.array(dims, dtype=np.int64)
