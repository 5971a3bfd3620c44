"""onnxslim prune on raw TorchScript exports (fixtures/export_raw_fixtures.py made them):
BatchNorm parameters behind Identity nodes, MatMul weights behind Transpose nodes, head counts
read through Shape, rotary embeddings and grouped-query attention.

Each test zeroes the weights that produce half of every prunable group's channels, which makes
those channels exactly zero and inert (the fixtures keep the frameworks' initialization:
BatchNorms are identities, biases zero). Pruning must then remove exactly them and leave the
outputs equal to the original's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from onnxslim import optimize, save
from onnxslim.cli import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RTOL = ATOL = 1e-4


def _with_dead_rows(name: str, dead: dict[str, slice], folder: Path) -> Path:
    """The fixture ``name`` with rows ``dead[weight]`` of each named initializer zeroed."""
    model = onnx.load(FIXTURES / f"{name}.onnx")
    for tensor in model.graph.initializer:
        if tensor.name in dead:
            values = numpy_helper.to_array(tensor).copy()
            values[dead.pop(tensor.name)] = 0
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    assert not dead, f"no initializers {sorted(dead)} in {name}"
    path = folder / f"{name}.dead.onnx"
    onnx.save(model, path)
    return path


def _feed(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for value in onnx.load(path, load_external_data=False).graph.input:
        if value.name == "input":
            feed["input"] = rng.standard_normal((2, 3, 16, 16), dtype=np.float32)
        elif value.name == "input_ids":
            feed["input_ids"] = rng.integers(0, 100, (2, 12), dtype=np.int64)
        else:  # attention_mask: the second row padded
            mask = np.ones((2, 12), np.int64)
            mask[1, 8:] = 0
            feed["attention_mask"] = mask
    return feed


def _outputs(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _prune(source: Path, ratio: float, out: Path) -> dict:
    """``onnxslim prune SOURCE --ratio RATIO --json``: the report, after checking the exit."""
    result = CliRunner().invoke(
        app, ["prune", str(source), "--ratio", str(ratio), "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _groups(report: dict) -> dict[str, list]:
    """The rows of prune-channels' group table by group label."""
    (record,) = [r for r in report["passes"] if r["name"].startswith("prune-channels")]
    (table,) = [t for t in record["tables"] if t["title"] == "channel groups"]
    return {row[0]: row for row in table["rows"]}


def _assert_same_outputs(original: Path, pruned: Path) -> None:
    feed = _feed(original)
    for expected, actual in zip(_outputs(original, feed), _outputs(pruned, feed), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


CNN_DEAD = {f"{block}.0.weight": slice(8, 16) for block in ("one", "two", "three")}


def test_prune_on_a_raw_cnn_with_identity_fed_batchnorm_removes_the_dead_channels(tmp_path):
    source = _with_dead_rows("raw_cnn", dict(CNN_DEAD), tmp_path)
    out = tmp_path / "pruned.onnx"

    groups = _groups(_prune(source, 0.5, out))

    pruned = [row for row in groups.values() if row[4] == "pruned"]
    assert sorted(row[2] for row in pruned) == ["16 -> 8", "16 -> 8"]
    convs = [n for n in onnx.load(out).graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    _assert_same_outputs(source, out)


def test_prune_channels_alone_reads_batchnorm_parameters_through_identity(tmp_path):
    """Without the lossless pipeline first, the pass itself must cope with the raw graph."""
    source = _with_dead_rows("raw_cnn", dict(CNN_DEAD), tmp_path)

    model, report = optimize(source, passes="prune-channels(ratio=0.5)", prepare=False)

    (record,) = report.passes
    assert record.changed, record.notes
    assert record.notes[-1] == "pruned 2 of 3 channel groups (1 unprunable)"
    _assert_same_outputs(source, save(model, tmp_path / "pruned.onnx"))


def test_prune_on_a_raw_distilbert_export_prunes_heads_and_hidden_units(tmp_path):
    dead = {}
    for layer in (0, 1):
        prefix = f"model.transformer.layer.{layer}"
        for projection in ("q_lin", "k_lin", "v_lin"):  # heads 2 and 3 of 4, 16 wide
            dead[f"{prefix}.attention.{projection}.weight"] = slice(32, 64)
        dead[f"{prefix}.ffn.lin1.weight"] = slice(64, 128)
    source = _with_dead_rows("raw_distilbert", dead, tmp_path)
    out = tmp_path / "pruned.onnx"

    groups = _groups(_prune(source, 0.5, out))

    pruned = sorted(row[2] for row in groups.values() if row[4] == "pruned")
    assert pruned == ["128 -> 64", "128 -> 64", "4 -> 2 (x16)", "4 -> 2 (x16)"]
    _assert_same_outputs(source, out)


def test_prune_on_a_raw_llama_export_prunes_grouped_query_heads(tmp_path):
    """Rotary embeddings slice each head in halves with bounds read through Shape; the two
    key/value heads are repeated for four query heads with counts read through Shape."""
    prefix = "model.layers.0"
    dead = {
        f"{prefix}.self_attn.q_proj.weight": slice(32, 64),  # query heads 2 and 3 ...
        f"{prefix}.self_attn.k_proj.weight": slice(16, 32),  # ... share key/value head 1
        f"{prefix}.self_attn.v_proj.weight": slice(16, 32),
        f"{prefix}.mlp.gate_proj.weight": slice(48, 96),
    }
    source = _with_dead_rows("raw_llama", dead, tmp_path)
    out = tmp_path / "pruned.onnx"

    groups = _groups(_prune(source, 0.5, out))

    attention = groups[f"/{prefix.replace('.', '/', 1)}/self_attn/q_proj/MatMul"]
    assert attention[2].startswith("2 -> 1") and attention[4] == "pruned"
    assert groups[f"/{prefix.replace('.', '/', 1)}/mlp/gate_proj/MatMul"][2:5:2] == [
        "96 -> 48",
        "pruned",
    ]
    _assert_same_outputs(source, out)


@pytest.mark.parametrize("name", ["raw_cnn", "raw_distilbert", "raw_llama"])
def test_prune_at_ratio_zero_keeps_the_outputs(tmp_path, name):
    """The command's whole pipeline (preparation, the pass, the lossless pipeline after) with
    nothing pruned: the command refuses to write (exit 4), the same steps through the API
    keep the outputs."""
    source = FIXTURES / f"{name}.onnx"
    out = tmp_path / "pruned.onnx"

    refused = CliRunner().invoke(app, ["prune", str(source), "--ratio", "0", "-o", str(out)])
    assert refused.exit_code == 4 and not out.exists(), refused.output
    _, report = optimize(source, passes="prune-channels(ratio=0.0),default", output=out)

    groups = _groups(report.to_dict())
    assert groups and all(row[4] != "pruned" for row in groups.values())
    _assert_same_outputs(source, out)
