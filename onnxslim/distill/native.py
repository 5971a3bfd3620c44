"""The ``native`` training backend: the step and eval models in plain onnxruntime sessions.

Any onnxruntime build runs them: the CPU wheel, or onnxruntime-gpu on CUDA. Parameters and
optimizer state live in OrtValues on the session's device and never come back to Python
between steps: two sets of buffers alternate, each step reading one set and writing the
other through I/O binding (one binding per direction, bound once), so a step costs one
``run_with_iobinding`` plus copying the batch in and the loss out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from onnxslim.distill.optimizers import LR_INPUT, STEP_INPUT
from onnxslim.distill.training_graph import TrainingGraphs
from onnxslim.runtime import require_onnxruntime

__all__ = ["NativeBackend"]


class NativeBackend:
    """Trains :class:`TrainingGraphs` from ``initial`` parameter values on ``provider``."""

    name = "native"

    def __init__(
        self,
        graphs: TrainingGraphs,
        initial: Mapping[str, np.ndarray],
        sessions: tuple[Any, Any],
        *,
        device: str = "cpu",
    ) -> None:
        """``sessions``: the step and eval models' sessions, on ``device`` (cpu or cuda)."""
        ort = require_onnxruntime()
        self.graphs = graphs
        self.step_session, self.eval_session = sessions
        self.device = device
        self.steps = 0

        # Each parameter and state has two buffers; a step reads one set and writes the other.
        shapes = {}
        for p in graphs.parameters:
            shapes[p] = initial[p]
            for state_input, _ in graphs.state[p]:
                shapes[state_input] = initial[p]
        first = {
            name: ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(initial[name] if name in initial else np.zeros_like(like)),
                self.device,
                0,
            )
            for name, like in shapes.items()
        }
        second = {
            name: ort.OrtValue.ortvalue_from_shape_and_type(like.shape, like.dtype, self.device, 0)
            for name, like in shapes.items()
        }
        self.buffers = [first, second]
        self.bindings = [self._binding(first, second), self._binding(second, first)]
        self.current = 0

    def _binding(self, source: dict[str, Any], target: dict[str, Any]) -> Any:
        binding = self.step_session.io_binding()
        for name, value in source.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.graphs.loss, "cpu")
        for p in self.graphs.parameters:
            binding.bind_ortvalue_output(self.graphs.updated[p], target[p])
            for state_input, state_output in self.graphs.state[p]:
                binding.bind_ortvalue_output(state_output, target[state_input])
        return binding

    def train_step(self, feeds: Mapping[str, np.ndarray], lr: float) -> float:
        """One optimizer step on the batch ``feeds``; the batch's loss before the step."""
        self.steps += 1
        binding = self.bindings[self.current]
        for name in self.graphs.data_inputs:
            binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
        binding.bind_cpu_input(LR_INPUT, np.array(lr, np.float32))
        binding.bind_cpu_input(STEP_INPUT, np.array(self.steps, np.float32))
        self.step_session.run_with_iobinding(binding)
        loss = binding.get_outputs()[0].numpy()
        self.current = 1 - self.current
        return float(loss)

    def evaluate(self, feeds: Mapping[str, np.ndarray]) -> tuple[float, list[np.ndarray]]:
        """The loss and the student's matched outputs on ``feeds``, with the current weights."""
        binding = self.eval_session.io_binding()
        parameters = self.buffers[self.current]
        for p in self.graphs.parameters:
            binding.bind_ortvalue_input(p, parameters[p])
        for name in self.graphs.data_inputs:
            binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
        for name in [self.graphs.loss, *self.graphs.eval_outputs]:
            binding.bind_output(name, "cpu")
        self.eval_session.run_with_iobinding(binding)
        loss, *outputs = (value.numpy() for value in binding.get_outputs())
        return float(loss), outputs

    def snapshot(self) -> dict[str, np.ndarray]:
        """The current parameter values, copied to the host."""
        parameters = self.buffers[self.current]
        return {p: parameters[p].numpy().copy() for p in self.graphs.parameters}
