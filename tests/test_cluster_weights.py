"""cluster-weights: k-means codebooks, uint8 indices rebuilt by Gather, or folded."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_model
from onnx import numpy_helper
from onnxslim.passes.weights.cluster import kmeans_1d

from onnxslim.api import optimize
from onnxslim.errors import PipelineSpecError

DIGITS = Path(__file__).resolve().parent.parent / "fixtures" / "digits_cnn.onnx"
FEED = {"image": np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)}


def test_kmeans_finds_two_well_separated_clusters():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-1, 0.01, 500), rng.normal(2, 0.01, 500)])
    centroids = kmeans_1d(values.reshape(1, -1), 2, 20)
    np.testing.assert_allclose(centroids[0], [-1, 2], atol=0.01)


def test_four_bit_lookup_shrinks_the_file_and_matches_the_folded_weights(tmp_path):
    lookup, folded = tmp_path / "lookup.onnx", tmp_path / "folded.onnx"
    result = optimize(DIGITS, "cluster-weights(bits=4)", output=lookup)
    optimize(DIGITS, "cluster-weights(bits=4, fold=true)", output=folded)
    proto = onnx.load(lookup)
    onnx.checker.check_model(proto, full_check=True)
    assert Counter(n.op_type for n in proto.graph.node)["Gather"] == 6
    packed = {t.name: t for t in proto.graph.initializer if t.name.endswith("_packed")}
    assert {t.data_type for t in packed.values()} == {onnx.TensorProto.UINT8}
    # Two 4-bit indices to a byte: the 64x32x3x3 conv weight's 18432 indices in 9216 bytes.
    assert [list(t.dims) for t in packed.values()].count([9216]) == 1
    assert lookup.stat().st_size < 0.2 * DIGITS.stat().st_size
    np.testing.assert_allclose(
        run_model(proto, FEED)[0], run_model(onnx.load(folded), FEED)[0], rtol=1e-5, atol=1e-5
    )
    rows = result.report.passes[-1].tables[0].rows
    assert all(row[3] > 15 for row in rows)  # SQNR in dB
    assert all(row[5] < row[4] / 5 for row in rows)  # bytes after vs before


def test_fold_writes_dense_weights_with_at_most_two_to_the_bits_values():
    proto = optimize(DIGITS, "cluster-weights(bits=3, fold=true)").model.to_proto()
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer if len(t.dims) >= 2]
    assert len(weights) == 6
    assert all(len(np.unique(w)) <= 8 for w in weights)


def test_per_channel_codebooks_lose_less_than_one_per_tensor():
    def mean_sqnr(spec: str) -> float:
        rows = optimize(DIGITS, spec).report.passes[-1].tables[0].rows
        return float(np.mean([row[3] for row in rows if row[3] is not None]))

    per_tensor = mean_sqnr("cluster-weights(bits=3, fold=true)")
    assert mean_sqnr("cluster-weights(bits=3, fold=true, per_channel=true)") > per_tensor


def test_per_channel_lookup_runs_like_its_folded_form():
    lookup = optimize(DIGITS, "cluster-weights(bits=4, per_channel=true)").model.to_proto()
    folded = optimize(DIGITS, "cluster-weights(bits=4, per_channel=true, fold=true)")
    np.testing.assert_allclose(
        run_model(lookup, FEED)[0], run_model(folded.model.to_proto(), FEED)[0], rtol=1e-5
    )


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_every_index_width_unpacks_to_the_folded_weights(bits):
    lookup = optimize(DIGITS, f"cluster-weights(bits={bits})").model.to_proto()
    folded = optimize(DIGITS, f"cluster-weights(bits={bits}, fold=true)").model.to_proto()
    np.testing.assert_allclose(run_model(lookup, FEED)[0], run_model(folded, FEED)[0], rtol=1e-5)


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_outside_two_to_eight_are_refused(bits):
    with pytest.raises(PipelineSpecError, match="bits must be 2 to 8"):
        optimize(DIGITS, f"cluster-weights(bits={bits})")


def test_cli_cluster_refuses_bad_bits_and_writes_good_ones(tmp_path):
    from typer.testing import CliRunner

    from onnxslim.cli import app

    runner = CliRunner()
    output = tmp_path / "clustered.onnx"
    refused = runner.invoke(app, ["cluster", str(DIGITS), "--bits", "9", "-o", str(output)])
    assert refused.exit_code == 2 and "bits must be 2 to 8" in refused.output
    done = runner.invoke(app, ["cluster", str(DIGITS), "--bits", "4", "-o", str(output), "-q"])
    assert done.exit_code == 0, done.output
    assert output.stat().st_size < DIGITS.stat().st_size / 3
