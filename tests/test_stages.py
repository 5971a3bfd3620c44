"""Recipe checkpoints: the measure pass, the stage table, the original model for passes, and
paths in recipes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from typer.testing import CliRunner

from onnxslim.api import optimize
from onnxslim.cli import app
from onnxslim.errors import InputDataError, PassError
from onnxslim.model import load
from onnxslim.pipeline import Pass, PassContext, PassManager
from onnxslim.registry import load_recipe, parse_pipeline

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DIGITS = FIXTURES / "digits_cnn.onnx"
DIGITS_TEST = FIXTURES / "digits_test.npz"


def _expected_accuracy() -> float:
    import onnxruntime as ort

    with np.load(DIGITS_TEST) as data:
        images, labels = data["image"], data["labels"]
    logits = ort.InferenceSession(str(DIGITS)).run(None, {"image": images})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def test_measure_reports_accuracy_from_labelled_data():
    report = optimize(DIGITS, f"measure(stage=fp32, data={DIGITS_TEST})").report
    (stage,) = report.stages
    assert stage.label == "fp32"
    assert stage.accuracy == pytest.approx(_expected_accuracy(), abs=1e-9)
    assert stage.cosine is None
    assert stage.file_bytes > 250_000
    assert stage.parameters == 71_498
    assert stage.flops > 0 and stage.latency_ms > 0


@dataclass
class ShiftLogits(Pass):
    """Adds 5 to the last Gemm's bias: the outputs turn away from the original's, so the
    measured cosine must drop below 1."""

    lossless = False

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        gemm = [node for node in graph.nodes if node.op == "Gemm"][-1]
        bias = gemm.inputs[2]
        bias.values = bias.values + 5.0
        return True


ShiftLogits.name = "shift-logits"


def test_measure_compares_with_the_original_model_without_labels():
    steps = [*parse_pipeline("measure(stage=before)"), ShiftLogits(), *parse_pipeline("measure")]
    stages = optimize(DIGITS, steps).report.stages
    assert [s.label for s in stages] == ["before", "stage 2"]
    assert stages[0].cosine == pytest.approx(1.0, abs=1e-6)
    assert stages[1].cosine < 0.99


def test_original_of_an_in_memory_model_is_the_untouched_one():
    proto = onnx.load(DIGITS)
    steps = [ShiftLogits(), *parse_pipeline("measure")]
    (stage,) = optimize(load(proto), steps).report.stages
    assert stage.cosine < 0.99


def test_original_path_without_optimize_is_a_clear_error():
    with pytest.raises(PassError, match="original model"):
        PassManager(parse_pipeline("measure")).run(load(DIGITS))


def test_measure_rejects_data_whose_labels_do_not_match(tmp_path):
    bad = tmp_path / "bad.npz"
    with np.load(DIGITS_TEST) as data:
        np.savez(bad, image=data["image"][:10], labels=data["labels"][:7])
    with pytest.raises(InputDataError, match="different numbers of rows"):
        optimize(DIGITS, f"measure(data={bad})")


def test_recipe_paths_resolve_beside_the_recipe(tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "test.npz").write_bytes(DIGITS_TEST.read_bytes())
    recipe = folder / "r.toml"
    recipe.write_text('[[steps]]\npass = "measure"\nstage = "x"\ndata = "test.npz"\n')
    (step,) = load_recipe(recipe)
    assert step.data == folder / "test.npz"


def test_stage_table_in_the_cli_report_and_json(tmp_path):
    runner = CliRunner()
    spec = f"measure(stage=fp32, data={DIGITS_TEST}),cleanup,measure(stage=after)"
    args = ["optimize", str(DIGITS), "-o", str(tmp_path / "o.onnx"), "--passes", spec]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "stages" in shown.output and "fp32" in shown.output and "top-1" in shown.output
    as_json = runner.invoke(app, [*args, "--json"])
    stages = json.loads(as_json.output)["stages"]
    assert [s["label"] for s in stages] == ["fp32", "after"]
    assert stages[1]["cosine"] == pytest.approx(1.0, abs=1e-6)
