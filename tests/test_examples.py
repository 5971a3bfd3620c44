"""The example plugin in examples/ works as the README shows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from conftest import make_model, tensor_info
from onnx import TensorProto, helper
from typer.testing import CliRunner

from onnxslim.cli import app

PLUGIN = Path(__file__).parent.parent / "examples" / "drop_noop_cast.py"


def test_drop_noop_cast_plugin_removes_only_the_noop_cast(tmp_path):
    proto = make_model(
        [
            helper.make_node("Cast", ["x"], ["same"], to=TensorProto.FLOAT, name="noop"),
            helper.make_node("Cast", ["same"], ["ints"], to=TensorProto.INT64, name="real"),
            helper.make_node("Cast", ["ints"], ["y"], to=TensorProto.INT64, name="at_output"),
        ],
        [tensor_info("x", TensorProto.FLOAT, [4])],
        [tensor_info("y", TensorProto.INT64, [4])],
    )
    source, target = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(proto, source)

    result = CliRunner().invoke(
        app,
        [
            "optimize",
            str(source),
            "-o",
            str(target),
            "--plugin",
            str(PLUGIN),
            "--passes",
            "infer-shapes,drop-noop-cast",
            "--validate",
        ],
    )

    assert result.exit_code == 0, result.output
    assert [n.name for n in onnx.load(target).graph.node] == ["real", "at_output"]
    x = np.array([1.5, -2.0, 3.25, 0.0], np.float32)
    run = lambda p: ort.InferenceSession(str(p)).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_array_equal(run(source), run(target))
