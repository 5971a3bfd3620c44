"""prune-weights: magnitude pruning by sparsity or threshold, sparse initializer storage."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_model
from onnx import numpy_helper

from onnxslim.api import optimize
from onnxslim.errors import PipelineSpecError

DIGITS = Path(__file__).resolve().parent.parent / "fixtures" / "digits_cnn.onnx"
FEED = {"image": np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)}


def _weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if len(t.dims) >= 2}


def test_per_layer_sparsity_zeroes_that_fraction_of_every_weight():
    result = optimize(DIGITS, "prune-weights(sparsity=0.5)")
    weights = _weights(result.model.to_proto())
    assert len(weights) == 6
    for name, values in weights.items():
        assert abs(np.mean(values == 0) - 0.5) <= 1 / values.size, name
    table = result.report.passes[-1].tables[0]
    assert [row[4] for row in table.rows] == pytest.approx([0.5] * 6, abs=0.01)


def test_threshold_zeroes_exactly_the_small_weights():
    original = _weights(onnx.load(DIGITS))
    pruned = _weights(optimize(DIGITS, "prune-weights(threshold=0.05)").model.to_proto())
    for name, values in original.items():
        expected = np.where(np.abs(values) <= 0.05, 0, values)
        np.testing.assert_array_equal(pruned[name], expected)


def test_global_scope_reaches_the_sparsity_over_all_layers():
    pruned = _weights(
        optimize(DIGITS, "prune-weights(sparsity=0.6, scope=global)").model.to_proto()
    )
    total = sum(v.size for v in pruned.values())
    zeros = sum(int(np.sum(v == 0)) for v in pruned.values())
    assert zeros / total == pytest.approx(0.6, abs=1e-3)
    assert len({round(float(np.mean(v == 0)), 2) for v in pruned.values()}) > 1


def _pruned_pair(tmp_path: Path, spec: str) -> tuple[Path, Path]:
    """The digits CNN pruned by ``spec`` stored densely, and with sparse storage."""
    dense, sparse = tmp_path / "dense.onnx", tmp_path / "sparse.onnx"
    optimize(DIGITS, f"prune-weights({spec})", output=dense)
    optimize(DIGITS, f"prune-weights({spec}, sparse_storage=true)", output=sparse)
    return dense, sparse


def _assert_same_outputs(first: Path, second: Path) -> None:
    np.testing.assert_allclose(
        run_model(onnx.load(first), FEED)[0], run_model(onnx.load(second), FEED)[0], rtol=1e-6
    )


def test_sparse_initializers_shrink_the_file_and_run_like_the_dense_result(tmp_path):
    dense, sparse = _pruned_pair(tmp_path, "sparsity=0.8, sparse_format=coo")
    proto = onnx.load(sparse)
    assert len(proto.graph.sparse_initializer) == 6
    onnx.checker.check_model(proto)
    assert sparse.stat().st_size < 0.5 * dense.stat().st_size
    _assert_same_outputs(dense, sparse)


def test_bit_masks_shrink_a_half_sparse_file_and_run_like_the_dense_result(tmp_path):
    dense, sparse = _pruned_pair(tmp_path, "sparsity=0.5, sparse_format=mask")
    proto = onnx.load(sparse)
    onnx.checker.check_model(proto, full_check=True)
    assert Counter(n.op_type for n in proto.graph.node)["CumSum"] == 6
    # 4 bytes per kept float, 1/8 byte per weight: 0.53 of dense, plus graph overhead.
    assert sparse.stat().st_size < 0.6 * dense.stat().st_size
    _assert_same_outputs(dense, sparse)


def test_auto_format_takes_the_smaller_form_per_weight():
    rows = optimize(DIGITS, "prune-weights(sparsity=0.5, sparse_storage=true)")
    table = rows.report.passes[-1].tables[0]
    assert {row[5] for row in table.rows} == {"mask"}
    coo = optimize(DIGITS, "prune-weights(sparsity=0.5, sparse_storage=true, sparse_format=coo)")
    coo_bytes = {row[0]: row[6] for row in coo.report.passes[-1].tables[0].rows}
    assert all(row[6] <= coo_bytes[row[0]] for row in table.rows)


def test_sparse_initializers_survive_another_round_trip(tmp_path):
    first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
    spec = "prune-weights(sparsity=0.8, sparse_storage=true, sparse_format=coo)"
    optimize(DIGITS, spec, output=first)
    optimize(first, "cleanup", output=second)
    assert len(onnx.load(second).graph.sparse_initializer) == 6
    _assert_same_outputs(first, second)


def test_weights_whose_sparse_form_is_not_smaller_stay_dense():
    spec = "prune-weights(sparsity=0.1, sparse_storage=true, sparse_format=coo)"
    result = optimize(DIGITS, spec)
    assert len(result.model.to_proto().graph.sparse_initializer) == 0
    assert any("stay dense" in note for note in result.report.passes[-1].notes)


@pytest.mark.parametrize(
    "spec",
    [
        "prune-weights",
        "prune-weights(sparsity=0.5, threshold=0.1)",
        "prune-weights(sparsity=1.5)",
        "prune-weights(threshold=-1)",
    ],
)
def test_bad_options_are_refused(spec):
    with pytest.raises(PipelineSpecError, match="prune-weights"):
        optimize(DIGITS, spec)


def test_cli_sparsify_writes_the_chosen_sparse_format(tmp_path):
    from typer.testing import CliRunner

    from onnxslim.cli import app

    output = tmp_path / "sparse.onnx"
    arguments = ["sparsify", str(DIGITS), "--sparsity", "0.8", "--sparse-storage"]
    done = CliRunner().invoke(app, [*arguments, "--sparse-format", "coo", "-o", str(output)])
    assert done.exit_code == 0, done.output
    assert len(onnx.load(output).graph.sparse_initializer) == 6


def test_sparse_initializers_read_in_their_own_type_and_pass_the_strict_checker(tmp_path):
    from onnxslim.checking import check_model
    from onnxslim.model import all_constants, load, read_constant

    first = tmp_path / "first.onnx"
    optimize(
        DIGITS, "prune-weights(sparsity=0.5, sparse_storage=true, sparse_format=coo)", output=first
    )
    model = load(first)
    check_model(model, full=True)
    dense = {t.name: read_constant(t) for t in all_constants(load(DIGITS).graph)}
    for tensor in all_constants(model.graph):
        values = read_constant(tensor)
        if tensor.name in dense and values.shape == dense[tensor.name].shape:
            assert values.dtype == dense[tensor.name].dtype
            kept = values != 0
            np.testing.assert_array_equal(values[kept], dense[tensor.name][kept])
