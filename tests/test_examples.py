"""The example plugin in examples/ works as the README shows it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
from typer.testing import CliRunner

from onnxslim.cli import app
from onnxslim.testing import apply, assert_same_outputs, explain, parse_model

PLUGIN = Path(__file__).parent.parent / "examples" / "drop_noop_cast.py"

CASTS = """
<ir_version: 8, opset_import: ["" : 17]>
casts (float[4] x) => (int64[4] ints, float[4] y) {
    same = Cast <to = 1> (x)
    ints = Cast <to = 7> (same)
    y = Cast <to = 1> (x)
}
"""


def _example():
    spec = importlib.util.spec_from_file_location("drop_noop_cast", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_noop_casts_go_and_the_one_naming_an_output_stays():
    model = parse_model(CASTS)

    result = apply(_example().NoopCast, model)

    assert result.ops == {"Cast": 2}
    assert sorted((n.input[0], n.output[0]) for n in result.model.graph.node) == [
        ("x", "ints"),
        ("x", "y"),
    ]
    assert any("graph output that only it can name" in note for note in result.notes)
    assert_same_outputs(model, result.model)


def test_explain_says_why_each_cast_stays():
    lines = explain(_example().NoopCast, CASTS)

    assert lines == [
        "Cast '': matches",
        "Cast '': it changes the type",
        "Cast '': its output is a graph output that only it can name",
    ]


def test_the_plugin_runs_from_the_command_line(tmp_path):
    source, target = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(parse_model(CASTS), source)

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
    assert [n.op_type for n in onnx.load(target).graph.node] == ["Cast", "Cast"]
    feeds = {"x": np.array([1.5, -2.0, 3.25, 0.0], np.float32)}
    assert_same_outputs(source, target, feeds)
