"""cse: nodes that compute the same value merge into one."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from conftest import make_model, tensor_info
from onnx import TensorProto, helper, numpy_helper
from onnxslim.passes.cse import EliminateCommonSubexpressions

from onnxslim.model import load, to_proto
from onnxslim.pipeline import PassManager

FLOAT = TensorProto.FLOAT
X = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)


def _merged(proto: onnx.ModelProto) -> onnx.ModelProto:
    model = load(proto)
    PassManager([EliminateCommonSubexpressions()]).run(model)
    result = to_proto(model)
    onnx.checker.check_model(result, full_check=True)
    return result


def _ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


def _then_branch(node: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == "then_branch")


def _assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feeds) -> None:
    sessions = [
        ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
        for p in (before, after)
    ]
    expected, actual = (s.run(None, feeds) for s in sessions)
    for a, b in zip(expected, actual, strict=True):
        np.testing.assert_array_equal(b, a)


def _model(nodes, outputs=("y",), initializers=(), shape=(2, 3)) -> onnx.ModelProto:
    return make_model(
        nodes,
        [tensor_info("x", FLOAT, list(shape))],
        [tensor_info(name, FLOAT, list(shape)) for name in outputs],
        initializers,
    )


def test_two_nodes_of_one_input_become_one():
    proto = _model(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Relu", ["x"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ]
    )
    result = _merged(proto)
    assert _ops(result.graph) == ["Relu", "Add"]
    assert list(result.graph.node[1].input) == ["a", "a"]
    _assert_same_outputs(proto, result, {"x": X})


def test_duplicated_chains_collapse_and_equal_initializers_count_as_one_input():
    """Exporters repeat small computations per layer, each with its own copy of constants."""
    chain = []
    for i in (1, 2):
        chain += [
            helper.make_node("Mul", ["x", f"scale{i}"], [f"m{i}"]),
            helper.make_node("Softmax", [f"m{i}"], [f"s{i}"], axis=-1),
        ]
    scale = np.array([0.5, 2.0, -1.0], np.float32)
    proto = _model(
        [*chain, helper.make_node("Sub", ["s1", "s2"], ["y"])],
        initializers={"scale1": scale, "scale2": scale.copy()},
    )
    result = _merged(proto)
    assert _ops(result.graph) == ["Mul", "Softmax", "Sub"]
    _assert_same_outputs(proto, result, {"x": X})


def test_initializers_with_different_bytes_keep_their_nodes_apart():
    proto = _model(
        [
            helper.make_node("Mul", ["x", "k1"], ["a"]),
            helper.make_node("Mul", ["x", "k2"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        initializers={"k1": np.float32(0.0).reshape(()), "k2": np.float32(-0.0).reshape(())},
    )
    assert _ops(_merged(proto).graph) == ["Mul", "Mul", "Add"]


def test_equal_bytes_of_another_shape_keep_their_nodes_apart():
    proto = _model(
        [
            helper.make_node("Add", ["x", "k1"], ["a"]),
            helper.make_node("Add", ["x", "k2"], ["b"]),
            helper.make_node("Sub", ["a", "b"], ["y"]),
        ],
        initializers={"k1": np.ones((1, 3), np.float32), "k2": np.ones(3, np.float32)},
    )
    assert _ops(_merged(proto).graph) == ["Add", "Add", "Sub"]


def test_different_attributes_keep_nodes_apart():
    proto = _model(
        [
            helper.make_node("Softmax", ["x"], ["a"], axis=0),
            helper.make_node("Softmax", ["x"], ["b"], axis=1),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ]
    )
    assert _ops(_merged(proto).graph) == ["Softmax", "Softmax", "Add"]


def test_constant_nodes_of_equal_value_merge_whatever_their_tensors_are_called():
    value = np.arange(3, dtype=np.float32)
    constants = [
        helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, f"t_{name}"))
        for name in ("c1", "c2")
    ]
    proto = _model(
        [
            *constants,
            helper.make_node("Add", ["x", "c1"], ["a"]),
            helper.make_node("Add", ["x", "c2"], ["b"]),
            helper.make_node("Mul", ["a", "b"], ["y"]),
        ]
    )
    result = _merged(proto)
    assert _ops(result.graph) == ["Constant", "Add", "Mul"]
    _assert_same_outputs(proto, result, {"x": X})


def test_a_duplicate_writing_a_graph_output_keeps_the_output_name():
    proto = _model(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Neg", ["a"], ["n"]),
            helper.make_node("Relu", ["x"], ["y"]),
        ],
        outputs=("n", "y"),
    )
    result = _merged(proto)
    assert _ops(result.graph) == ["Relu", "Neg"]
    assert [o.name for o in result.graph.output] == ["n", "y"]
    assert list(result.graph.node[1].input) == ["y"]
    _assert_same_outputs(proto, result, {"x": X})


def test_duplicates_that_both_write_graph_outputs_stay():
    proto = _model(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["z"])],
        outputs=("y", "z"),
    )
    assert _ops(_merged(proto).graph) == ["Relu", "Relu"]


def test_random_nodes_are_never_merged():
    proto = _model(
        [
            helper.make_node("RandomNormalLike", ["x"], ["a"]),
            helper.make_node("RandomNormalLike", ["x"], ["b"]),
            helper.make_node("Sub", ["a", "b"], ["y"]),
        ]
    )
    assert _ops(_merged(proto).graph) == ["RandomNormalLike", "RandomNormalLike", "Sub"]


def test_nodes_of_custom_domains_are_never_merged():
    proto = make_model(
        [
            helper.make_node("Tick", ["x"], ["a"], domain="com.example"),
            helper.make_node("Tick", ["x"], ["b"], domain="com.example"),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        [tensor_info("x", FLOAT, [2, 3])],
        [tensor_info("y", FLOAT, [2, 3])],
        domains={"com.example": 1},
    )
    model = load(proto)
    PassManager([EliminateCommonSubexpressions()]).run(model)
    assert [n.op for n in model.graph.nodes] == ["Tick", "Tick", "Add"]


def _branches(then_name: str, else_name: str) -> dict[str, onnx.GraphProto]:
    return {
        "then_branch": helper.make_graph(
            [helper.make_node("Neg", ["x"], [then_name])],
            "then",
            [],
            [tensor_info(then_name, FLOAT, [2, 3])],
        ),
        "else_branch": helper.make_graph(
            [helper.make_node("Abs", ["x"], [else_name])],
            "else",
            [],
            [tensor_info(else_name, FLOAT, [2, 3])],
        ),
    }


def _if_model(second_branches: dict[str, onnx.GraphProto]) -> onnx.ModelProto:
    return make_model(
        [
            helper.make_node("If", ["flag"], ["a"], **_branches("t", "e")),
            helper.make_node("If", ["flag"], ["b"], **second_branches),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        [tensor_info("x", FLOAT, [2, 3]), tensor_info("flag", TensorProto.BOOL, [])],
        [tensor_info("y", FLOAT, [2, 3])],
    )


def test_ifs_with_byte_identical_branches_merge():
    proto = _if_model(_branches("t", "e"))
    result = _merged(proto)
    assert _ops(result.graph) == ["If", "Add"]
    for flag in (True, False):
        _assert_same_outputs(proto, result, {"x": X, "flag": np.array(flag)})


def test_ifs_whose_branches_differ_stay_apart():
    assert _ops(_merged(_if_model(_branches("t2", "e2"))).graph) == ["If", "If", "Add"]


def test_duplicates_inside_a_branch_merge():
    then_branch = helper.make_graph(
        [
            helper.make_node("Exp", ["x"], ["p"]),
            helper.make_node("Exp", ["x"], ["q"]),
            helper.make_node("Add", ["p", "q"], ["t"]),
        ],
        "then",
        [],
        [tensor_info("t", FLOAT, [2, 3])],
    )
    else_branch = _branches("unused", "e")["else_branch"]
    proto = make_model(
        [helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        [tensor_info("x", FLOAT, [2, 3]), tensor_info("flag", TensorProto.BOOL, [])],
        [tensor_info("y", FLOAT, [2, 3])],
    )
    result = _merged(proto)
    assert _ops(_then_branch(result.graph.node[0])) == ["Exp", "Add"]
    _assert_same_outputs(proto, result, {"x": X, "flag": np.array(True)})


def test_readers_inside_a_branch_follow_a_merged_outer_node():
    then_branch = helper.make_graph(
        [helper.make_node("Sub", ["a", "b"], ["t"])], "then", [], [tensor_info("t", FLOAT, [2, 3])]
    )
    else_branch = _branches("unused", "e")["else_branch"]
    proto = make_model(
        [
            helper.make_node("Sigmoid", ["x"], ["a"]),
            helper.make_node("Sigmoid", ["x"], ["b"]),
            helper.make_node(
                "If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch
            ),
        ],
        [tensor_info("x", FLOAT, [2, 3]), tensor_info("flag", TensorProto.BOOL, [])],
        [tensor_info("y", FLOAT, [2, 3])],
    )
    result = _merged(proto)
    assert _ops(result.graph) == ["Sigmoid", "If"]
    assert list(_then_branch(result.graph.node[1]).node[0].input) == ["a", "a"]
    _assert_same_outputs(proto, result, {"x": X, "flag": np.array(True)})


def test_initializers_equal_only_in_their_first_bytes_keep_their_nodes_apart():
    first = np.zeros((64, 64), np.float32)
    second = first.copy()
    second[-1, -1] = 1.0  # past the prefix that is compared first
    proto = _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["a"]),
            helper.make_node("MatMul", ["x", "w2"], ["b"]),
            helper.make_node("Sub", ["a", "b"], ["y"]),
        ],
        initializers={"w1": first, "w2": second},
        shape=(2, 64),
    )
    assert _ops(_merged(proto).graph) == ["MatMul", "MatMul", "Sub"]


def test_string_constants_compare_by_value():
    words = np.array(["cat", "dog"], dtype=object)
    proto = make_model(
        [
            helper.make_node("Concat", ["s", "w1"], ["a"], axis=0),
            helper.make_node("Concat", ["s", "w2"], ["b"], axis=0),
            helper.make_node("Concat", ["a", "b"], ["y"], axis=0),
        ],
        [tensor_info("s", TensorProto.STRING, [2])],
        [tensor_info("y", TensorProto.STRING, [8])],
        {"w1": words, "w2": words.copy()},
    )
    result = _merged(proto)
    assert _ops(result.graph) == ["Concat", "Concat"]
    _assert_same_outputs(proto, result, {"s": np.array(["cow", "eel"], dtype=object)})
