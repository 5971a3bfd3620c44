"""Bring a model down to what onnxruntime-training 1.19 runs: IR version ≤ 10, opset ≤ 21.

onnxruntime-training's last release stopped at those versions, while exporters keep moving
on. Most newer models only *declare* newer versions: the IR number can simply be lowered when
no newer feature is used (onnx.checker tells), and onnx's version converter rewrites the few
ops whose signature changed. What cannot be converted is refused with the reason.
"""

from __future__ import annotations

import onnx

from onnxslim.distill.errors import UnsupportedVersionError
from onnxslim.errors import PassError
from onnxslim.opsets import convert_proto, default_opset

__all__ = ["MAX_IR_VERSION", "MAX_OPSET", "default_opset", "for_training_runtime"]

MAX_IR_VERSION = 10
MAX_OPSET = 21


def for_training_runtime(proto: onnx.ModelProto, role: str) -> onnx.ModelProto:
    """``proto`` (not modified) at IR ≤ 10 and opset ≤ 21, or UnsupportedVersionError.

    ``role`` (``student``, ``teacher``) names the model in messages.
    """
    opset = default_opset(proto)
    if opset <= MAX_OPSET and proto.ir_version <= MAX_IR_VERSION:
        return proto
    converted = onnx.ModelProto()
    converted.CopyFrom(proto)
    if opset > MAX_OPSET:
        if opset > onnx.defs.onnx_opset_version():
            raise UnsupportedVersionError(
                f"the {role} uses opset {opset}, newer than this onnx ({onnx.__version__}) "
                f"knows; export it with opset ≤ {MAX_OPSET} for onnxruntime-training"
            )
        try:
            converted = convert_proto(converted, MAX_OPSET)
        except PassError as exc:
            raise UnsupportedVersionError(
                f"the {role} uses opset {opset} and cannot be converted to opset {MAX_OPSET} "
                f"for onnxruntime-training ({str(exc).split(': ', 1)[-1]}); "
                f"export it with opset ≤ {MAX_OPSET}"
            ) from exc
    if converted.ir_version > MAX_IR_VERSION:
        original = converted.ir_version
        converted.ir_version = MAX_IR_VERSION
        try:
            onnx.checker.check_model(converted)
        except onnx.checker.ValidationError as exc:
            raise UnsupportedVersionError(
                f"the {role} has IR version {original} and uses features that IR version "
                f"{MAX_IR_VERSION} lacks, so onnxruntime-training cannot run it: "
                f"{str(exc).strip().splitlines()[0]}"
            ) from exc
    return converted
