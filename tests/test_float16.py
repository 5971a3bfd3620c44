"""float16: half-precision weights and compute, float32 at the boundary, overflow guard."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import classifier, make_model, run_model, tensor_info, text_model
from onnx import TensorProto, helper
from onnxslim.passes.float16 import Float16

from onnxslim.api import optimize
from onnxslim.errors import PipelineSpecError
from onnxslim.inputs import input_specs, synthesize_inputs
from onnxslim.model import load, to_proto
from onnxslim.pipeline import PassManager

FEED = {"image": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}


def _converted(proto: onnx.ModelProto, spec: str = "float16") -> tuple[onnx.ModelProto, list]:
    result = optimize(proto, spec)
    converted = result.model.to_proto()
    onnx.checker.check_model(converted, full_check=True)
    return converted, result.report.passes[-1].notes


def _ops(proto: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in proto.graph.node)


def test_classifier_runs_in_float16_with_one_cast_per_input_and_output():
    converted, _ = _converted(classifier())
    assert _ops(converted)["Cast"] == 2
    assert {t.data_type for t in converted.graph.initializer} == {TensorProto.FLOAT16}
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert converted.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    expected = run_model(classifier(), FEED)[0]
    np.testing.assert_allclose(run_model(converted, FEED)[0], expected, rtol=2e-2, atol=2e-2)


def _branching_model() -> onnx.ModelProto:
    """x * w -> a; Sigmoid(a) + Tanh(a) -> y: a blocked Sigmoid sits between half nodes."""
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["a"]),
        helper.make_node("Sigmoid", ["a"], ["b"]),
        helper.make_node("Tanh", ["a"], ["c"]),
        helper.make_node("Add", ["b", "c"], ["y"]),
    ]
    return make_model(
        nodes,
        [tensor_info("x", TensorProto.FLOAT, [2, 8])],
        [tensor_info("y", TensorProto.FLOAT, [2, 8])],
        {"w": np.linspace(-2, 2, 8, dtype=np.float32)},
    )


def test_blocked_op_stays_float32_with_the_fewest_casts_around_it():
    converted, _ = _converted(_branching_model(), "float16(block=Sigmoid)")
    # Into Mul, into Sigmoid, and Tanh's output into the Add, which stays float32 since it
    # reads no weight and converting it would cost two casts (from Sigmoid, to the output).
    assert _ops(converted)["Cast"] == 3
    add = next(n for n in converted.graph.node if n.op_type == "Add")
    assert add.output[0] == "y"
    sigmoid = next(n for n in converted.graph.node if n.op_type == "Sigmoid")
    producer = next(n for n in converted.graph.node if sigmoid.input[0] in n.output)
    assert (producer.op_type, producer.attribute[0].i) == ("Cast", TensorProto.FLOAT)
    feed = {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)}
    expected = run_model(_branching_model(), feed)[0]
    np.testing.assert_allclose(run_model(converted, feed)[0], expected, atol=5e-3)


def _overflowing_model() -> onnx.ModelProto:
    """(x * 1000) * 1000 / 1e6: the middle value reaches ~1e6, beyond float16's 65504."""
    nodes = [
        helper.make_node("Mul", ["x", "thousand"], ["a"]),
        helper.make_node("Mul", ["a", "thousand"], ["b"]),
        helper.make_node("Div", ["b", "million"], ["y"]),
    ]
    return make_model(
        nodes,
        [tensor_info("x", TensorProto.FLOAT, [4, 16])],
        [tensor_info("y", TensorProto.FLOAT, [4, 16])],
        {"thousand": np.array(1000, np.float32), "million": np.array(1e6, np.float32)},
    )


def _weight_types(proto: onnx.ModelProto, op: str) -> list[int]:
    """Element type of the initializer each ``op`` node reads, in node order."""
    types = {t.name: t.data_type for t in proto.graph.initializer}
    return [types[i] for n in proto.graph.node if n.op_type == op for i in n.input if i in types]


def test_overflow_guard_keeps_the_overflowing_nodes_in_float32():
    guarded, notes = _converted(_overflowing_model())
    assert any("overflow" in note for note in notes)
    # The first Mul stays below 65504 on standard-normal inputs; the second and Div do not.
    assert _weight_types(guarded, "Mul") == [TensorProto.FLOAT16, TensorProto.FLOAT]
    assert _weight_types(guarded, "Div") == [TensorProto.FLOAT]
    feed = {"x": np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)}
    result = run_model(guarded, feed, ort_optimizations=False)[0]
    np.testing.assert_allclose(result, feed["x"], rtol=2e-3, atol=2e-3)


def test_without_the_guard_only_out_of_range_weights_stay_float32():
    unguarded, _ = _converted(_overflowing_model(), "float16(guard=false)")
    assert _weight_types(unguarded, "Mul") == [TensorProto.FLOAT16] * 2
    assert _weight_types(unguarded, "Div") == [TensorProto.FLOAT]


def test_half_io_makes_inputs_and_outputs_float16():
    converted, _ = _converted(classifier(), "float16(keep_io_types=false)")
    assert _ops(converted)["Cast"] == 0
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    half = {"image": FEED["image"].astype(np.float16)}
    assert run_model(converted, half)[0].dtype == np.float16


def test_integer_inputs_and_casts_to_float_are_handled():
    feed = {
        "input_ids": np.array([[1, 5, 7]], np.int64),
        "token_type_ids": np.array([[0, 1, 0]], np.int64),
        "position_ids": np.array([[0, 1, 2]], np.int64),
        "attention_mask": np.array([[1, 1, 0]], np.int64),
    }
    converted, _ = _converted(text_model())
    mask_cast = [
        n for n in converted.graph.node if n.op_type == "Cast" and n.input[0] == "attention_mask"
    ]
    assert mask_cast[0].attribute[0].i == TensorProto.FLOAT16
    expected = run_model(text_model(), feed)
    actual = run_model(converted, feed)
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(actual[1], expected[1])


