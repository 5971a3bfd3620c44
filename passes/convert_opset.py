"""convert-opset: move a model to another default-domain opset and, on request, IR version.

Older runtimes read only models up to some opset and IR version (onnxruntime-training 1.19:
opset 21, IR 10), and exporters write the newest they know. onnx's version converter moves the
opset; where it has no adapter for an op whose signature is the same in both opsets (only the
accepted types grew), the opset is relabelled instead and the checker confirms the result.
The IR version is lowered only when nothing in the model needs a newer one: the opsets, local
functions, and element types such as float8 or int4.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, defs
from onnx_graphsurgeon.ir.tensor import SparseValues

from onnxslim import opsets
from onnxslim.checking import RuntimeVerdict, check_model, onnxruntime_verdict
from onnxslim.errors import OnnxSlimError, PassError
from onnxslim.inputs import model_input_specs, synthesize_inputs
from onnxslim.model import Model, iter_graphs, load, to_proto
from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass
from onnxslim.rewrite import STANDARD_DOMAINS, element_type

__all__ = ["ConvertOpset", "ConversionError", "convert", "convert_model"]

# The IR version that introduced each element type newer than IR 4; absent types are skipped
# so that the table reads the same under older onnx releases.
_TYPE_IR = {
    getattr(TensorProto, name): ir
    for name, ir in (
        ("FLOAT8E4M3FN", 9),
        ("FLOAT8E4M3FNUZ", 9),
        ("FLOAT8E5M2", 9),
        ("FLOAT8E5M2FNUZ", 9),
        ("UINT4", 10),
        ("INT4", 10),
        ("FLOAT4E2M1", 11),
        ("FLOAT8E8M0", 12),
        ("UINT2", 13),
        ("INT2", 13),
    )
    if hasattr(TensorProto, name)
}
# Model-local functions arrived with IR 8.
_FUNCTIONS_IR = 8
# Ops whose meaning changed while their signature did not (opset 13 made them act on one
# axis instead of a flattened 2-D view): never relabelled.
_SAME_SIGNATURE_NEW_MEANING = frozenset({"Softmax", "LogSoftmax", "Hardmax"})


class ConversionError(OnnxSlimError):
    """The model cannot be moved to the requested opset or IR version."""


@register_pass("convert-opset")
@dataclass
class ConvertOpset(Pass):
    """Convert the default-domain opset to ``target`` and optionally the IR version to
    ``ir_version`` (e.g. ``convert-opset(target=17, ir_version=8)`` for older runtimes).

    Ops without a version-converter adapter but with the same inputs, outputs and attributes
    in both opsets are relabelled (and noted); anything else that cannot be converted, and an
    IR version too old for what the model uses, is refused with the reason.
    """

    accepts_unloadable_input = True

    target: int | None = None
    """The opset of the default domain to convert to."""
    ir_version: int | None = None
    """The IR version to write (e.g. 8 for older runtimes)."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        if self.target is None and self.ir_version is None:
            raise ConversionError("convert-opset needs target= (an opset) or ir_version=")
        return convert(ctx.model, self.target, self.ir_version, log=ctx.log)


