"""Streaming calibration: statistics updated batch by batch, data checked against the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, tensor_info
from onnx import TensorProto, helper

from onnxslim.calibration import (
    HISTOGRAM_BINS,
    SYNTHETIC_WARNING,
    SynthesizedSamples,
    TensorStats,
    batched,
    calibrate,
    calibration_samples,
)
from onnxslim.errors import InputDataError
from onnxslim.inputs import input_specs


def _scaled_model() -> onnx.ModelProto:
    """``x`` [N, 4] -> Mul by 2 -> ``doubled`` -> Relu -> ``y``."""
    return make_model(
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
            helper.make_node("Relu", ["doubled"], ["y"]),
        ],
        [tensor_info("x", TensorProto.FLOAT, ["N", 4])],
        [tensor_info("y", TensorProto.FLOAT, ["N", 4])],
        {"two": np.array(2.0, dtype=np.float32)},
    )


def _samples(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(count)]


def test_calibration_over_more_samples_than_a_batch_sees_every_sample() -> None:
    samples = _samples(41)
    stats = calibrate(_scaled_model(), ["doubled", "x"], samples, histograms=True, batch_size=8)
    everything = np.concatenate([s["x"] for s in samples])
    assert stats["doubled"].minimum == pytest.approx(2 * everything.min(), rel=1e-6)
    assert stats["doubled"].maximum == pytest.approx(2 * everything.max(), rel=1e-6)
    assert stats["x"].maximum == pytest.approx(everything.max(), rel=1e-6)
    assert stats["doubled"].count == everything.size
    assert int(stats["doubled"].histogram.sum()) == everything.size


def test_samples_stack_into_batches_only_along_a_dynamic_first_dimension() -> None:
    specs = input_specs(_scaled_model())
    counts = [count for _, count in batched(_samples(20), specs, 8)]
    assert counts == [8, 8, 4]
    static = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [tensor_info("x", TensorProto.FLOAT, [1, 4])],
        [tensor_info("y", TensorProto.FLOAT, [1, 4])],
    )
    assert [c for _, c in batched(_samples(3), input_specs(static), 8)] == [1, 1, 1]


def test_histogram_keeps_its_counts_when_its_range_doubles() -> None:
    stats = TensorStats(with_histogram=True)
    stats.update(np.linspace(-1, 1, 1000, dtype=np.float32))
    first_bound = stats.bound
    stats.update(np.array([7.5], dtype=np.float32))
    assert stats.bound == pytest.approx(8 * first_bound)
    assert int(stats.histogram.sum()) == 1001
    assert stats.histogram.size == HISTOGRAM_BINS


def test_percentile_and_entropy_clip_a_lone_outlier_that_minmax_keeps() -> None:
    rng = np.random.default_rng(0)
    stats = TensorStats(with_histogram=True)
    for _ in range(10):
        stats.update(rng.uniform(0, 1, 10_000).astype(np.float32))
    stats.update(np.array([100.0], dtype=np.float32))
    assert stats.range("minmax") == (0.0, 100.0)
    low, high = stats.range("percentile", percentile=99.9)
    assert low == 0.0 and 0.9 < high < 1.5
    assert stats.range("entropy")[1] < 10.0


def test_synthesized_calibration_data_comes_with_a_loud_warning() -> None:
    warnings: list[str] = []
    samples = calibration_samples(_scaled_model(), None, 3, warn=warnings.append)
    assert len(samples) == 3 and samples[0]["x"].shape == (1, 4)
    assert warnings == [SYNTHETIC_WARNING]


def test_synthesized_samples_are_made_on_demand_and_repeatable() -> None:
    samples = calibration_samples(_scaled_model(), None, 10_000)
    assert isinstance(samples, SynthesizedSamples) and len(samples) == 10_000
    np.testing.assert_array_equal(samples[9_999]["x"], samples[-1]["x"])
    assert [s["x"].shape for s in samples[:2]] == [(1, 4), (1, 4)]


def test_a_labelled_npz_gives_one_sample_per_row_without_its_labels(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.ones((5, 4), np.float32), labels=np.arange(5))
    samples = calibration_samples(_scaled_model(), path, 10)
    assert len(samples) == 5 and set(samples[0]) == {"x"} and samples[0]["x"].shape == (1, 4)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"image": np.ones((3, 1, 4), np.float32)}, "no data for input 'x'"),
        ({"x": np.ones((3, 1, 5), np.float32)}, "expects 4 at axis 1"),
        ({"x": np.ones((3, 1, 4), np.complex64)}, "expects float32 data"),
    ],
    ids=["wrong-name", "wrong-shape", "wrong-dtype"],
)
def test_bad_calibration_files_raise_one_clear_error(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputDataError, match=message):
        calibration_samples(_scaled_model(), path, 10)
