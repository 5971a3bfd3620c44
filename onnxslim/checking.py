"""Structural validity: onnx.checker with shape inference, for models of any size.

The check runs on :func:`onnxslim.model.stub_proto`, in which large weights are stand-ins
that carry only name, type and shape: the checker and shape inference never read weight
bytes, so a 3 GB model is checked in the memory of its graph alone.
"""

from __future__ import annotations

import onnx

from onnxslim.errors import InvalidModelError
from onnxslim.model import Model, stub_proto

__all__ = ["check_model", "is_valid"]


def check_model(model: Model, *, full: bool = True) -> None:
    """Raise InvalidModelError (one line) unless onnx.checker accepts the model.

    ``full`` adds strict shape inference, which catches type and rank mismatches that the plain
    checker lets through.
    """
    proto = stub_proto(model)
    try:
        onnx.checker.check_model(proto, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
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
