"""Validity: onnx.checker with shape inference for models of any size, and the input check.

The check runs on :func:`onnxslim.model.stub_proto`, in which large weights are stand-ins
that carry only name, type and shape: the checker and shape inference never read weight
bytes, so a 3 GB model is checked in the memory of its graph alone. (Loading has already
checked every weight's bytes against its shape: :func:`onnxslim.model.check_tensor_data`.)

:func:`check_input_model` is what every command asks of the model it is given: valid ONNX
that this onnx knows, and, where onnxruntime is installed, a model onnxruntime loads; only
then can onnxslim promise an output that onnxruntime loads too.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxslim.errors import InputDataError, InvalidModelError, OnnxSlimError, RuntimeMissingError
from onnxslim.model import Model, iter_graphs, stub_proto
from onnxslim.runtime import create_session, open_session, require_onnxruntime, run

__all__ = [
    "check_model",
    "is_valid",
    "check_input_model",
    "runtime_opsets",
    "RuntimeVerdict",
    "onnxruntime_verdict",
]

# onnxruntime guarantees opsets from 7 on; older ones load only where legacy kernels remain.
_RUNTIME_OLDEST_OPSET = 7
# The newest default-domain opset that every onnxruntime this project supports (1.17 and newer,
# pyproject's extras) implements: a model at or below it needs no probe of the installed build.
_EVERY_SUPPORTED_RUNTIME_LOADS = 20


def check_model(model: Model | onnx.ModelProto, *, full: bool = True) -> None:
    """Raise InvalidModelError (one line) unless onnx.checker accepts the model.

    ``full`` adds strict shape inference, which catches type and rank mismatches that the plain
    checker lets through. A ModelProto is taken as :func:`stub_proto` wrote it (a caller that
    checks one model twice builds the stub once).
    """
    proto = model if isinstance(model, onnx.ModelProto) else stub_proto(model)
    try:
        onnx.checker.check_model(proto, full_check=full)
    # onnx raises ValueError too, for an attribute naming an element type that does not exist
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise InvalidModelError(f"onnx.checker rejects the model: {_first_line(exc)}") from exc


def is_valid(model: Model, *, full: bool = True) -> bool:
    """Whether onnx.checker accepts the model (with strict shape inference when ``full``)."""
    try:
        check_model(model, full=full)
    except InvalidModelError:
        return False
    return True


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith("==>")]
    return (meaningful or lines or [type(exc).__name__])[0]


def check_input_model(model: Model, *, runtime: bool = True, unchanged: bool = False) -> None:
    """Raise InvalidModelError (one line) for a model onnxslim must refuse.

    A model is refused when its default-domain opset is one this onnx does not know, when
    onnx.checker rejects it, and when strict shape inference rejects it and onnxruntime (where
    installed) cannot load it either: some valid models fail strict inference, and
    onnxruntime tells those apart. With ``runtime``, a model must also be one that onnxruntime
    loads (an opset it does not run is tried): only then can an output be promised to load.
    ``runtime=False`` is for commands that only describe a model, and for passes made to turn
    a model onnxruntime cannot load into one it can (``Pass.accepts_unloadable_input``).
    ``unchanged`` says that the model is as loaded from its file, which onnxruntime may then
    read itself.
    """
    newest = onnx.defs.onnx_opset_version()
    if not 1 <= model.opset <= newest:
        raise InvalidModelError(
            f"the model imports opset {model.opset} of the default domain; this onnx "
            f"({onnx.__version__}) knows opsets 1 to {newest}"
        )
    _check_dims(model)
    _check_domains(model)
    _check_no_recursion(model)
    stub = stub_proto(model)
    check_model(stub, full=False)
    supported = _opsets_covering(model.opset)
    try:
        check_model(stub, full=True)
    except InvalidModelError as exc:
        strict_problem: InvalidModelError | None = exc
    else:
        strict_problem = None
    in_range = supported is not None and supported[0] <= model.opset <= supported[1]
    if supported is None or (strict_problem is None and (in_range or not runtime)):
        return
    verdict = onnxruntime_verdict(model, unchanged=unchanged)
    if verdict is None or verdict.loads:  # None: onnxruntime is there but does not import
        return
    hint = ""
    if not in_range:
        hint = f" (it runs opsets {supported[0]} to {supported[1]}: onnxslim convert --opset)"
    raise InvalidModelError(f"onnxruntime cannot load the model{hint}: {verdict.problem}")


def _check_dims(model: Model) -> None:
    """Negative dimensions, which onnx.checker lets through, in the declared shapes; -1, which
    PaddlePaddle's exporter writes for a dynamic dim and onnxruntime reads as one, is let
    through (PP-OCR's models declare it)."""
    for graph in iter_graphs(model.graph):
        for tensor in (*graph.inputs, *graph.outputs):
            if any(isinstance(dim, int) and dim < -1 for dim in tensor.shape or ()):
                raise InvalidModelError(
                    f"'{tensor.name}' is declared with a negative dimension {tensor.shape}, "
                    "which ONNX does not allow"
                )


def _check_domains(model: Model) -> None:
    """Every node's domain imported by the model: gs's export would add a missing import
    itself, so the checker, which sees that export, could not tell."""
    if model.graph.import_domains is None:
        return
    imported = {_domain(entry.domain) for entry in model.graph.import_domains}
    functions = model.graph.functions
    for graph in (*iter_graphs(model.graph), *(g for f in functions for g in iter_graphs(f))):
        for node in graph.nodes:
            if _domain(node.domain) not in imported:
                raise InvalidModelError(
                    f"node '{node.name or node.op}' is in domain '{node.domain or 'ai.onnx'}', "
                    "which the model does not import (opset_import)"
                )


def _domain(name: str | None) -> str:
    return "" if name in (None, "", "ai.onnx") else name


def _check_no_recursion(model: Model) -> None:
    """A local function that calls itself, directly or not: onnx.checker finds the cycle from
    onnx 1.18 on, and older releases recurse until the process crashes."""
    calls = {
        (f.domain, f.name): {(n.domain or "", n.op) for g in iter_graphs(f) for n in g.nodes}
        for f in model.graph.functions
    }
    done: set[tuple[str, str]] = set()

    def visit(function: tuple[str, str], path: tuple[tuple[str, str], ...]) -> None:
        if function in path:
            cycle = " -> ".join(f"{d}::{n}" for d, n in (*path[path.index(function) :], function))
            raise InvalidModelError(f"local functions call themselves ({cycle}): ONNX forbids it")
        if function in done:
            return
        for callee in calls[function] & calls.keys():
            visit(callee, (*path, function))
        done.add(function)

    for function in calls:
        visit(function, ())


def _opsets_covering(opset: int) -> tuple[int, int] | None:
    """A range of opsets the installed onnxruntime loads that says whether ``opset`` is one of
    them: without importing onnxruntime when ``opset`` is one every supported release
    implements (importing it and probing its newest opset took 0.09 s of every command on a
    model that no pass then ran), else :func:`runtime_opsets`. None without onnxruntime."""
    if _RUNTIME_OLDEST_OPSET <= opset <= _EVERY_SUPPORTED_RUNTIME_LOADS:
        if importlib.util.find_spec("onnxruntime") is None:
            return None
        return _RUNTIME_OLDEST_OPSET, _EVERY_SUPPORTED_RUNTIME_LOADS
    return runtime_opsets()


@functools.cache
def runtime_opsets() -> tuple[int, int] | None:
    """The default-domain opsets the installed onnxruntime loads, oldest guaranteed to newest;
    None without onnxruntime. onnxruntime has no call that says, so the newest is found by
    trying (a one-node model per opset, a binary search)."""
    try:
        require_onnxruntime()
    except RuntimeMissingError:
        return None
    low, high = _RUNTIME_OLDEST_OPSET, onnx.defs.onnx_opset_version()
    while low < high:
        middle = (low + high + 1) // 2
        if _loads_identity(middle):
            low = middle
        else:
            high = middle - 1
    return _RUNTIME_OLDEST_OPSET, low


def _loads_identity(opset: int) -> bool:
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "probe",
            [value],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=opsets,
        ir_version=onnx.helper.find_min_ir_version_for(opsets),
    )
    try:
        create_session(proto.SerializeToString(), optimize=False)
    except InvalidModelError:
        return False
    return True


