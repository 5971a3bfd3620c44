"""infer-shapes: annotate tensors with types and shapes from onnx's shape inference."""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import get_onnx_tensor_shape

from onnxslim.model import gs_dtype, stub_proto
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass
from onnxslim.shapes import infer_shapes

__all__ = ["InferShapes"]


@register_pass("infer-shapes")
class InferShapes(Pass):
    """Annotate every tensor with the type and shape that onnx shape inference derives.

    Symbolic dimensions stay symbolic, and the declared shapes of graph inputs and outputs are
    kept (only missing ones are filled in). Inference runs on a stand-in of the model whose
    large weights carry no data, so models over 2 GiB are handled in little memory, and data
    propagation sees only shape-sized tensors (:mod:`onnxslim.shapes`). Other
    passes (fold-constants folds Shape of static tensors) build on these annotations.
    """

    data_propagation: bool = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        proto = stub_proto(ctx.model)
        try:
            inferred = infer_shapes(proto, data_prop=self.data_propagation)
        except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
            ctx.log(f"shape inference failed, shapes left as they were: {exc}")
            return False
        return _annotate(graph, inferred.graph)


def _annotate(graph: gs.Graph, inferred: onnx.GraphProto) -> bool:
    """Copy inferred types onto gs Variables; True when any annotation changed."""
    tensors = graph.tensors()
    interface = {id(t) for t in graph.inputs + graph.outputs}
    changed = False
    for info in list(inferred.value_info) + list(inferred.output):
        tensor = tensors.get(info.name)
        if not isinstance(tensor, gs.Variable) or not info.type.HasField("tensor_type"):
            continue
        dtype = gs_dtype(info.type.tensor_type.elem_type)
        shape = get_onnx_tensor_shape(info)
        if (
            dtype is not None
            and tensor.dtype is None
            or (id(tensor) not in interface and dtype is not None and tensor.dtype != dtype)
        ):
            tensor.dtype = dtype
            changed = True
        if shape is not None and _better_shape(tensor.shape, shape, id(tensor) in interface):
            tensor.shape = shape if tensor.shape is None else _merged(tensor.shape, shape)
            changed = True
    for node, proto_node in zip(graph.nodes, inferred.node, strict=False):
        for sub, sub_proto in _paired_subgraphs(node, proto_node):
            changed |= _annotate(sub, sub_proto)
    return changed


def _better_shape(old: list | None, new: list, interface: bool) -> bool:
    """Whether ``new`` tells more than ``old`` without taking anything known away.

    Inside the graph a symbolic dim may become a number; on graph inputs and outputs only
    unknown dims are filled, so that the declared interface (``batch``) stays as it is.
    """
    if old is None:
        return True
    if len(old) != len(new):
        return False
    return any(_dim_gain(o, n, interface) for o, n in zip(old, new, strict=True))


def _dim_gain(old, new, interface: bool) -> bool:
    if old is None:
        return new is not None
    return not interface and isinstance(old, str) and isinstance(new, int)


def _merged(old: list, new: list) -> list:
    return [n if _dim_gain(o, n, interface=False) else o for o, n in zip(old, new, strict=True)]


def _paired_subgraphs(
    node: gs.Node, proto_node: onnx.NodeProto
) -> Iterator[tuple[gs.Graph, onnx.GraphProto]]:
    attrs = {a.name: a for a in proto_node.attribute}
    for name, value in node.attrs.items():
        attr = attrs.get(name)
        if isinstance(value, gs.Graph) and attr is not None and attr.HasField("g"):
            yield value, attr.g
