"""onnxslim.distill: refusals, and training with each backend.

Teacher: the digits CNN fixture. Student: a small MLP with random weights, which has a lot to
learn from the teacher and learns it in a few epochs on a few hundred images. The native
backend runs in every environment; ort-training only where onnxruntime-training is installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_model, run_model, tensor_info
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from onnxslim.cli import app
from onnxslim.distill import (
    DistillDataError,
    DistillOptionError,
    GradientError,
    OutputMismatchError,
    QuantizedStudentError,
    TrainingRuntimeMissingError,
    UnsupportedVersionError,
    distill,
)
from onnxslim.distill.versions import MAX_IR_VERSION, MAX_OPSET, for_training_runtime
from onnxslim.model import load

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TEACHER = FIXTURES / "digits_cnn.onnx"
FLOAT = TensorProto.FLOAT
HAS_TRAINING = importlib.util.find_spec("onnxruntime") is not None and (
    importlib.util.find_spec("onnxruntime.training") is not None
)
_SKIP_WITHOUT_TRAINING = pytest.mark.skipif(
    not HAS_TRAINING,
    reason="needs onnxruntime-training (the `train` extra, in .venv-train)",
)


def train(test):
    """Mark a test as needing onnxruntime-training, and skip it where it is missing."""
    return pytest.mark.train(_SKIP_WITHOUT_TRAINING(test))


BACKENDS = [
    "native",
    pytest.param("ort-training", marks=[pytest.mark.train, _SKIP_WITHOUT_TRAINING]),
]
FAST = dict(epochs=4, batch_size=32, lr=3e-2, warmup=0, patience=0, threads=1, progress=False)


def mlp_student(hidden: int = 16, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """``image`` [N,1,8,8] -> Flatten -> Gemm -> Relu -> Gemm -> ``logits`` [N,10]."""
    rng = np.random.default_rng(seed)
    weights = {
        "fc1.weight": (rng.standard_normal((hidden, 64)) * 0.2).astype(np.float32),
        "fc1.bias": np.zeros(hidden, np.float32),
        "fc2.weight": (rng.standard_normal((10, hidden)) * 0.2).astype(np.float32),
        "fc2.bias": np.zeros(10, np.float32),
    }
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["logits"], transB=1),
    ]
    return make_model(
        nodes,
        [tensor_info("image", FLOAT, ["N", 1, 8, 8])],
        [tensor_info("logits", FLOAT, ["N", 10])],
        weights,
        opset=opset,
    )


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "digits.npz") as data:
        return {name: data[name] for name in data.files}


@pytest.fixture
def train_npz(tmp_path, digits) -> Path:
    path = tmp_path / "train.npz"
    np.savez(path, image=digits["x_train"][:320], labels=digits["y_train"][:320])
    return path


@pytest.fixture
def student_path(tmp_path) -> Path:
    path = tmp_path / "student.onnx"
    onnx.save(mlp_student(), path)
    return path


def _agreement(path: Path, images: np.ndarray) -> float:
    teacher = run_model(onnx.load(TEACHER), {"image": images})[0].argmax(-1)
    student = run_model(onnx.load(path), {"image": images})[0].argmax(-1)
    return float((teacher == student).mean())


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


# ------------------------------------------------------------------------------- refusals


def _fake_quantized_input(proto: onnx.ModelProto) -> onnx.ModelProto:
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    proto.graph.initializer.append(scale)
    proto.graph.node[0].input[0] = "image_dq"
    proto.graph.node.insert(
        0, helper.make_node("DequantizeLinear", ["image_q", "scale"], ["image_dq"])
    )
    proto.graph.node.insert(0, helper.make_node("QuantizeLinear", ["image", "scale"], ["image_q"]))
    return proto


def test_quantized_student_is_refused_by_ort_training(train_npz):
    proto = _fake_quantized_input(mlp_student())
    with pytest.raises(QuantizedStudentError, match="use backend='native'"):
        distill(TEACHER, proto, train_npz, backend="ort-training")


def test_integer_arithmetic_student_is_refused(train_npz):
    proto = mlp_student()
    proto.graph.node[1].op_type = "QLinearMatMul"
    with pytest.raises(QuantizedStudentError, match="QLinearMatMul node"):
        distill(TEACHER, proto, train_npz)


def test_op_without_gradient_rule_is_named_before_training(train_npz):
    proto = mlp_student()
    proto.graph.node[
        2
    ].op_type = "Selu"  # between both Gemms: every weight reaches the loss through it
    proto.graph.node[2].name = "act"
    with pytest.raises(GradientError, match=r"no gradient rule for Selu \(node 'act'\)"):
        distill(TEACHER, proto, train_npz, **FAST)


@pytest.mark.skipif(HAS_TRAINING, reason="onnxruntime-training is installed here")
def test_missing_training_runtime_says_how_to_install(student_path, train_npz):
    with pytest.raises(TrainingRuntimeMissingError) as caught:
        distill(TEACHER, student_path, train_npz, backend="ort-training")
    message = str(caught.value)
    assert "pip install -e '.[train]' torch==2.13.0" in message
    assert "make .venv-train/.installed" in message


def test_outputs_with_different_shapes_are_refused(train_npz):
    proto = mlp_student()
    proto.graph.output[0].CopyFrom(tensor_info("logits", FLOAT, ["N", 12]))
    with pytest.raises(OutputMismatchError, match=r"shape \[N, 12\] but the teacher's"):
        distill(TEACHER, proto, train_npz)


def test_output_missing_from_the_teacher_is_refused(student_path, train_npz):
    with pytest.raises(OutputMismatchError, match="teacher has no output or tensor 'scores'"):
        distill(TEACHER, student_path, train_npz, outputs=["logits=scores"])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((4, 1, 8, 8), np.float32)}, "no data for input 'image'"),
        ({"image": np.zeros((4, 1, 7, 8), np.float32)}, "expects 8 at axis 2"),
        ({"image": np.zeros((4, 64), np.float32)}, "expects rank 4"),
        ({"image": np.full((4, 1, 8, 8), "x")}, "expects float32 data"),
        (
            {"image": np.zeros((4, 1, 8, 8), np.float32), "labels": np.zeros(3, np.int64)},
            "'labels' has 3 entries but the inputs hold 4 samples",
        ),
        (
            {"image": np.zeros((4, 1, 8, 8), np.float32), "labels": np.full(4, 10)},
            r"must lie in \[0, 10\)",
        ),
        (
            {"image": np.zeros((4, 1, 8, 8), np.float32), "labels": np.zeros(4, np.float32)},
            "must hold integers",
        ),
    ],
)
def test_bad_data_is_refused(tmp_path, student_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DistillDataError, match=message):
        distill(TEACHER, student_path, path)


def test_missing_data_file_is_refused(student_path, tmp_path):
    with pytest.raises(DistillDataError, match="no such file"):
        distill(TEACHER, student_path, tmp_path / "nothing.npz")


def test_fixed_batch_student_is_refused(train_npz):
    proto = mlp_student()
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.raises(DistillDataError, match="fixed batch size of 1"):
        distill(TEACHER, proto, train_npz)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"loss": "hinge"}, "loss must be one of"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"backend": "torch"}, "backend must be one of native, ort-training"),
        ({"backend": "ort-training", "provider": "cuda"}, "trains on the cpu only"),
        ({"warmup": 1.5}, r"warmup must be in \[0, 1\)"),
    ],
)
def test_bad_options_are_refused(student_path, train_npz, options, message):
    with pytest.raises(DistillOptionError, match=message):
        distill(TEACHER, student_path, train_npz, **options)


def test_hard_label_loss_without_labels_is_refused(tmp_path, student_path, digits):
    path = tmp_path / "unlabelled.npz"
    np.savez(path, image=digits["x_train"][:8])
    with pytest.raises(DistillDataError, match="needs a 'labels' array"):
        distill(TEACHER, student_path, path, loss="ce")


def test_cli_refusal_is_one_line_with_exit_code_2(tmp_path, train_npz):
    proto = mlp_student()
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    student = tmp_path / "fixed.onnx"
    onnx.save(proto, student)
    arguments = ["distill", "--teacher", str(TEACHER), "--student", str(student)]
    arguments += ["--data", str(train_npz), "-o", str(tmp_path / "out.onnx")]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and "fixed batch size" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------ version limits


def test_newer_opset_is_converted_down_with_the_same_outputs(digits):
    converted = for_training_runtime(mlp_student(opset=MAX_OPSET + 1), "student")
    assert converted.opset_import[0].version == MAX_OPSET
    feeds = {"image": digits["x_test"][:5]}
    expected = run_model(mlp_student(opset=17), feeds)[0]  # onnxruntime 1.19 stops at 21
    np.testing.assert_allclose(run_model(converted, feeds)[0], expected, rtol=1e-6)


def test_newer_ir_version_without_new_features_is_lowered():
    proto = mlp_student()
    proto.ir_version = MAX_IR_VERSION + 1
    assert for_training_runtime(proto, "student").ir_version == MAX_IR_VERSION
    assert proto.ir_version == MAX_IR_VERSION + 1  # the input is not modified


def test_opset_unknown_to_onnx_is_refused():
    proto = mlp_student()
    proto.opset_import[0].version = 99
    with pytest.raises(UnsupportedVersionError, match="opset 99, newer than this onnx"):
        for_training_runtime(proto, "student")


# ------------------------------------------------------------------------------- training


@pytest.mark.parametrize("backend", BACKENDS)
def test_student_improves_and_is_written_back_unchanged_in_structure(
    tmp_path, student_path, train_npz, digits, backend
):
    output = tmp_path / "tuned.onnx"
    images = digits["x_test"][:200]
    before = _agreement(student_path, images)
    report = distill(
        TEACHER, student_path, train_npz, output, val_split=0.2, backend=backend, **FAST
    )
    assert report.backend == backend

    losses = [epoch.train_loss for epoch in report.epochs]
    assert losses[-1] < 0.7 * losses[0]
    assert report.metric_after > report.metric_before + 0.3
    assert _agreement(output, images) > before + 0.3

    original, tuned = onnx.load(student_path), onnx.load(output)
    onnx.checker.check_model(tuned, full_check=True)
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in original.graph.node]
    assert tuned.opset_import == original.opset_import
    old, new = _weights(student_path), _weights(output)
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in old.items()}
    assert all(not np.array_equal(old[name], new[name]) for name in ("fc1.weight", "fc2.weight"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_weights_keep_their_values(tmp_path, student_path, train_npz, backend):
    output = tmp_path / "tuned.onnx"
    report = distill(
        TEACHER, student_path, train_npz, output, freeze=["fc1.*"], backend=backend, **FAST
    )
    assert report.parameters == ["fc2.weight", "fc2.bias"]
    old, new = _weights(student_path), _weights(output)
    np.testing.assert_array_equal(new["fc1.weight"], old["fc1.weight"])
    assert not np.array_equal(new["fc2.weight"], old["fc2.weight"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_regression_losses_raise_cosine_with_the_teacher(student_path, train_npz, loss, backend):
    report = distill(
        TEACHER, student_path, train_npz, loss=loss, val_split=0.2, backend=backend, **FAST
    )
    assert report.metric == "cosine"
    assert report.epochs[-1].val_loss < report.epochs[0].val_loss
    assert report.metric_after > report.metric_before + 0.2
    assert any("labels ignored" in note for note in report.notes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_label_loss_trains_on_labels_alone(student_path, train_npz, backend):
    report = distill(
        TEACHER, student_path, train_npz, loss="ce", val_split=0.2, backend=backend, **FAST
    )
    assert report.metric == "top-1 accuracy"
    assert report.metric_after > report.metric_before + 0.3


@pytest.mark.parametrize("backend", BACKENDS)
def test_newer_opset_student_trains_and_keeps_its_opset(tmp_path, train_npz, backend):
    student = tmp_path / "opset22.onnx"
    onnx.save(mlp_student(opset=MAX_OPSET + 1), student)
    output = tmp_path / "tuned.onnx"
    report = distill(TEACHER, student, train_npz, output, backend=backend, **FAST)
    assert report.best_epoch > 0
    assert onnx.load(output).opset_import[0].version == MAX_OPSET + 1


def test_distill_pass_runs_in_a_pipeline_with_its_epoch_table(student_path, train_npz):
    from onnxslim import optimize

    spec = f"distill(teacher={TEACHER}, data={train_npz}, epochs=2, lr=0.01, threads=1)"
    model, report = optimize(student_path, passes=spec)
    record = report.passes[0]
    assert record.changed
    assert [row[0] for row in record.tables[0].rows] == [1, 2]
    assert any("kept epoch" in note for note in record.notes)
    assert load(model.to_proto()).node_count() == 4


def test_cli_writes_the_model_and_a_json_report(tmp_path, student_path, train_npz):
    output = tmp_path / "tuned.onnx"
    arguments = ["distill", "--teacher", str(TEACHER), "--student", str(student_path)]
    arguments += ["--data", str(train_npz), "-o", str(output), "--epochs", "2", "--json"]
    result = CliRunner().invoke(app, [*arguments, "--lr", "0.01", "--threads", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["output"] == str(output) and len(data["epochs"]) == 2
    assert data["metric_after"] >= data["metric_before"]
    onnx.checker.check_model(onnx.load(output), full_check=True)


def test_intermediate_tensors_can_be_matched_and_outputs_stay(tmp_path, train_npz, digits):
    """Hidden states (the Relu's output ``r``) as well as logits: the student learns both,
    and the file written keeps only its own outputs."""
    teacher = tmp_path / "teacher.onnx"
    onnx.save(mlp_student(seed=1), teacher)
    output = tmp_path / "tuned.onnx"
    options = {**FAST, "loss": "mse", "val_split": 0.2}
    report = distill(
        teacher, mlp_student(seed=0), train_npz, output, outputs=["r", "logits"], **options
    )
    assert report.outputs == [["r", "r"], ["logits", "logits"]]
    assert report.metric_after > report.metric_before
    assert [o.name for o in onnx.load(output).graph.output] == ["logits"]
    images = {"image": digits["x_test"][:64]}
    hidden = [
        run_model(_with_output(model, "r"), images)[1]
        for model in (mlp_student(seed=1), mlp_student(seed=0), onnx.load(output))
    ]
    before, after = (float(np.mean((h - hidden[0]) ** 2)) for h in hidden[1:])
    assert after < 0.5 * before


def _with_output(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    proto.graph.output.append(onnx.ValueInfoProto(name=name))
    return proto


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ("attention_mask", "mask 'attention_mask' is not an input of the student"),
        ("image", "none of the matched outputs has 5"),
    ],
)
def test_mask_that_weighs_nothing_is_refused(student_path, train_npz, mask, message):
    with pytest.raises(DistillOptionError, match=message):
        distill(TEACHER, student_path, train_npz, mask=mask, **FAST)
