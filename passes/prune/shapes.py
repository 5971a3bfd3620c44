"""Static shapes for the channel analysis of a model whose inputs have symbolic dimensions.

Exporters compute Reshape targets and attention masks from ``Shape``, so with a symbolic batch
and sequence the head count in ``[B, S, -1, 64]`` or the broadcast axes of a mask stay unknown
to shape inference, and the analysis would have to give up on them. With numbers they are
known: every symbolic input dimension gets a stand-in, a prime that divides no dimension of
any weight (so that it is never taken for a channel count), and shape inference runs again. What
it still cannot derive is measured by one onnxruntime run at those sizes (models under 2 GB).

The stand-in shapes are for the analysis only; :func:`pin_shapes` returns the shapes to put
back afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import get_onnx_tensor_shape

from onnxslim.inputs import input_specs, synthesize_inputs
from onnxslim.model import Model, all_constants, stub_proto, to_proto
from onnxslim.runtime import open_session
from onnxslim.shapes import infer_shapes

__all__ = ["pin_shapes"]

# A model must fit in one serialized proto for the onnxruntime run (and in memory twice).
_PROBE_LIMIT = 2**31


def _stand_ins(model: Model) -> Iterator[int]:
    """Primes from 11 on that divide no dimension of any weight, so that no channel or head
    count is a multiple of a stand-in."""
    dims = {int(d) for t in all_constants(model.graph) for d in t.shape if int(d) > 1}
    for number in itertools.count(11):
        prime = all(number % p for p in range(2, int(number**0.5) + 1))
        if prime and all(d % number for d in dims):
            yield number


def _pin_inputs(proto: onnx.ModelProto, runtime: set[str], sizes: dict[str, int], model: Model):
    numbers = _stand_ins(model)
    for value in proto.graph.input:
        for dim in value.type.tensor_type.shape.dim if value.name in runtime else ():
            if not dim.HasField("dim_value"):
                key = dim.dim_param or f"unnamed {len(sizes)}"
                if key not in sizes:
                    sizes[key] = next(numbers)
                dim.dim_value = sizes[key]


def _measured(model: Model, runtime: set[str], sizes: dict[str, int], names: list[str]):
    """Shapes of ``names`` from one onnxruntime run at the stand-in sizes; {} on failure
    (onnxruntime, an optional dependency, missing included)."""
    if model.initializer_bytes() >= _PROBE_LIMIT:
        return {}
    proto = to_proto(model)
    _pin_inputs(proto, runtime, sizes, model)
    del proto.graph.value_info[:]
    try:
        with open_session(proto, expose=names) as session:
            values = session.run(names, synthesize_inputs(input_specs(proto)))
    except Exception:  # noqa: BLE001 - a model onnxruntime cannot run keeps unknown shapes
        return {}
    return {name: list(value.shape) for name, value in zip(names, values, strict=True)}


def pin_shapes(model: Model) -> dict[str, list | None]:
    """Annotate the model's intermediate tensors with static stand-in shapes; return the
    shapes they had, to restore once the analysis is done."""
    runtime = {t.name for t in model.graph.inputs}
    interface = runtime | {t.name for t in model.graph.outputs}
    sizes: dict[str, int] = {}
    proto = stub_proto(model)
    _pin_inputs(proto, runtime, sizes, model)
    try:
        inferred = infer_shapes(proto, data_prop=True).graph.value_info
    except (onnx.shape_inference.InferenceError, RuntimeError):
        return {}
    shapes = {info.name: get_onnx_tensor_shape(info) for info in inferred}
    tensors = model.graph.tensors()
    variables = [
        name
        for name, tensor in tensors.items()
        if isinstance(tensor, gs.Variable) and name not in interface and tensor.inputs
    ]
    unknown = [
        name
        for name in variables
        if shapes.get(name) is None or not all(isinstance(d, int) for d in shapes[name])
    ]
    if unknown and sizes:
        shapes.update(_measured(model, runtime, sizes, unknown))
    saved = {}
    for name in variables:
        shape = shapes.get(name)
        if shape is not None and all(isinstance(d, int) for d in shape):
            saved[name] = tensors[name].shape
            tensors[name].shape = list(shape)
    return saved
