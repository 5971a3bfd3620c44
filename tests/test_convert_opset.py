"""convert-opset: opset and IR version conversion, and refusal of what cannot be converted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import classifier, make_model, run_model, tensor_info
from onnx import TensorProto, helper
from onnxslim.passes.convert_opset import ConversionError, convert_model

from onnxslim.api import optimize

DIGITS = Path(__file__).resolve().parent.parent / "fixtures" / "digits_cnn.onnx"
FEED = {"image": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}


def _opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def test_digits_goes_to_opset_21_and_ir_10_with_equal_outputs():
    converted = convert_model(DIGITS, 21, 10)
    assert (_opset(converted), converted.ir_version) == (21, 10)
    onnx.checker.check_model(converted, full_check=True)
    feed = {"image": np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)}
    expected = run_model(onnx.load(DIGITS), feed)[0]
    np.testing.assert_allclose(run_model(converted, feed)[0], expected, rtol=1e-5, atol=1e-5)


def test_lowering_the_opset_relabels_ops_without_adapters_and_says_so():
    result = optimize(classifier(), "convert-opset(target=13)")
    converted = result.model.to_proto()
    assert _opset(converted) == 13
    notes = " ".join(result.report.passes[0].notes)
    assert "relabelled opset 17 -> 13" in notes
    np.testing.assert_allclose(
        run_model(converted, FEED)[0], run_model(classifier(), FEED)[0], rtol=1e-6
    )


def test_ir_version_is_lowered_when_the_model_allows_it():
    proto = classifier()
    proto.ir_version = 10
    converted = convert_model(proto, ir_version=8)
    assert converted.ir_version == 8
    run_model(converted, FEED)


def test_ir_version_too_old_for_the_opset_is_refused():
    with pytest.raises(ConversionError, match="opset 17 needs IR 8"):
        convert_model(classifier(), ir_version=7)


def test_op_missing_from_the_target_opset_is_refused():
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"])]
    proto = make_model(
        nodes,
        [tensor_info("x", TensorProto.FLOAT, [2, 4])],
        [tensor_info("y", TensorProto.FLOAT, [2, 4])],
        {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)},
    )
    with pytest.raises(ConversionError, match="LayerNormalization"):
        convert_model(proto, 16)


def test_opset_out_of_range_is_refused():
    with pytest.raises(ConversionError, match="out of range"):
        convert_model(classifier(), 99)


def test_the_pass_needs_a_target():
    with pytest.raises(ConversionError, match="target="):
        optimize(classifier(), "convert-opset")


def test_cli_converts_and_refuses_with_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from onnxslim.cli import app

    runner = CliRunner()
    output = tmp_path / "digits21.onnx"
    done = runner.invoke(app, ["convert", str(DIGITS), "--opset", "21", "-o", str(output), "-q"])
    assert done.exit_code == 0, done.output
    assert _opset(onnx.load(output)) == 21
    refused = runner.invoke(app, ["convert", str(DIGITS), "--ir-version", "7", "-o", str(output)])
    assert refused.exit_code == 2
    assert "opset 17 needs IR 8" in refused.output


def test_softmax_is_never_relabelled_across_its_change_of_meaning():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Softmax", ["r"], ["y"]),
    ]
    proto = make_model(
        nodes,
        [tensor_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [tensor_info("y", TensorProto.FLOAT, [2, 3, 4])],
    )
    with pytest.raises(ConversionError, match="Softmax"):
        convert_model(proto, 11)