def _constant_node_model() -> onnx.ModelProto:
    """y = x * c with c a Constant node (as TorchScript exports write them)."""
    value = onnx.numpy_helper.from_array(np.array([0.5, 2.0, -1.0], np.float32), "c")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=value),
        helper.make_node("Mul", ["x", "c"], ["y"]),
    ]
    return make_model(
        nodes,
        [tensor_info("x", TensorProto.FLOAT, [2, 3])],
        [tensor_info("y", TensorProto.FLOAT, [2, 3])],
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_constant_nodes_loaded_from_a_file_are_converted_with_their_values(dtype, tmp_path):
    """A Constant node's value, read lazily from the file, is written into the node converted
    and with its data (0.5, 2 and -1 are exact in both types)."""
    path = tmp_path / "constant.onnx"
    onnx.save(_constant_node_model(), path)
    model = load(path)
    (record,) = PassManager([Float16(dtype=dtype)]).run(model)
    assert record.changed, record.notes
    converted = to_proto(model)
    (constant,) = [n for n in converted.graph.node if n.op_type == "Constant"]
    assert constant.attribute[0].t.data_type == {"float16": 10, "bfloat16": 16}[dtype]
    feed = {"x": np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 8.0]], np.float32)}
    np.testing.assert_array_equal(run_model(converted, feed)[0], feed["x"] * [0.5, 2.0, -1.0])


def test_bfloat16_schema_check_keeps_ops_without_a_bfloat16_form():
    # Conv has no bfloat16 form in opset 17; Gemm has one.
    from onnxslim.passes.float16 import _schema_accepts

    assert not _schema_accepts("Conv", 17, TensorProto.BFLOAT16, (0, 1), (0,))
    assert _schema_accepts("Gemm", 17, TensorProto.BFLOAT16, (0, 1, 2), (0,))


TINY_CNN = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_cnn.onnx"


@pytest.mark.parametrize("model", ["tiny_cnn", "classifier", "branching"])
def test_bfloat16_models_load_and_run_on_the_cpu_provider(model):
    """onnxruntime's CPU provider has bfloat16 kernels for moving data, hardly any for math:
    ops without one stay float32 (and the note names them), so the model always loads."""
    proto = {
        "tiny_cnn": lambda: onnx.load(TINY_CNN),
        "classifier": classifier,
        "branching": _branching_model,
    }[model]()
    result = optimize(proto, "float16(dtype=bfloat16)")
    converted = result.model.to_proto()
    (record,) = [r for r in result.report.passes if r.name.startswith("float16")]
    assert "no bfloat16 kernel" in " ".join(record.notes)
    run_model(converted, synthesize_inputs(input_specs(converted)))


def test_an_unknown_op_in_the_block_list_is_an_error():
    with pytest.raises(PipelineSpecError, match="'NoSuchOp'"):
        optimize(classifier(), "float16(block=NoSuchOp)")


def test_cli_block_adds_to_the_default_block_list(tmp_path):
    from typer.testing import CliRunner

    from onnxslim.cli import app

    source, output = tmp_path / "m.onnx", tmp_path / "half.onnx"
    onnx.save(_resize_and_sigmoid_model(), source)
    runner = CliRunner()
    refused = runner.invoke(app, ["float16", str(source), "--block", "NoSuchOp", "-o", str(output)])
    assert refused.exit_code == 2 and "NoSuchOp" in refused.stderr
    done = runner.invoke(
        app, ["float16", str(source), "--block", "Sigmoid", "-o", str(output), "--json"]
    )
    assert done.exit_code == 0, done.output
    (label,) = [p["name"] for p in json.loads(done.stdout)["passes"] if p["name"][:7] == "float16"]
    assert "'Resize'" in label and "'Sigmoid'" in label  # the option the pass got
    converted = onnx.load(output)
    float32_inputs = {n.op_type: _input_type(converted, n.input[0]) for n in converted.graph.node}
    assert float32_inputs["Resize"] == TensorProto.FLOAT  # the default list still applies
    assert float32_inputs["Sigmoid"] == TensorProto.FLOAT
    assert float32_inputs["MatMul"] == TensorProto.FLOAT16


def _resize_and_sigmoid_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["m4"]),
        helper.make_node("Resize", ["m4", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("Sigmoid", ["r"], ["y"]),
    ]
    return make_model(
        nodes,
        [tensor_info("x", TensorProto.FLOAT, [4, 16])],
        [tensor_info("y", TensorProto.FLOAT, [1, 1, 8, 32])],
        {
            "w": rng.standard_normal((16, 16)).astype(np.float32),
            "shape": np.array([1, 1, 4, 16], np.int64),
            "scales": np.array([1, 1, 2, 2], np.float32),
        },
    )


def _input_type(proto: onnx.ModelProto, name: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(proto)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in proto.graph.initializer})
    return types[name]


def test_bad_samples_are_refused():
    from onnxslim.errors import OnnxSlimError

    with pytest.raises(OnnxSlimError, match="samples"):
        optimize(classifier(), "float16(samples=0)")


def test_cli_writes_a_float16_model(tmp_path):
    from typer.testing import CliRunner

    from onnxslim.cli import app

    source, output = tmp_path / "classifier.onnx", tmp_path / "half.onnx"
    onnx.save(classifier(), source)
    done = CliRunner().invoke(app, ["float16", str(source), "-o", str(output), "-q"])
    assert done.exit_code == 0, done.output
    assert {t.data_type for t in onnx.load(output).graph.initializer} == {TensorProto.FLOAT16}