@dataclass(frozen=True)
class RuntimeVerdict:
    """What onnxruntime's CPU provider made of a model: whether it loads, whether it runs on
    the feeds it was given (every one of them), and the first line of what went wrong."""

    loads: bool
    runs: bool
    problem: str | None = None


def onnxruntime_verdict(
    model: Model | onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]] = (),
    *,
    provider: str = "cpu",
    unchanged: bool = False,
) -> RuntimeVerdict | None:
    """Create an onnxruntime session for ``model`` on ``provider`` (graph optimizations off:
    the model as written) and run it on ``feeds``; None when onnxruntime is not installed.
    An ``unchanged`` model loaded from a file is read from there. Weights are not prepacked
    for the kernels (only loading and running are checked, not the numbers: GPT-2-large in
    float16 loads in 1.3 s instead of 6.5 s). A provider that is not available raises
    ProviderUnavailableError."""
    if runtime_opsets() is None:
        return None
    source = model
    if isinstance(model, Model) and unchanged and model.source is not None:
        source = model.source
    try:
        with open_session(source, provider, optimize=False, prepack=False) as session:
            for feed in feeds:
                try:
                    run(session, feed)
                except (InvalidModelError, InputDataError) as exc:
                    return RuntimeVerdict(True, False, _after_colon(exc))
    except InvalidModelError as exc:
        return RuntimeVerdict(False, False, _after_colon(exc))
    except OnnxSlimError:
        raise
    except Exception as exc:  # gs cannot export what a rewrite left (an empty ints attribute)
        return RuntimeVerdict(False, False, f"the model cannot be written: {_first_line(exc)}")
    return RuntimeVerdict(True, True)


def _after_colon(exc: Exception) -> str:
    """onnxruntime's own words from a runtime error ('onnxruntime cannot load ...: <them>')."""
    return str(exc).split(": ", 1)[-1]
