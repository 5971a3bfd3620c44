"""Distillation loss graphs, run as standalone models in onnxruntime, against numpy.

These need only an inference build of onnxruntime, so they run in both environments.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import run_model, tensor_info
from onnx import TensorProto

from onnxslim.distill.losses import (
    LABELS_INPUT,
    PositionMask,
    build_loss,
    loss_model,
    target_name,
)

FLOAT = TensorProto.FLOAT
RTOL, ATOL = 1e-5, 1e-6


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _kl_reference(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    log_s = _log_softmax(student.astype(np.float64) / temperature)
    log_t = _log_softmax(teacher.astype(np.float64) / temperature)
    per_position = (np.exp(log_t) * (log_t - log_s)).sum(axis=-1)
    return float(per_position.mean() * temperature**2)


def _cross_entropy_reference(student: np.ndarray, labels: np.ndarray) -> float:
    log_p = _log_softmax(student.astype(np.float64))
    picked = np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    return float(-picked.mean())


def _evaluate(kind: str, shape, feeds: dict, *, opset: int = 17, **options) -> float:
    output = tensor_info("out", FLOAT, ["N", *shape[1:]])
    graph = build_loss([output], kind, opset=opset, **options)
    model = loss_model([output], graph)
    onnx.checker.check_model(model, full_check=True)
    return float(run_model(model, feeds)[0])


def _pair(shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    student = (rng.standard_normal(shape) * 3).astype(np.float32)
    teacher = (rng.standard_normal(shape) * 3).astype(np.float32)
    return student, teacher


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("shape", [(6, 10), (3, 5, 7)])
@pytest.mark.parametrize("opset", [11, 17])
def test_kl_matches_numpy_scaled_by_temperature_squared(temperature, shape, opset):
    student, teacher = _pair(shape)
    feeds = {"out": student, target_name("out"): teacher}
    got = _evaluate("kl", shape, feeds, opset=opset, temperature=temperature)
    assert got == pytest.approx(_kl_reference(student, teacher, temperature), rel=RTOL, abs=ATOL)


def test_kl_of_identical_outputs_is_zero():
    student, _ = _pair((4, 10))
    feeds = {"out": student, target_name("out"): student}
    assert _evaluate("kl", (4, 10), feeds, temperature=2.0) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("shape", [(8, 10), (2, 3, 6)])
def test_kl_with_labels_adds_alpha_times_cross_entropy(shape):
    student, teacher = _pair(shape, seed=1)
    labels = np.random.default_rng(2).integers(0, shape[-1], shape[:-1]).astype(np.int64)
    feeds = {"out": student, target_name("out"): teacher, LABELS_INPUT: labels}
    got = _evaluate("kl", shape, feeds, temperature=3.0, alpha=0.7, labels=True)
    expected = _kl_reference(student, teacher, 3.0) + 0.7 * _cross_entropy_reference(
        student, labels
    )
    assert got == pytest.approx(expected, rel=RTOL, abs=ATOL)


def test_mse_matches_numpy():
    student, teacher = _pair((5, 3, 4))
    feeds = {"out": student, target_name("out"): teacher}
    expected = float(((student.astype(np.float64) - teacher) ** 2).mean())
    assert _evaluate("mse", (5, 3, 4), feeds) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("opset", [11, 17])
def test_cosine_matches_numpy(opset):
    student, teacher = _pair((6, 4, 16), seed=3)
    feeds = {"out": student, target_name("out"): teacher}
    a, b = student.astype(np.float64), teacher.astype(np.float64)
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    got = _evaluate("cosine", (6, 4, 16), feeds, opset=opset)
    assert got == pytest.approx(1.0 - cosine.mean(), rel=RTOL, abs=ATOL)


def test_several_outputs_add_up():
    outputs = [tensor_info("a", FLOAT, ["N", 4]), tensor_info("b", FLOAT, ["N", 4])]
    graph = build_loss(outputs, "mse", opset=17)
    a, b = _pair((3, 4), seed=4)
    ta, tb = _pair((3, 4), seed=5)
    feeds = {"a": a, "b": b, target_name("a"): ta, target_name("b"): tb}
    got = float(run_model(loss_model(outputs, graph), feeds)[0])
    expected = float(((a - ta).astype(np.float64) ** 2).mean() + ((b - tb) ** 2).mean())
    assert got == pytest.approx(expected, rel=RTOL)


def _masked_reference(kind: str, student: np.ndarray, teacher: np.ndarray, mask: np.ndarray):
    a, b = student.astype(np.float64), teacher.astype(np.float64)
    if kind == "kl":
        log_s, log_t = _log_softmax(a / 2.0), _log_softmax(b / 2.0)
        per_position = (np.exp(log_t) * (log_t - log_s)).sum(-1) * 4.0
    elif kind == "mse":
        per_position = ((a - b) ** 2).mean(-1)
    else:
        norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
        per_position = -(a * b).sum(-1) / norms
    value = per_position[mask == 1].mean()
    return float(1.0 + value if kind == "cosine" else value)


@pytest.mark.parametrize("kind", ["kl", "mse", "cosine"])
def test_masked_loss_averages_over_the_unmasked_positions_only(kind):
    """Positions the mask zeroes (padding) neither count in the mean nor move the loss."""
    shape = (3, 5, 6)
    student, teacher = _pair(shape, seed=6)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.int64)
    output = tensor_info("out", FLOAT, ["N", "S", 6])
    graph = build_loss([output], kind, opset=17, temperature=2.0, mask=PositionMask("m", 2))
    model = loss_model([output], graph, [tensor_info("m", TensorProto.INT64, ["N", "S"])])
    onnx.checker.check_model(model, full_check=True)
    feeds = {"out": student, target_name("out"): teacher, "m": mask}
    got = float(run_model(model, feeds)[0])
    assert got == pytest.approx(_masked_reference(kind, student, teacher, mask), rel=RTOL)
    noisy = student.copy()
    noisy[mask == 0] += 5.0
    assert float(run_model(model, {**feeds, "out": noisy})[0]) == pytest.approx(got, rel=RTOL)


def test_mask_leaves_outputs_without_positions_as_they_were():
    """A pooled output ([N, features]) is averaged over the batch as without a mask."""
    outputs = [tensor_info("pooled", FLOAT, ["N", 4]), tensor_info("tokens", FLOAT, ["N", "S", 4])]
    mask = PositionMask("m", 2)
    graph = build_loss(outputs, "mse", opset=17, mask=mask)
    model = loss_model(outputs, graph, [tensor_info("m", TensorProto.INT64, ["N", "S"])])
    a, ta = _pair((2, 4), seed=7)
    b, tb = _pair((2, 3, 4), seed=8)
    m = np.array([[1, 1, 0], [1, 0, 0]], np.int64)
    feeds = {"pooled": a, "tokens": b, target_name("pooled"): ta, target_name("tokens"): tb}
    got = float(run_model(model, {**feeds, "m": m})[0])
    expected = float(((a - ta).astype(np.float64) ** 2).mean()) + _masked_reference("mse", b, tb, m)
    assert got == pytest.approx(expected, rel=RTOL)
