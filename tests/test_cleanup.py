"""cleanup: Identity, inference Dropout, duplicate initializers, dead code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, run_model, tensor_info
from onnx import TensorProto, helper
from onnxslim.passes.cleanup import Cleanup

from onnxslim.model import load, to_proto
from onnxslim.pipeline import PassManager

X = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)


def _cleaned(proto: onnx.ModelProto, **options) -> onnx.ModelProto:
    model = load(proto)
    PassManager([Cleanup(**options)]).run(model)
    result = to_proto(model)
    onnx.checker.check_model(result, full_check=True)
    return result


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def _assert_samerun_model(before: onnx.ModelProto, after: onnx.ModelProto, feeds) -> None:
    for a, b in zip(run_model(before, feeds), run_model(after, feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=0)


def test_identity_between_nodes_is_removed():
    proto = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Identity", ["a"], ["b"]),
            helper.make_node("Neg", ["b"], ["y"]),
        ],
        [tensor_info("x", 1, [2, 3])],
        [tensor_info("y", 1, [2, 3])],
    )
    result = _cleaned(proto)
    assert _ops(result) == ["Relu", "Neg"]
    _assert_samerun_model(proto, result, {"x": X})


def test_identity_producing_a_graph_output_keeps_the_output_name():
    proto = make_model(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"])],
        [tensor_info("x", 1, [2, 3])],
        [tensor_info("y", 1, [2, 3])],
    )
    result = _cleaned(proto)
    assert _ops(result) == ["Relu"]
    assert [o.name for o in result.graph.output] == ["y"]
    _assert_samerun_model(proto, result, {"x": X})


def test_identity_from_graph_input_to_graph_output_must_stay():
    proto = make_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [tensor_info("x", 1, [2, 3])],
        [tensor_info("y", 1, [2, 3])],
    )
    assert _ops(_cleaned(proto)) == ["Identity"]


def test_identity_whose_input_is_also_an_output_must_stay():
    proto = make_model(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"])],
        [tensor_info("x", 1, [2, 3])],
        [tensor_info("a", 1, [2, 3]), tensor_info("y", 1, [2, 3])],
    )
    result = _cleaned(proto)
    assert _ops(result) == ["Relu", "Identity"]
    _assert_samerun_model(proto, result, {"x": X})


def test_inference_dropout_is_removed():
    proto = make_model(
        [
            helper.make_node("Dropout", ["x", "ratio"], ["d"]),
            helper.make_node("Relu", ["d"], ["y"]),
        ],
        [tensor_info("x", 1, [2, 3])],
        [tensor_info("y", 1, [2, 3])],
        {"ratio": np.array(0.5, np.float32)},
    )
    result = _cleaned(proto)
    assert _ops(result) == ["Relu"]
    assert len(result.graph.initializer) == 0
    _assert_samerun_model(proto, result, {"x": X})


def test_dropout_whose_mask_is_used_must_stay():
    proto = make_model(
        [
            helper.make_node("Dropout", ["x"], ["d", "mask"]),
            helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["d", "m"], ["y"]),
        ],
        [tensor_info("x", 1, [2, 3])],
        [tensor_info("y", 1, [2, 3])],
    )
    assert "Dropout" in _ops(_cleaned(proto))


def test_dropout_in_training_mode_must_stay():
    proto = make_model(
        [helper.make_node("Dropout", ["x", "ratio", "training"], ["y"])],
        [tensor_info("x", 1, [2, 3])],
        [tensor_info("y", 1, [2, 3])],
        {"ratio": np.array(0.5, np.float32), "training": np.array(True)},
    )
    assert _ops(_cleaned(proto)) == ["Dropout"]


def test_identical_initializers_are_merged():
    weight = np.random.default_rng(1).standard_normal((3, 3)).astype(np.float32)
    proto = make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["y"]),
        ],
        [tensor_info("x", 1, [2, 3])],
        [tensor_info("y", 1, [2, 3])],
        {"w1": weight, "w2": weight.copy()},
    )
    result = _cleaned(proto)
    assert [t.name for t in result.graph.initializer] == ["w1"]
    assert [list(n.input) for n in result.graph.node] == [["x", "w1"], ["a", "w1"]]
    _assert_samerun_model(proto, result, {"x": X})


def test_initializers_equal_only_in_their_first_bytes_are_kept_apart():
    first = np.zeros((64, 64), np.float32)
    second = first.copy()
    second[-1, -1] = 1.0  # differs only past the prefix that is compared first
    proto = make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["y"]),
        ],
        [tensor_info("x", 1, [2, 64])],
        [tensor_info("y", 1, [2, 64])],
        {"w1": first, "w2": second},
    )
    assert [t.name for t in _cleaned(proto).graph.initializer] == ["w1", "w2"]


def test_same_bytes_with_different_types_or_shapes_are_kept_apart():
    proto = make_model(
        [
            helper.make_node("Add", ["x", "a"], ["s"]),
            helper.make_node("Reshape", ["s", "shape"], ["r"]),
            helper.make_node("Add", ["r", "b"], ["y"]),
        ],
        [tensor_info("x", 1, [2, 3])],
        [tensor_info("y", 1, [3, 2])],
        {
            "a": np.zeros((2, 3), np.float32),
            "shape": np.array([3, 2], np.int64),
            "b": np.zeros((3, 2), np.float32),
        },
    )
    assert len(_cleaned(proto).graph.initializer) == 3


def test_dead_nodes_and_unused_initializers_go_but_graph_inputs_stay():
    proto = make_model(
        [
            helper.make_node("Relu", ["x"], ["y"]),
            helper.make_node("Add", ["x", "unused_weight"], ["dead"]),
        ],
        [tensor_info("x", 1, [2, 3]), tensor_info("extra", 1, [1])],
        [tensor_info("y", 1, [2, 3])],
        {"unused_weight": np.ones((2, 3), np.float32)},
    )
    result = _cleaned(proto)
    assert _ops(result) == ["Relu"]
    assert len(result.graph.initializer) == 0
    assert [i.name for i in result.graph.input] == ["x", "extra"]


def test_identity_inside_an_if_branch_is_removed():
    then_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Identity", ["n"], ["t"])],
        "then",
        [],
        [tensor_info("t", 1, [2, 3])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["e"])], "else", [], [tensor_info("e", 1, [2, 3])]
    )
    proto = make_model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        [tensor_info("c", TensorProto.BOOL, []), tensor_info("x", 1, [2, 3])],
        [tensor_info("y", 1, [2, 3])],
    )
    result = _cleaned(proto)
    branches = {a.name: a.g for a in result.graph.node[0].attribute}
    assert [n.op_type for n in branches["then_branch"].node] == ["Neg"]
    for condition in (True, False):
        _assert_samerun_model(proto, result, {"c": np.array(condition), "x": X})


@pytest.mark.parametrize("option", ["remove_identity", "remove_dropout"])
def test_each_removal_can_be_switched_off(option):
    op = "Identity" if option == "remove_identity" else "Dropout"
    proto = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node(op, ["a"], ["b"]),
            helper.make_node("Neg", ["b"], ["y"]),
        ],
        [tensor_info("x", 1, [2, 3])],
        [tensor_info("y", 1, [2, 3])],
    )
    assert op in _ops(_cleaned(proto, **{option: False}))


def test_duplicates_in_external_data_are_found_without_loading_the_weights(tmp_path):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    near_twin = weight.copy()
    near_twin[-1, -1] += 1.0  # same first 4 KB: only the full comparison tells them apart
    proto = make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["b"]),
            helper.make_node("MatMul", ["b", "w3"], ["y"]),
        ],
        [tensor_info("x", 1, [2, 64])],
        [tensor_info("y", 1, [2, 64])],
        {"w1": weight, "w2": weight.copy(), "w3": near_twin},
    )
    path = tmp_path / "ext.onnx"
    onnx.save(proto, path, save_as_external_data=True, location="ext.bin", size_threshold=0)
    proto = onnx.load(path)  # saving turned the proto's tensors into references
    model = load(path)
    PassManager([Cleanup()]).run(model)
    names = sorted(t.name for t in model.graph.tensors().values() if t.name.startswith("w"))
    assert names == ["w1", "w3"]
    assert all(
        type(t._values).__name__ == "ExternalValues"
        for t in model.graph.tensors().values()
        if t.name in names
    )
    _assert_samerun_model(
        proto, to_proto(model), {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    )
