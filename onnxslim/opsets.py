"""Moving a model between default-domain opsets: onnx's version converter, and relabelling.

Fusions raise the opset to write newer ops (LayerNormalization at 17, Attention at 23),
quantization to 21 for int4 and int16, convert-opset wherever the user asks, and distillation
lowers models for onnxruntime-training. They all go through here:

* :func:`convert` runs onnx's version converter on a model without its large weights, so that
  a multi-GB model converts without a copy of them;
* :func:`relabel` changes only the declared opset, for graphs whose ops mean the same in both
  (the caller decides that), and raises the IR version to what the new opset needs;
* :func:`convert_proto` converts an in-memory ModelProto as it is.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from onnxslim.errors import PassError
from onnxslim.model import Model, iter_graphs, load, stub_proto
from onnxslim.rewrite.nodes import STANDARD_DOMAINS

__all__ = [
    "convert",
    "convert_proto",
    "relabel",
    "set_default_opset",
    "least_ir_version",
    "default_opset",
]


def default_opset(proto: onnx.ModelProto) -> int:
    """The opset of the default (``ai.onnx``) domain that a ModelProto imports."""
    return max((o.version for o in proto.opset_import if o.domain in STANDARD_DOMAINS), default=0)


def convert_proto(proto: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """``proto`` converted to opset ``target`` by onnx's version converter (``proto`` itself
    is unchanged). Raises PassError with the converter's first line when it cannot."""
    try:
        return version_converter.convert_version(proto, target)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        raise PassError(
            f"onnx.version_converter cannot take the model from opset {default_opset(proto)} "
            f"to {target}: {_first_line(exc)}"
        ) from exc


def convert(model: Model, target: int) -> None:
    """Convert the model's default-domain opset to ``target`` in place (onnx.version_converter).

    The converter sees the model without its large weights (:func:`onnxslim.model.stub_proto`),
    so converting a multi-GB model copies no weights; the original constants are put back by
    name. The IR version is raised to the least the new opsets need. Raises PassError, with the
    model untouched, when the converter fails or its result fails onnx.checker.
    """
    converted = convert_proto(stub_proto(model), target)
    try:
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise PassError(
            f"onnx.version_converter cannot take the model from opset {model.opset} to "
            f"{target}: {_first_line(exc)}"
        ) from exc
    fresh = load(converted).graph
    graph = model.graph
    before = {name: t for g in iter_graphs(graph) for name, t in g.tensors().items()}
    constants = {name: t for name, t in before.items() if isinstance(t, gs.Constant)}
    # The converter drops value_info: tensors it kept keep the types and shapes passes found.
    for g in iter_graphs(fresh):
        for name, tensor in g.tensors().items():
            known = before.get(name)
            if isinstance(tensor, gs.Variable) and isinstance(known, gs.Variable):
                tensor.dtype = tensor.dtype if tensor.dtype is not None else known.dtype
                tensor.shape = tensor.shape if tensor.shape is not None else known.shape
    # stub_proto turned the large constants into graph inputs: make their readers read the
    # original constants again, whose data may still be on disk.
    for g in iter_graphs(fresh):
        for node in g.nodes:
            for index, tensor in enumerate(node.inputs):
                if isinstance(tensor, gs.Variable) and tensor.name in constants:
                    node.inputs[index] = constants[tensor.name]
    original_inputs = {tensor.name for tensor in graph.inputs}
    graph.inputs = [
        constants.get(tensor.name, tensor)
        for tensor in fresh.inputs
        if tensor.name in original_inputs
    ]
    graph.outputs = [constants.get(tensor.name, tensor) for tensor in fresh.outputs]
    graph.nodes = fresh.nodes
    graph.functions = fresh.functions
    graph.opset = fresh.opset
    graph.import_domains = fresh.import_domains
    model.shell.ir_version = max(model.shell.ir_version, converted.ir_version)
    model.shell.ir_version = max(model.shell.ir_version, least_ir_version(model))


def set_default_opset(graph: gs.Graph, version: int) -> None:
    """Declare ``version`` as the default-domain opset (gs writes ``import_domains`` when it
    has them, so both are set)."""
    graph.opset = version
    for entry in graph.import_domains or []:
        if entry.domain in STANDARD_DOMAINS:
            entry.version = version


def relabel(model: Model, target: int) -> None:
    """Declare opset ``target`` without converting any op, and raise the IR version to what
    the opset imports need. Only for graphs whose ops mean the same at both opsets."""
    set_default_opset(model.graph, target)
    model.shell.ir_version = max(model.shell.ir_version, least_ir_version(model))


def least_ir_version(model: Model) -> int:
    """The least IR version that the model's opset imports need."""
    opsets = [onnx.helper.make_opsetid("", model.opset)]
    opsets += [
        onnx.helper.make_opsetid(entry.domain, entry.version)
        for entry in model.graph.import_domains or []
        if entry.domain not in STANDARD_DOMAINS
    ]
    return onnx.helper.find_min_ir_version_for(opsets, ignore_unknown=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
