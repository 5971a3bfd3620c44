"""Trained weights back into the student graph, which keeps its structure.

Only the values of existing initializers change: no node, name, shape or type does, so the
result is the student a user handed in (same opset and IR version, even when training ran on a
down-converted copy), ready for quantization or any other pass.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.model import Model

__all__ = ["write_back"]


def write_back(model: Model, parameters: Mapping[str, np.ndarray]) -> int:
    """Replace the values of ``model``'s initializers named in ``parameters``; how many changed.

    A name that is missing, or a value whose shape or dtype differs from the initializer's,
    is a bug upstream (training never reshapes a weight) and raises ValueError.
    """
    tensors = model.graph.tensors()
    changed = 0
    for name, values in parameters.items():
        tensor = tensors.get(name)
        if not isinstance(tensor, gs.Constant):
            raise ValueError(f"trained parameter '{name}' is not an initializer of the student")
        values = np.asarray(values)
        if tuple(tensor.shape) != values.shape or np.dtype(tensor.dtype) != values.dtype:
            raise ValueError(
                f"trained parameter '{name}' is {values.dtype}{list(values.shape)}, "
                f"the student's initializer {np.dtype(tensor.dtype)}{list(tensor.shape)}"
            )
        tensor.values = values
        changed += 1
    return changed
