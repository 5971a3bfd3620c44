"""Optimizer steps as ONNX nodes: AdamW and SGD, both with weight decay.

The update runs in the same graph as the forward and backward passes, so one
``session.run`` trains one step. The learning rate and the step count are graph inputs, so
the schedule stays in Python and the graph never changes. AdamW follows PyTorch's
``torch.optim.AdamW`` exactly (decoupled decay ``p·(1 - lr·wd)``, bias-corrected moments,
``eps`` added to the corrected square root); SGD follows ``torch.optim.SGD`` without momentum
(decay added to the gradient).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import helper

from onnxslim.distill.emitter import GraphEmitter

__all__ = [
    "OptimizerKind",
    "OPTIMIZERS",
    "OptimizerSettings",
    "OptimizerStep",
    "LR_INPUT",
    "STEP_INPUT",
    "build_optimizer_step",
]

OptimizerKind = Literal["adamw", "sgd"]
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
LR_INPUT = "optim/lr"
STEP_INPUT = "optim/step"


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer and its constants (PyTorch's defaults)."""

    kind: OptimizerKind = "adamw"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    @property
    def state_names(self) -> tuple[str, ...]:
        """The per-parameter state tensors, each shaped like its parameter."""
        return ("exp_avg", "exp_avg_sq") if self.kind == "adamw" else ()


@dataclass
class OptimizerStep:
    """The update nodes. ``updated`` maps a parameter to its new value's tensor; ``state``
    maps (parameter, state name) to the (input, output) tensors of that state."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    updated: dict[str, str] = field(default_factory=dict)
    state: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)


def build_optimizer_step(
    parameters: Mapping[str, tuple[str, onnx.TypeProto]],
    settings: OptimizerSettings,
    *,
    opset: int,
) -> OptimizerStep:
    """Update nodes for ``parameters``: name -> (gradient tensor, the parameter's type).

    Inputs: :data:`LR_INPUT` (the learning rate) and :data:`STEP_INPUT` (the 1-based step
    count, for AdamW's bias correction), both float32 scalars, plus each state tensor.
    """
    emit = GraphEmitter("optim/", opset)
    step = OptimizerStep()
    scalar = onnx.TypeProto()
    scalar.tensor_type.elem_type = onnx.TensorProto.FLOAT
    scalar.tensor_type.shape.SetInParent()
    step.inputs += [
        helper.make_value_info(LR_INPUT, scalar),
        helper.make_value_info(STEP_INPUT, scalar),
    ]
    lr = LR_INPUT
    decay = None
    if settings.weight_decay and settings.kind == "adamw":
        decay = emit.op(
            "Sub", [emit.constant(1.0), emit.op("Mul", [lr, emit.constant(settings.weight_decay)])]
        )
    if settings.kind == "adamw":
        b1, b2 = settings.beta1, settings.beta2
        correction1 = emit.op(
            "Sub", [emit.constant(1.0), emit.op("Pow", [emit.constant(b1), STEP_INPUT])]
        )
        correction2 = emit.op(
            "Sub", [emit.constant(1.0), emit.op("Pow", [emit.constant(b2), STEP_INPUT])]
        )
        step_size = emit.op("Div", [lr, correction1])
        root_correction = emit.op("Reciprocal", [emit.op("Sqrt", [correction2])])
    for name, (grad, value_type) in parameters.items():
        dtype = helper.tensor_dtype_to_np_dtype(value_type.tensor_type.elem_type)

        def const(value: float, dtype: np.dtype = dtype) -> str:
            return emit.constant(value, dtype)

        if settings.kind == "sgd":
            if settings.weight_decay:
                grad = emit.op("Add", [grad, emit.op("Mul", [name, const(settings.weight_decay)])])
            step.updated[name] = emit.op(
                "Sub", [name, emit.op("Mul", [grad, _cast(emit, lr, dtype)])]
            )
            continue
        m_in, v_in = (
            _state_input(step, name, "exp_avg", value_type),
            _state_input(step, name, "exp_avg_sq", value_type),
        )
        m_out = emit.op(
            "Add", [emit.op("Mul", [m_in, const(b1)]), emit.op("Mul", [grad, const(1 - b1)])]
        )
        squared = emit.op("Mul", [emit.op("Mul", [grad, grad]), const(1 - b2)])
        v_out = emit.op("Add", [emit.op("Mul", [v_in, const(b2)]), squared])
        denominator = emit.op(
            "Add",
            [
                emit.op("Mul", [emit.op("Sqrt", [v_out]), _cast(emit, root_correction, dtype)]),
                const(settings.eps),
            ],
        )
        change = emit.op(
            "Mul", [emit.op("Div", [m_out, denominator]), _cast(emit, step_size, dtype)]
        )
        base = name if decay is None else emit.op("Mul", [name, _cast(emit, decay, dtype)])
        step.updated[name] = emit.op("Sub", [base, change])
        step.state[(name, "exp_avg")] = (m_in, m_out)
        step.state[(name, "exp_avg_sq")] = (v_in, v_out)
    step.nodes, step.initializers = emit.nodes, emit.initializers
    return step


def _cast(emit: GraphEmitter, scalar: str, dtype: np.dtype) -> str:
    """A float32 scalar in the parameter's type (float64 parameters in tests)."""
    if np.dtype(dtype) == np.float32:
        return scalar
    return emit.op("Cast", [scalar], to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _state_input(
    step: OptimizerStep, parameter: str, state: str, value_type: onnx.TypeProto
) -> str:
    name = f"optim/{state}/{parameter}"
    step.inputs.append(helper.make_value_info(name, value_type))
    return name
