"""Quantization-aware distillation: QDQ students from ``onnxslim quantize`` train their float
master weights through fake quantization and come back as QDQ with the same scales."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_model
from onnx import TensorProto, numpy_helper

from onnxslim import optimize
from onnxslim.distill import distill
from onnxslim.distill.quantized import lower_quantized

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TEACHER = FIXTURES / "digits_cnn.onnx"
FAST = dict(epochs=3, batch_size=32, lr=3e-3, patience=0, threads=1, progress=False)


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "digits.npz") as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits) -> dict[str, Path]:
    """The pruned digits CNN quantized to int8 (QDQ, calibrated) and to int4 weights."""
    folder = tmp_path_factory.mktemp("qat")
    calib, train = folder / "calib.npz", folder / "train.npz"
    np.savez(calib, image=digits["x_train"][:64])
    np.savez(train, image=digits["x_train"][:384], labels=digits["y_train"][:384])
    pruned = folder / "pruned.onnx"
    optimize(TEACHER, passes="prune-channels(ratio=0.5)", output=pruned)
    int8, int4 = folder / "int8.onnx", folder / "int4.onnx"
    optimize(pruned, passes=f"quantize(calib={calib})", output=int8)
    optimize(pruned, passes="quantize(weights=int4, activations=none)", output=int4)
    return {"calib": calib, "train": train, "pruned": pruned, "int8": int8, "int4": int4}


def _accuracy(path: Path, digits) -> float:
    logits = run_model(onnx.load(path), {"image": digits["x_test"]})[0]
    return float((logits.argmax(-1) == digits["y_test"]).mean())


def _quantization_constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Scales and zero points: every constant input of a Q/DQ but the first."""
    tensors = {t.name: t for t in proto.graph.initializer}
    return {
        name: numpy_helper.to_array(tensors[name])
        for node in proto.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear")
        for name in node.input[1:]
        if name in tensors
    }


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_lowered_student_computes_what_the_quantized_one_does(files, digits, kind):
    proto = onnx.load(files[kind])
    lowered, plan = lower_quantized(proto)
    assert plan.weights and all(
        w.master in {t.name for t in lowered.graph.initializer} for w in plan.weights
    )
    feeds = {"image": digits["x_test"][:32]}
    expected = run_model(proto, feeds, ort_optimizations=False)[0]
    got = run_model(lowered, feeds, ort_optimizations=False)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_student_trains_and_stays_quantized_with_its_scales(
    tmp_path, files, digits, kind
):
    before = onnx.load(files[kind])
    output = tmp_path / "tuned.onnx"
    report = distill(TEACHER, files[kind], files["train"], output, **FAST)
    after = onnx.load(output)
    onnx.checker.check_model(after, full_check=True)
    assert report.quantized_weights > 0
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in before.graph.node]
    types = {t.name: t.data_type for t in before.graph.initializer}
    assert {t.name: t.data_type for t in after.graph.initializer} == types
    assert TensorProto.FLOAT not in {
        types[n.input[0]]
        for n in before.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in types
    }
    old, new = _quantization_constants(before), _quantization_constants(after)
    assert old.keys() == new.keys()
    for name in old:
        np.testing.assert_array_equal(new[name], old[name])
    assert _accuracy(output, digits) > _accuracy(files[kind], digits) + 0.4


def test_int32_biases_are_written_back_on_their_scale(tmp_path, files):
    output = tmp_path / "tuned.onnx"
    distill(TEACHER, files["int8"], files["train"], output, **FAST)
    biases = [t for t in onnx.load(output).graph.initializer if t.data_type == TensorProto.INT32]
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(files["int8"]).graph.initializer}
    assert biases and any(
        not np.array_equal(numpy_helper.to_array(t), before[t.name]) for t in biases
    )


def test_prune_quantize_distill_recipe(tmp_path, files, digits):
    spec = (
        f"prune-channels(ratio=0.5),quantize(calib={files['calib']}),"
        f"distill(data={files['train']}, epochs=3, lr=0.003, threads=1)"
    )
    output = tmp_path / "recipe.onnx"
    model, report = optimize(TEACHER, passes=spec, output=output)
    distilled = report.passes[-1]
    assert distilled.changed and any(
        "through fake quantization" in note for note in distilled.notes
    )
    ops = Counter(n.op_type for n in onnx.load(output).graph.node)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"]
    assert _accuracy(output, digits) > 0.8