def convert(
    model: Model,
    target: int | None,
    ir_version: int | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> bool:
    """Convert ``model`` in place; True when its opset or IR version changed.

    The checker is not enough (a converted float Mod can pass it and fail at run time): the
    result must do in onnxruntime what the model did before, load if it loaded and run on
    synthesized inputs if it ran. Otherwise ConversionError, and the model is as it was.
    """
    before = (model.opset, model.ir_version)
    feeds = _synthesized_feeds(model)
    baseline = onnxruntime_verdict(model, feeds)
    saved = _SavedState(model)
    try:
        if target is not None and target != model.opset:
            _check_target(target)
            _convert_opset(model, target, log)
        if ir_version is not None and ir_version != model.ir_version:
            _set_ir_version(model, ir_version)
        changed = (model.opset, model.ir_version) != before
        if changed and baseline is not None:
            _check_runtime(model, baseline, feeds)
    except BaseException:
        saved.restore(model)
        raise
    return changed


def _synthesized_feeds(model: Model) -> list[dict[str, np.ndarray]]:
    """One sample of synthesized inputs, or none where the model's inputs cannot be made up
    (strings, unknown ranks)."""
    try:
        return [synthesize_inputs(model_input_specs(model))]
    except OnnxSlimError:
        return []


def _check_runtime(
    model: Model, baseline: RuntimeVerdict, feeds: list[dict[str, np.ndarray]]
) -> None:
    where = f"converted to opset {model.opset}, IR {model.ir_version}"
    after = onnxruntime_verdict(model, feeds if baseline.runs else ())
    if baseline.loads and not after.loads:
        raise ConversionError(f"the model {where} does not load in onnxruntime: {after.problem}")
    if baseline.runs and not after.runs:
        raise ConversionError(f"the model {where} fails to run in onnxruntime: {after.problem}")


class _SavedState:
    """What a conversion changes, to put back when it is refused."""

    def __init__(self, model: Model) -> None:
        graph = model.graph
        self.graph = (graph.nodes, graph.inputs, graph.outputs, graph.functions, graph.opset)
        self.import_domains = [_copied(entry) for entry in graph.import_domains or []]
        self.shell = _copied(model.shell)

    def restore(self, model: Model) -> None:
        graph = model.graph
        graph.nodes, graph.inputs, graph.outputs, graph.functions, graph.opset = self.graph
        if graph.import_domains is not None:
            graph.import_domains = self.import_domains
        model.shell.CopyFrom(self.shell)


def _copied(message):
    duplicate = type(message)()
    duplicate.CopyFrom(message)
    return duplicate


def convert_model(
    source: onnx.ModelProto | str | os.PathLike | bytes,
    target_opset: int | None = None,
    ir_version: int | None = None,
) -> onnx.ModelProto:
    """The model at ``target_opset`` and ``ir_version``, as a ModelProto (the input is unchanged).

    For handing models to an older runtime, e.g. ``convert_model(path, 21, 10)`` for
    onnxruntime-training 1.19. Raises ConversionError when that is not possible.
    """
    model = load(source)
    convert(model, target_opset, ir_version)
    return to_proto(model)


def _check_target(target: int) -> None:
    newest = defs.onnx_opset_version()
    if not 7 <= target <= newest:
        raise ConversionError(
            f"opset {target} is out of range: this onnx converts between opsets 7 and {newest}"
        )


def _convert_opset(model: Model, target: int, log: Callable[[str], None]) -> None:
    source = model.opset
    try:
        opsets.convert(model, target)
        return
    except PassError as exc:
        failure = str(exc)
    unchanged, changed = _signature_check(model.graph, source, target)
    if changed:
        raise ConversionError(f"{failure}; {', '.join(sorted(changed))} differ between opsets")
    opsets.set_default_opset(model.graph, target)
    try:
        check_model(model)
    except OnnxSlimError as exc:
        opsets.set_default_opset(model.graph, source)
        raise ConversionError(f"{failure}; relabelling the opset fails too: {exc}") from exc
    opsets.relabel(model, target)
    log(
        f"onnx.version_converter failed ({failure.split(': ', 1)[-1]}); relabelled opset "
        f"{source} -> {target} since {', '.join(sorted(unchanged)) or 'no op'} keep their "
        "inputs, outputs and attributes"
    )


def _signature_check(graph: gs.Graph, source: int, target: int) -> tuple[set[str], set[str]]:
    """Ops of the default domain whose schema changed between the opsets: those whose
    signature is the same (safe to relabel) and those whose signature differs."""
    unchanged, changed = set(), set()
    ops = {
        node.op for g in iter_graphs(graph) for node in g.nodes if node.domain in STANDARD_DOMAINS
    }
    for op in ops:
        try:
            old = defs.get_schema(op, source)
            new = defs.get_schema(op, target)
        except defs.SchemaError:
            changed.add(op)
            continue
        if old.since_version == new.since_version:
            continue
        same = _signature(old) == _signature(new) and op not in _SAME_SIGNATURE_NEW_MEANING
        (unchanged if same else changed).add(op)
    return unchanged, changed


def _signature(schema: defs.OpSchema) -> tuple:
    def params(items) -> tuple:
        return tuple((p.name, p.option) for p in items)

    return (
        params(schema.inputs),
        params(schema.outputs),
        tuple(sorted((name, a.type, a.required) for name, a in schema.attributes.items())),
        schema.deprecated,
    )


def _set_ir_version(model: Model, ir_version: int) -> None:
    if not 3 <= ir_version <= onnx.IR_VERSION:
        raise ConversionError(
            f"IR version {ir_version} is out of range: this onnx writes IR 3 to {onnx.IR_VERSION}"
        )
    blocking = {what: ir for what, ir in _ir_requirements(model).items() if ir > ir_version}
    if blocking:
        reasons = ", ".join(f"{what} needs IR {ir}" for what, ir in sorted(blocking.items()))
        raise ConversionError(f"cannot write IR version {ir_version}: {reasons}")
    model.shell.ir_version = ir_version


def _ir_requirements(model: Model) -> dict[str, int]:
    """What in the model needs which IR version."""
    needs = {f"opset {model.opset}": opsets.least_ir_version(model)}
    if model.graph.functions:
        needs["model-local functions"] = _FUNCTIONS_IR
    for elem_type in _element_types(model.graph):
        if elem_type in _TYPE_IR:
            needs[f"element type {TensorProto.DataType.Name(elem_type)}"] = _TYPE_IR[elem_type]
    return needs


def _element_types(graph: gs.Graph) -> set[int]:
    """Element types of every typed tensor of the graph and its subgraphs (no data is read)."""
    types: set[int] = set()
    for g in iter_graphs(graph):
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Constant) and isinstance(tensor._values, SparseValues):
                types.add(tensor._values.tensor.values.data_type)
            elif isinstance(tensor, gs.Constant):
                types.add(element_type(tensor))
            elif isinstance(tensor.dtype, int):  # gs keeps INT4 and the like as numbers
                types.add(tensor.dtype)
            elif tensor.dtype is not None:
                types.add(int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))))
    return types
