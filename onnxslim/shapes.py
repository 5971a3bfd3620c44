"""onnx shape inference with data propagation kept to shape-sized tensors.

Data propagation computes the values of small integer tensors (``Shape`` -> ``Gather`` ->
``Concat``) so that a ``Reshape`` fed by them gets a static shape. onnx spends some 140-200
bytes per element on every long 1-D tensor that reaches an ``Add`` or ``Mul``, whether its
values are known or not: a model with a 100M-element vector needs tens of GB. So data
propagation runs on a copy of the model in which every long 1-D tensor's length is hidden at
its source (a graph input, or a stand-in ``ConstantOfShape`` from
:func:`onnxslim.model.stub_proto`), and a plain inference run supplies those lengths.

>>> inferred = infer_shapes(stub_proto(model))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

__all__ = ["infer_shapes", "LONG_VECTOR"]

LONG_VECTOR = 1 << 16
"""Elements from which a 1-D tensor is too long for data propagation to see its length: at
most some 13 MB of propagation per shorter vector, so biases (a few thousand elements) keep
theirs and inference runs once, while a long vector costs a second, plain run."""


def infer_shapes(proto: onnx.ModelProto, *, data_prop: bool = True, **options) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes(proto, data_prop=..., **options)`` in memory
    bounded by the model's shape-sized tensors (see the module docstring)."""
    if not data_prop:
        return onnx.shape_inference.infer_shapes(proto, **options)
    hidden = _with_long_vectors_hidden(proto)
    if hidden is None:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True, **options)
    plain = onnx.shape_inference.infer_shapes(proto, **options)
    propagated = onnx.shape_inference.infer_shapes(hidden, data_prop=True, **options)
    _merge(plain.graph, propagated.graph)
    return plain


def _with_long_vectors_hidden(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy whose long 1-D graph inputs have a symbolic length and whose long
    ConstantOfShape stand-ins read their shape from a graph input; None if there are none."""
    long_inputs = [
        index
        for index, value in enumerate(proto.graph.input)
        if _is_long_vector(value.type.tensor_type.shape)
    ]
    long_fills = [
        (graph_index, node_index)
        for graph_index, graph in enumerate(_graphs(proto.graph))
        for node_index, node in enumerate(graph.node)
        if node.op_type == "ConstantOfShape" and _long_fill(graph, node)
    ]
    if not long_inputs and not long_fills:
        return None
    hidden = onnx.ModelProto()
    hidden.CopyFrom(proto)
    for index in long_inputs:
        value = hidden.graph.input[index]
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = f"{value.name}__length"
    graphs = list(_graphs(hidden.graph))
    for graph_index, node_index in long_fills:
        graph = graphs[graph_index]
        shape_name = graph.node[node_index].input[0]
        kept = [t for t in graph.initializer if t.name != shape_name]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        # A graph input of the main graph is in scope in every subgraph.
        hidden.graph.input.append(
            onnx.helper.make_tensor_value_info(shape_name, onnx.TensorProto.INT64, [1])
        )
    return hidden


def _is_long_vector(shape: onnx.TensorShapeProto) -> bool:
    return (
        len(shape.dim) == 1
        and shape.dim[0].HasField("dim_value")
        and shape.dim[0].dim_value >= LONG_VECTOR
    )


def _long_fill(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """Whether a ConstantOfShape makes a long vector from a shape initializer of ``graph``."""
    shape = next((t for t in graph.initializer if t.name == node.input[0]), None)
    if shape is None or list(shape.dims) != [1]:
        return False
    return int(onnx.numpy_helper.to_array(shape)[0]) >= LONG_VECTOR


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and its subgraphs, depth first, in a fixed order."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _merge(plain: onnx.GraphProto, propagated: onnx.GraphProto) -> None:
    """Give ``plain``'s values every static dim that data propagation found, in subgraphs
    too (both graphs have the same nodes in the same order)."""
    known = {value.name: value for value in (*plain.value_info, *plain.output)}
    for value in (*propagated.value_info, *propagated.output):
        mine = known.get(value.name)
        if mine is None:
            plain.value_info.append(value)
        elif mine.type.HasField("tensor_type") and value.type.HasField("tensor_type"):
            _take_static_dims(mine.type.tensor_type, value.type.tensor_type)
    for ours, theirs in zip(plain.node, propagated.node, strict=True):
        for attr, other in zip(ours.attribute, theirs.attribute, strict=True):
            if attr.type == onnx.AttributeProto.GRAPH:
                _merge(attr.g, other.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub, other_sub in zip(attr.graphs, other.graphs, strict=True):
                    _merge(sub, other_sub)


def _take_static_dims(mine: onnx.TypeProto.Tensor, theirs: onnx.TypeProto.Tensor) -> None:
    if not theirs.HasField("shape"):
        return
    if not mine.HasField("shape"):
        mine.shape.CopyFrom(theirs.shape)
        return
    if len(mine.shape.dim) != len(theirs.shape.dim):
        return
    for dim, other in zip(mine.shape.dim, theirs.shape.dim, strict=True):
        if not dim.HasField("dim_value") and other.HasField("dim_value"):
            dim.dim_value = other.dim_value
