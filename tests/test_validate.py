"""validate(): outputs of a candidate compared with a reference's on onnxruntime."""

from __future__ import annotations

import importlib
import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.errors import InputDataError, InvalidModelError, ProviderUnavailableError
from onnxslim.inputs import input_specs, synthesize_inputs
from onnxslim.model import load
from onnxslim.validate import validate

vi = helper.make_tensor_value_info

# Rows whose argmax moves when the last column's weight grows from 1.0 to 1.6: only row 2.
SCORES_X = np.array(
    [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [0.5, 0.4, 0.1]], np.float32
)
WEIGHT = np.array([1.0, 1.0, 1.0], np.float32)
PERTURBED = np.array([1.0, 1.0, 1.6], np.float32)


@pytest.fixture
def scorer(build_model):
    """``scores = x * weight`` (float [N, 3]) and ``label = argmax(scores)`` (int64 [N])."""

    def make(weight=WEIGHT, outputs=("scores", "label")):
        nodes = [
            helper.make_node("Mul", ["x", "weight"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ]
        infos = {
            "scores": vi("scores", TensorProto.FLOAT, ["N", 3]),
            "label": vi("label", TensorProto.INT64, ["N"]),
        }
        return build_model(
            nodes,
            [vi("x", TensorProto.FLOAT, ["N", 3])],
            [infos[name] for name in outputs],
            {"weight": np.asarray(weight, np.float32)},
        )

    return make


def _output(report, name, provider="cpu"):
    (found,) = [o for o in report.outputs if o.name == name and o.provider == provider]
    return found


def _expected_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    ref, cand = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    err = np.abs(cand - ref)
    nonzero = ref != 0
    return {
        "max_abs": err.max(),
        "mean_abs": err.mean(),
        "max_rel": (err[nonzero] / np.abs(ref[nonzero])).max(),
        "cosine": ref @ cand / np.sqrt((ref @ ref) * (cand @ cand)),
        "sqnr_db": 10 * np.log10((ref @ ref) / (err @ err)),
    }


def test_identical_models_pass_with_zero_error(classifier_model):
    report = validate(classifier_model, classifier_model, samples=2, progress=False)
    assert report.passed
    logits = _output(report, "logits")
    assert logits.max_abs == 0.0
    assert logits.mean_abs == 0.0
    assert logits.cosine == 1.0
    assert logits.sqnr_db == float("inf")
    assert logits.top1_agreement == 1.0
    assert logits.mismatches == 0
    assert (logits.shape, logits.dtype) == ((1, 10), "float32")
    assert report.samples == 2


@pytest.mark.parametrize("chunk", [5, 1 << 20], ids=["in-blocks", "whole"])
def test_metrics_of_a_perturbed_weight_match_numpy(scorer, monkeypatch, chunk):
    # the package's ``validate`` function shadows the module's name as an attribute
    monkeypatch.setattr(importlib.import_module("onnxslim.validate"), "_CHUNK", chunk)
    report = validate(scorer(), scorer(PERTURBED), inputs=[{"x": SCORES_X}], progress=False)
    scores = _output(report, "scores")
    expected = _expected_metrics(SCORES_X * WEIGHT, SCORES_X * PERTURBED)
    for metric, value in expected.items():
        assert getattr(scores, metric) == pytest.approx(value, rel=1e-12), metric
    assert scores.top1_agreement == 0.75
    assert not scores.passed
    assert scores.mismatches == 4  # the last column differs in every row
    assert "4 of 12 elements outside atol=0.0001" in scores.reason


def test_metrics_aggregate_over_synthesized_samples(make_classifier, classifier_model):
    candidate = make_classifier()
    bias = candidate.graph.initializer[3]
    assert bias.name == "fc.bias"
    values = numpy_helper.to_array(bias) + np.linspace(0, 0.01, 10, dtype=np.float32)
    bias.CopyFrom(numpy_helper.from_array(values, "fc.bias"))
    report = validate(
        classifier_model,
        candidate,
        samples=3,
        seed=7,
        input_shapes={"image": [4, 3, 8, 8]},
        progress=False,
    )

    sessions = [ort.InferenceSession(m.SerializeToString()) for m in (classifier_model, candidate)]
    specs = input_specs(classifier_model)
    ref, cand = (
        np.concatenate(
            [
                session.run(None, synthesize_inputs(specs, {"image": [4, 3, 8, 8]}, 7, i))[0]
                for i in range(3)
            ]
        )
        for session in sessions
    )
    logits = _output(report, "logits")
    for metric, value in _expected_metrics(ref, cand).items():
        assert getattr(logits, metric) == pytest.approx(value, rel=1e-9), metric
    assert logits.top1_agreement == pytest.approx(np.mean(ref.argmax(1) == cand.argmax(1)))
    assert not logits.passed


def test_a_perturbation_within_tolerance_passes(scorer):
    slightly = WEIGHT + np.float32(1e-6)
    report = validate(scorer(), scorer(slightly), inputs=[{"x": SCORES_X}], progress=False)
    assert report.passed
    assert 0 < _output(report, "scores").max_abs < 1e-5


def test_tolerance_is_elementwise_atol_plus_rtol_times_reference(scorer):
    # |error| in the last column is 0.6 * x = 1.8, 0.6, 1.2, 0.06; |reference| is 3, 1, 2, 0.1
    only_scores = {"outputs": ("scores",)}
    inputs = [{"x": SCORES_X}]
    reference, candidate = scorer(**only_scores), scorer(PERTURBED, **only_scores)
    within = validate(reference, candidate, inputs=inputs, atol=0.0, rtol=0.61, progress=False)
    assert within.passed
    beyond = validate(reference, candidate, inputs=inputs, atol=0.0, rtol=0.59, progress=False)
    assert _output(beyond, "scores").mismatches == 4


def test_min_cosine_fails_an_output_that_is_within_atol(scorer):
    inputs = [{"x": SCORES_X}]
    reference, candidate = scorer(outputs=("scores",)), scorer(PERTURBED, outputs=("scores",))
    loose = validate(reference, candidate, inputs=inputs, atol=10.0, progress=False)
    assert loose.passed
    strict = validate(
        reference, candidate, inputs=inputs, atol=10.0, min_cosine=0.9999, progress=False
    )
    scores = _output(strict, "scores")
    assert not scores.passed
    assert scores.reason == f"cosine {scores.cosine:.6f} < min_cosine 0.9999"


def test_integer_outputs_are_compared_exactly(scorer):
    report = validate(scorer(), scorer(PERTURBED), inputs=[{"x": SCORES_X}], progress=False)
    label = _output(report, "label")
    assert label.mismatches == 1
    assert label.max_abs is None and label.cosine is None
    assert not label.passed
    assert label.reason == "1 of 4 elements differ"


def test_top1_agreement_is_absent_for_outputs_that_are_not_n_by_c(text_embedding_model):
    report = validate(text_embedding_model, text_embedding_model, progress=False)
    assert _output(report, "hidden").top1_agreement is None
    assert _output(report, "top_feature").mismatches == 0


@pytest.fixture
def sqrt_model(build_model):
    """``root = sqrt(x)``, optionally of ``abs(x)``: NaN for negative x unless ``absolute``."""

    def make(absolute=False):
        nodes = [helper.make_node("Abs" if absolute else "Identity", ["x"], ["x_used"])]
        nodes.append(helper.make_node("Sqrt", ["x_used"], ["root"]))
        return build_model(
            nodes, [vi("x", TensorProto.FLOAT, [4])], [vi("root", TensorProto.FLOAT, [4])]
        )

    return make


def test_nan_in_the_same_positions_is_equal(sqrt_model):
    inputs = [{"x": np.array([-1.0, 4.0, -9.0, 16.0], np.float32)}]
    report = validate(sqrt_model(), sqrt_model(), inputs=inputs, progress=False)
    assert report.passed
    assert _output(report, "root").max_abs == 0.0


def test_nan_in_only_one_model_fails(sqrt_model):
    inputs = [{"x": np.array([-1.0, 4.0, -9.0, 16.0], np.float32)}]
    report = validate(sqrt_model(), sqrt_model(absolute=True), inputs=inputs, progress=False)
    root = _output(report, "root")
    assert not root.passed
    assert root.mismatches == 2
    assert "2 NaN/inf where the other model differs" in root.reason


def test_a_reference_output_missing_from_the_candidate_fails(scorer):
    report = validate(
        scorer(), scorer(outputs=("scores",)), inputs=[{"x": SCORES_X}], progress=False
    )
    label = _output(report, "label")
    assert not label.passed
    assert label.reason == "missing from the candidate's outputs"
    assert "'label' on cpu: missing" in report.failure_summary()


def test_a_different_output_dtype_fails(build_model):
    def model(cast_to):
        return build_model(
            [helper.make_node("Cast", ["x"], ["y"], to=cast_to)],
            [vi("x", TensorProto.FLOAT, [3])],
            [vi("y", cast_to, [3])],
        )

    report = validate(model(TensorProto.FLOAT), model(TensorProto.DOUBLE), progress=False)
    assert _output(report, "y").reason == "dtype float64 differs from the reference's float32"


def _reshape(build_model, target: list[int]):
    """x [2, 3] reshaped to ``target``."""
    return build_model(
        [helper.make_node("Reshape", ["x", "target"], ["y"])],
        [vi("x", TensorProto.FLOAT, [2, 3])],
        [vi("y", TensorProto.FLOAT, target)],
        {"target": np.array(target, np.int64)},
    )


def test_a_different_output_shape_fails(build_model):
    report = validate(_reshape(build_model, [3, 2]), _reshape(build_model, [6]), progress=False)
    assert _output(report, "y").reason == "shape (6,) differs from the reference's (3, 2)"


def test_models_with_different_inputs_are_an_input_data_error(scorer, build_model):
    other = build_model(
        [helper.make_node("Identity", ["x"], ["scores"])],
        [vi("x", TensorProto.DOUBLE, ["N", 3])],
        [vi("scores", TensorProto.DOUBLE, ["N", 3])],
    )
    with pytest.raises(InputDataError, match="input 'x' is double in the candidate, float"):
        validate(scorer(), other, progress=False)


def test_a_candidate_that_fails_to_run_is_named(build_model):
    with pytest.raises(InvalidModelError, match="^candidate model: onnxruntime failed to run"):
        validate(_reshape(build_model, [6]), _reshape(build_model, [4]), progress=False)


def test_an_infinite_atol_leaves_the_decision_to_min_cosine_without_warnings(scorer):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loose = validate(
            scorer(), scorer(PERTURBED), atol=float("inf"), min_cosine=0.9, progress=False
        )
    assert _output(loose, "scores").passed
    strict = validate(scorer(), scorer(PERTURBED), atol=float("inf"), min_cosine=0.9999999)
    assert "min_cosine" in _output(strict, "scores").reason


def test_models_can_be_given_as_paths_bytes_protos_or_models(classifier_model, save_model):
    path = save_model(classifier_model)
    for candidate in (path, str(path), path.read_bytes(), classifier_model, load(path)):
        assert validate(classifier_model, candidate, progress=False).passed


def test_inputs_from_an_npz_file(scorer, tmp_path):
    np.savez(tmp_path / "x.npz", x=np.stack([SCORES_X, SCORES_X * 2]))
    report = validate(scorer(), scorer(PERTURBED), inputs=tmp_path / "x.npz", progress=False)
    assert report.samples == 8  # two batches of four rows
    assert report.inputs == str(tmp_path / "x.npz")
    expected = _expected_metrics(
        np.concatenate([SCORES_X, 2 * SCORES_X]) * WEIGHT,
        np.concatenate([SCORES_X, 2 * SCORES_X]) * PERTURBED,
    )
    assert _output(report, "scores").max_abs == pytest.approx(expected["max_abs"], rel=1e-12)


def test_input_shapes_set_the_synthesized_shapes(text_embedding_model):
    report = validate(
        text_embedding_model,
        text_embedding_model,
        input_shapes={"input_ids": [2, 7]},
        progress=False,
    )
    assert _output(report, "hidden").shape == (2, 7, 8)


def test_input_data_and_input_shapes_together_are_rejected(scorer):
    with pytest.raises(InputDataError, match="not both"):
        validate(
            scorer(),
            scorer(),
            inputs=[{"x": SCORES_X}],
            input_shapes={"x": [4, 3]},
            progress=False,
        )


def test_given_feeds_are_checked_against_the_inputs(scorer):
    with pytest.raises(InputDataError, match="input sample 0: input 'x' expects 3 at axis 1"):
        validate(scorer(), scorer(), inputs=[{"x": np.ones((2, 4), np.float32)}], progress=False)


def test_unknown_provider_fails_before_running(classifier_model):
    with pytest.raises(ProviderUnavailableError, match="choose one of cpu, cuda, tensorrt"):
        validate(classifier_model, classifier_model, providers=("cpu", "npu"), progress=False)


def test_report_is_json_safe(scorer):
    report = validate(scorer(), scorer(), inputs=[{"x": SCORES_X}], progress=False)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["passed"] is True
    assert data["tolerances"] == {"atol": 1e-4, "rtol": 1e-3, "min_cosine": None}
    scores = next(o for o in data["outputs"] if o["name"] == "scores")
    assert scores["sqnr_db"] == "inf"
    assert scores["shape"] == [4, 3]


def test_failure_summary_names_each_failing_output_and_its_worst_metric(scorer):
    report = validate(scorer(), scorer(PERTURBED), inputs=[{"x": SCORES_X}], progress=False)
    summary = report.failure_summary()
    assert "\n" not in summary
    assert "'scores' on cpu: 4 of 12 elements outside" in summary
    assert "max_abs 1.8" in summary
    assert "'label' on cpu: 1 of 4 elements differ" in summary


def test_a_progress_bar_does_not_change_the_result(scorer):
    report = validate(scorer(), scorer(), inputs=[{"x": SCORES_X}], progress=True)
    assert report.passed


@pytest.mark.cuda
def test_validate_on_cuda(classifier_model, make_classifier):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime's CUDAExecutionProvider is not available")
    report = validate(
        classifier_model, classifier_model, providers=("cpu", "cuda"), samples=2, progress=False
    )
    assert report.passed
    assert {o.provider for o in report.outputs} == {"cpu", "cuda"}
    assert _output(report, "logits", "cuda").max_abs <= 1e-6

    perturbed = make_classifier()
    bias = perturbed.graph.initializer[3]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.5, "fc.bias"))
    failing = validate(classifier_model, perturbed, providers=("cuda",), progress=False)
    assert _output(failing, "logits", "cuda").max_abs == pytest.approx(0.5, abs=1e-5)
    assert validate(
        classifier_model, perturbed, providers=("cuda",), tf32=True, atol=1.0, progress=False
    ).passed
