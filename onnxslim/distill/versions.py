"""Bring a model to the IR version and opset range a training runtime runs.

* onnxruntime-training's last release (1.19) stopped at IR 10 and opset 21, while exporters
  keep moving on.
* The native backend's gradient rules use the opset-17 forms of reductions, Squeeze and
  Unsqueeze, and ScatterND with ``reduction``; older students are converted up. Its ceiling is
  what the installed onnxruntime runs, found by asking it.

Most newer models only *declare* newer versions: the IR number can simply be lowered when no
newer feature is used (onnx.checker tells), and onnx's version converter rewrites the few ops
whose signature changed. What cannot be converted is refused with the reason.
"""

from __future__ import annotations

import functools

import onnx
from onnx import helper

from onnxslim.distill.errors import UnsupportedVersionError
from onnxslim.errors import PassError
from onnxslim.opsets import convert_proto, default_opset

__all__ = [
    "MAX_IR_VERSION",
    "MAX_OPSET",
    "NATIVE_MIN_OPSET",
    "default_opset",
    "for_training_runtime",
    "for_native_training",
    "runtime_limits",
]

MAX_IR_VERSION = 10
MAX_OPSET = 21
NATIVE_MIN_OPSET = 17


@functools.lru_cache(maxsize=1)
def runtime_limits() -> tuple[int, int]:
    """(newest opset, newest IR version) that the installed onnxruntime loads, probed with a
    one-node model from onnx's newest opset down."""
    from onnxslim.runtime import require_onnxruntime

    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4
    for opset in range(onnx.defs.onnx_opset_version(), NATIVE_MIN_OPSET - 1, -1):
        info = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "probe",
            [info],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = helper.find_min_ir_version_for(opsets)
        try:
            ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception:  # this onnxruntime does not know the opset or the IR version
            continue
        return opset, model.ir_version
    return NATIVE_MIN_OPSET, helper.find_min_ir_version_for(
        [helper.make_opsetid("", NATIVE_MIN_OPSET)]
    )


def for_native_training(proto: onnx.ModelProto, role: str) -> onnx.ModelProto:
    """``proto`` (not modified) at opset ≥ 17 and within the installed onnxruntime's limits."""
    max_opset, max_ir = runtime_limits()
    return _converted(proto, role, "this onnxruntime", NATIVE_MIN_OPSET, max_opset, max_ir)


def for_training_runtime(proto: onnx.ModelProto, role: str) -> onnx.ModelProto:
    """``proto`` (not modified) at IR ≤ 10 and opset ≤ 21, for onnxruntime-training 1.19."""
    return _converted(proto, role, "onnxruntime-training", 0, MAX_OPSET, MAX_IR_VERSION)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _converted(
    proto: onnx.ModelProto, role: str, runtime: str, min_opset: int, max_opset: int, max_ir: int
) -> onnx.ModelProto:
    """``proto`` at an opset in [min_opset, max_opset] and IR ≤ max_ir, or
    UnsupportedVersionError; ``role`` (``student``, ``teacher``) names it in messages."""
    opset = default_opset(proto)
    target = min(max(opset, min_opset), max_opset)
    if target == opset and proto.ir_version <= max_ir:
        return proto
    converted = onnx.ModelProto()
    converted.CopyFrom(proto)
    if target != opset:
        if opset > onnx.defs.onnx_opset_version():
            raise UnsupportedVersionError(
                f"the {role} uses opset {opset}, newer than this onnx ({onnx.__version__}) "
                f"knows; export it with opset ≤ {max_opset} for {runtime}"
            )
        try:
            converted = convert_proto(converted, target)
        except PassError as exc:
            raise UnsupportedVersionError(
                f"the {role} uses opset {opset} and cannot be converted to opset {target} "
                f"for {runtime} ({str(exc).split(': ', 1)[-1]}); export it with opset {target}"
            ) from exc
    if converted.ir_version > max_ir:
        original = converted.ir_version
        converted.ir_version = max_ir
        try:
            onnx.checker.check_model(converted)
        except onnx.checker.ValidationError as exc:
            raise UnsupportedVersionError(
                f"the {role} has IR version {original} and uses features that IR version "
                f"{max_ir} lacks, so {runtime} cannot run it: {_first_line(exc)}"
            ) from exc
    return converted
