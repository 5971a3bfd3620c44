"""The ``ort-training`` backend: onnxruntime-training's Module and Optimizer over artifacts.

For environments that have onnxruntime-training (the ``train`` extra, its last release
1.19.2); :mod:`onnxslim.distill.artifacts` builds what it loads. Same interface as the native
backend: a step takes feeds by name and a learning rate.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxslim.distill.artifacts import Artifacts

__all__ = ["OrtTrainingBackend"]


class OrtTrainingBackend:
    """``artifacts`` loaded into onnxruntime-training on the CPU."""

    name = "ort-training"

    def __init__(self, artifacts: Artifacts, *, threads: int = 0) -> None:
        from onnxruntime import SessionOptions
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        options = SessionOptions()
        options.intra_op_num_threads = threads
        self.state = CheckpointState.load_checkpoint(str(artifacts.checkpoint))
        self.module = Module(
            str(artifacts.training_model),
            self.state,
            str(artifacts.eval_model),
            device="cpu",
            session_options=options,
        )
        self.optimizer = Optimizer(str(artifacts.optimizer_model), self.module)
        self.parameters = artifacts.parameters
        self.lr: float | None = None

    def _inputs(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.ascontiguousarray(feeds[name]) for name in self.module.input_names()]

    def train_step(self, feeds: Mapping[str, np.ndarray], lr: float) -> float:
        if lr != self.lr:
            self.optimizer.set_learning_rate(lr)
            self.lr = lr
        self.module.train()
        loss = self.module(*self._inputs(feeds))[0]
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return float(loss)

    def evaluate(self, feeds: Mapping[str, np.ndarray]) -> tuple[float, list[np.ndarray]]:
        self.module.eval()
        loss, *outputs = self.module(*self._inputs(feeds))
        return float(loss), list(outputs)

    def snapshot(self) -> dict[str, np.ndarray]:
        return {name: np.array(self.state.parameters[name].data) for name in self.parameters}
