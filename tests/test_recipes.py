"""The example compression recipe (prune → distill → quantize, measured at each stage) runs
from a fresh checkout exactly as the README shows it."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from typer.testing import CliRunner

from onnxslim.cli import app

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "examples" / "compress.toml"
DIGITS = REPO / "fixtures" / "digits_cnn.onnx"


def test_compress_recipe_keeps_accuracy_at_a_tenth_of_the_size(tmp_path):
    output = tmp_path / "digits.int8.onnx"
    args = ["optimize", str(DIGITS), "--recipe", str(RECIPE), "-o", str(output), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stages = {s["label"]: s for s in json.loads(result.output)["stages"]}
    assert list(stages) == ["original", "pruned 50%", "distilled", "int8"]
    original = stages["original"]
    assert stages["pruned 50%"]["flops"] <= 0.3 * original["flops"]
    assert stages["distilled"]["accuracy"] >= original["accuracy"] - 0.01
    assert stages["distilled"]["accuracy"] > stages["pruned 50%"]["accuracy"] + 0.3
    assert stages["int8"]["accuracy"] >= original["accuracy"] - 0.015
    assert stages["int8"]["file_bytes"] <= 0.15 * original["file_bytes"]
    onnx.checker.check_model(onnx.load(output), full_check=True)
