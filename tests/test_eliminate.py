"""eliminate-noops and collapse-chains: each rewrite fires where it must, stays where it must
not, and outputs stay the same under onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import make_model, run_model, tensor_info
from onnx import TensorProto, helper
from onnxslim.passes.eliminations import (
    CollapseChains,
    EliminateNoops,
    MergeUnsqueezes,
    NeutralArithmetic,
)
from onnxslim.passes.infer_shapes import InferShapes

from onnxslim import testing
from onnxslim.model import load, to_proto
from onnxslim.pipeline import Pass, PassManager
from onnxslim.testing import apply, parse_model

FLOAT = TensorProto.FLOAT
INT64_MAX = int(np.iinfo(np.int64).max)
ATOL = 1e-6
node = helper.make_node


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def floats(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def optimized(
    proto: onnx.ModelProto, step: Pass, *, infer: bool = True
) -> tuple[onnx.ModelProto, list[str]]:
    """The model after ``step`` (after infer-shapes unless ``infer`` is false), checked in
    full, and the notes the step logged."""
    model = load(proto)
    records = PassManager([InferShapes(), step] if infer else [step]).run(model)
    result = to_proto(model)
    onnx.checker.check_model(result, full_check=True)
    return result, records[-1].notes


def feeds_for(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Random values for every graph input; symbolic dims get size 2."""
    rng = np.random.default_rng(0)
    feeds = {}
    for value in proto.graph.input:
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 2 for d in tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if dtype == np.bool_:
            feeds[value.name] = np.array(True)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def assert_same_outputs(
    before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict | None = None
) -> None:
    feeds = feeds_for(before) if feeds is None else feeds
    for expected, actual in zip(
        run_model(before, feeds, ort_optimizations=False),
        run_model(after, feeds, ort_optimizations=False),
        strict=True,
    ):
        assert actual.dtype == expected.dtype
        np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL)


def op_types(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


def around(
    middle: list[onnx.NodeProto],
    x_shape: list,
    initializers: dict | None = None,
    *,
    opset: int = 17,
    x_type: int = FLOAT,
) -> onnx.ModelProto:
    """``x`` -> Relu -> ``middle`` (from ``r`` to ``o``) -> Neg -> ``y``, which gets the type
    that onnx infers for ``o``."""
    nodes = [node("Relu", ["x"], ["r"]), *middle, node("Neg", ["o"], ["y"])]
    inputs = [tensor_info("x", x_type, x_shape)]
    tensors = [
        onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()
    ]
    draft = helper.make_model(
        helper.make_graph(nodes, "draft", inputs, [], tensors),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    inferred = onnx.shape_inference.infer_shapes(draft).graph.value_info
    output = next(v for v in inferred if v.name == "o")
    output.name = "y"
    return make_model(nodes, inputs, [output], tensors, opset=opset)


def assert_becomes(proto: onnx.ModelProto, step: Pass, ops: list[str]) -> onnx.ModelProto:
    result, _ = optimized(proto, step)
    assert op_types(result.graph) == ops
    assert_same_outputs(proto, result)
    return result


def assert_removed(proto: onnx.ModelProto) -> onnx.ModelProto:
    return assert_becomes(proto, EliminateNoops(), ["Relu", "Neg"])


def assert_kept(proto: onnx.ModelProto, step: Pass | None = None) -> onnx.ModelProto:
    return assert_becomes(proto, step or EliminateNoops(), op_types(proto.graph))


# ----------------------------------------------------------------------- eliminate-noops


def test_cast_to_the_type_it_has_is_removed():
    assert_removed(around([node("Cast", ["r"], ["o"], to=FLOAT)], [2, 3]))


def test_cast_to_another_type_stays():
    proto = around(
        [
            node("Cast", ["r"], ["d"], to=TensorProto.DOUBLE),
            node("Cast", ["d"], ["o"], to=FLOAT),
        ],
        [2, 3],
    )
    assert_kept(proto)


def test_castlike_to_the_type_it_has_is_removed():
    like = {"like": np.zeros(1, np.float32)}
    assert_removed(around([node("CastLike", ["r", "like"], ["o"])], [2, 3], like))


@pytest.mark.parametrize(
    ("x_shape", "target"),
    [([2, 3], [2, -1]), ([2, 3], [-1, 3]), (["N", 3], [0, 3]), (["N", "M"], [0, -1])],
)
def test_reshape_to_the_shape_it_has_is_removed(x_shape, target):
    proto = around([node("Reshape", ["r", "shape"], ["o"])], x_shape, {"shape": ints(*target)})
    assert_removed(proto)


@pytest.mark.parametrize(
    ("x_shape", "target"),
    [([2, 3], [3, 2]), (["N", 3], [2, 3]), (["N", 3], [-1, 1, 3]), ([2, 3], [0, -1, 1])],
)
def test_reshape_to_another_shape_stays(x_shape, target):
    proto = around([node("Reshape", ["r", "shape"], ["o"])], x_shape, {"shape": ints(*target)})
    assert_kept(proto)


def test_reshape_with_allowzero_reads_0_as_a_size():
    proto = around(
        [node("Reshape", ["r", "shape"], ["o"], allowzero=1)], [0, 3], {"shape": ints(0, 3)}
    )
    assert_removed(proto)
    proto = around(
        [node("Reshape", ["r", "shape"], ["o"], allowzero=1)], ["N", 0], {"shape": ints(0, 0)}
    )
    assert_kept(proto)  # N may be more than 0


def test_transpose_with_the_identity_permutation_is_removed():
    assert_removed(around([node("Transpose", ["r"], ["o"], perm=[0, 1, 2])], [2, 3, 4]))


def test_transpose_that_moves_axes_stays():
    assert_kept(around([node("Transpose", ["r"], ["o"], perm=[0, 2, 1])], [2, 3, 4]))
    assert_kept(around([node("Transpose", ["r"], ["o"])], [2, 3]))  # reverses


def test_transpose_without_perm_of_rank_one_is_removed():
    assert_removed(around([node("Transpose", ["r"], ["o"])], [5]))


@pytest.mark.parametrize(
    ("x_shape", "shape"), [([2, 3], [2, 3]), ([2, 3], [1, 3]), ([2, 3], [1]), (["N", 3], [1, 3])]
)
def test_expand_that_broadcasts_nothing_is_removed(x_shape, shape):
    proto = around([node("Expand", ["r", "shape"], ["o"])], x_shape, {"shape": ints(*shape)})
    assert_removed(proto)


@pytest.mark.parametrize(
    ("x_shape", "shape"), [([2, 1], [2, 3]), ([2, 3], [4, 2, 3]), (["N", 3], [2, 3])]
)
def test_expand_that_broadcasts_stays(x_shape, shape):
    proto = around([node("Expand", ["r", "shape"], ["o"])], x_shape, {"shape": ints(*shape)})
    assert_kept(proto)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_of_zeros_is_removed(mode):
    proto = around(
        [node("Pad", ["r", "pads"], ["o"], mode=mode)], [2, 3], {"pads": ints(0, 0, 0, 0)}
    )
    assert_removed(proto)


def test_pad_that_pads_stays():
    proto = around([node("Pad", ["r", "pads"], ["o"])], [2, 3], {"pads": ints(0, 1, 0, 0)})
    assert_kept(proto)


@pytest.mark.parametrize(
    ("x_shape", "axis", "starts", "ends"),
    [([2, 3], 1, [0], [3]), ([2, 3], -1, [-3], [100]), (["N", 3], 0, [0], [INT64_MAX])],
)
def test_slice_that_takes_everything_is_removed(x_shape, axis, starts, ends):
    proto = around(
        [node("Slice", ["r", "starts", "ends", "axes"], ["o"])],
        x_shape,
        {"starts": ints(*starts), "ends": ints(*ends), "axes": ints(axis)},
    )
    assert_removed(proto)


@pytest.mark.parametrize(
    ("x_shape", "axis", "starts", "ends", "steps"),
    [
        ([2, 3], 1, [0], [2], [1]),
        ([2, 3], 1, [-1], [INT64_MAX], [1]),
        ([2, 3], 1, [0], [INT64_MAX], [2]),
        (["N", 3], 0, [0], [1000], [1]),  # N may be larger
    ],
)
def test_slice_that_cuts_stays(x_shape, axis, starts, ends, steps):
    proto = around(
        [node("Slice", ["r", "starts", "ends", "axes", "steps"], ["o"])],
        x_shape,
        {"starts": ints(*starts), "ends": ints(*ends), "axes": ints(axis), "steps": ints(*steps)},
    )
    assert_kept(proto)


def test_concat_of_one_input_is_removed():
    assert_removed(around([node("Concat", ["r"], ["o"], axis=0)], [2, 3]))


def test_concat_of_two_inputs_stays():
    assert_kept(around([node("Concat", ["r", "r"], ["o"], axis=0)], [2, 3]))


def test_split_into_one_output_is_removed():
    assert_removed(around([node("Split", ["r"], ["o"], axis=1)], [2, 3]))
    proto = around([node("Split", ["r", "split"], ["o"], axis=1)], [2, 3], {"split": ints(3)})
    assert_removed(proto)


def test_split_into_two_outputs_stays():
    proto = make_model(
        [node("Split", ["x"], ["a", "b"], axis=1), node("Add", ["a", "b"], ["y"])],
        [tensor_info("x", FLOAT, [2, 4])],
        [tensor_info("y", FLOAT, [2, 2])],
    )
    assert_kept(proto)


@pytest.mark.parametrize(
    ("mode", "transform"),
    [
        ("nearest", "asymmetric"),
        ("linear", "half_pixel"),
        ("linear", "align_corners"),
        ("cubic", "pytorch_half_pixel"),
    ],
)
def test_resize_by_scale_1_is_removed(mode, transform):
    proto = around(
        [
            node(
                "Resize",
                ["r", "", "scales"],
                ["o"],
                mode=mode,
                coordinate_transformation_mode=transform,
            )
        ],
        [1, 2, 4, 5],
        {"scales": floats(1, 1, 1, 1)},
    )
    assert_removed(proto)


def test_resize_to_the_size_it_has_is_removed():
    proto = around(
        [node("Resize", ["r", "", "", "sizes"], ["o"], mode="linear")],
        [1, 2, 4, 5],
        {"sizes": ints(1, 2, 4, 5)},
    )
    assert_removed(proto)


def test_resize_that_scales_or_crops_stays():
    proto = around(
        [node("Resize", ["r", "", "scales"], ["o"], mode="linear")],
        [1, 2, 4, 5],
        {"scales": floats(1, 1, 2, 2)},
    )
    assert_kept(proto)
    proto = around(
        [
            node(
                "Resize",
                ["r", "roi", "scales"],
                ["o"],
                mode="linear",
                coordinate_transformation_mode="tf_crop_and_resize",
            )
        ],
        [1, 1, 4, 4],
        {"roi": floats(0, 0, 0.2, 0.2, 1, 1, 0.8, 0.8), "scales": floats(1, 1, 1, 1)},
    )
    assert_kept(proto)


@pytest.mark.parametrize(
    ("op", "inputs", "constant"),
    [
        ("Mul", ["r", "c"], floats(1, 1, 1)),
        ("Mul", ["c", "r"], floats(1)),
        ("Div", ["r", "c"], np.ones((2, 3), np.float32)),
        ("Add", ["c", "r"], np.zeros((1, 3), np.float32)),
        ("Sub", ["r", "c"], np.float32(0)),
    ],
)
def test_arithmetic_with_the_neutral_element_is_removed(op, inputs, constant):
    assert_removed(around([node(op, inputs, ["o"])], [2, 3], {"c": np.asarray(constant)}))


@pytest.mark.parametrize(
    ("op", "inputs", "constant"),
    [
        ("Sub", ["c", "r"], np.zeros(3, np.float32)),  # 0 - x
        ("Div", ["c", "r"], np.ones(3, np.float32)),  # 1 / x
        ("Mul", ["r", "c"], floats(1, 1, 2)),
        ("Add", ["r", "c"], np.ones(3, np.float32)),
    ],
)
def test_arithmetic_with_other_values_stays(op, inputs, constant):
    assert_kept(around([node(op, inputs, ["o"])], [2, 3], {"c": constant}))


def test_add_of_zeros_that_broadcasts_the_input_stays():
    proto = around(
        [node("Add", ["r", "zeros"], ["o"])], [3], {"zeros": np.zeros((2, 3), np.float32)}
    )
    result, notes = optimized(proto, EliminateNoops())
    assert op_types(result.graph) == ["Relu", "Add", "Neg"]
    assert_same_outputs(proto, result)
    assert any("broadcasts" in note and "Add" in note for note in notes)


def test_arithmetic_on_a_tensor_of_unknown_shape_stays_and_says_why():
    proto = around([node("Mul", ["r", "ones"], ["o"])], [2, 3], {"ones": floats(1)})
    result, notes = optimized(proto, EliminateNoops(), infer=False)
    assert op_types(result.graph) == ["Relu", "Mul", "Neg"]
    assert any("infer-shapes" in note for note in notes)


def test_a_weight_that_only_starts_with_ones_stays():
    weight = np.ones((64, 64), np.float32)
    weight[-1, -1] = 2.0  # past the prefix that is checked first
    assert_kept(around([node("Mul", ["r", "w"], ["o"])], [64, 64], {"w": weight}))


def test_noop_producing_a_graph_output_keeps_the_output_name():
    proto = make_model(
        [node("Relu", ["x"], ["r"]), node("Reshape", ["r", "shape"], ["y"])],
        [tensor_info("x", FLOAT, [2, 3])],
        [tensor_info("y", FLOAT, [2, 3])],
        {"shape": ints(2, 3)},
    )
    result = assert_becomes(proto, EliminateNoops(), ["Relu"])
    assert [o.name for o in result.graph.output] == ["y"]


def test_noop_from_graph_input_to_graph_output_stays():
    proto = make_model(
        [node("Cast", ["x"], ["y"], to=FLOAT)],
        [tensor_info("x", FLOAT, [2, 3])],
        [tensor_info("y", FLOAT, [2, 3])],
    )
    assert_kept(proto)


def test_noops_inside_if_branches_are_removed():
    then_branch = helper.make_graph(
        [node("Transpose", ["x"], ["t"], perm=[0, 1]), node("Neg", ["t"], ["then_out"])],
        "then",
        [],
        [tensor_info("then_out", FLOAT, [2, 3])],
    )
    else_branch = helper.make_graph(
        [node("Mul", ["x", "one"], ["e"]), node("Relu", ["e"], ["else_out"])],
        "else",
        [],
        [tensor_info("else_out", FLOAT, [2, 3])],
        [onnx.numpy_helper.from_array(floats(1), "one")],
    )
    proto = make_model(
        [node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        [tensor_info("c", TensorProto.BOOL, []), tensor_info("x", FLOAT, [2, 3])],
        [tensor_info("y", FLOAT, [2, 3])],
    )
    result, _ = optimized(proto, EliminateNoops())
    branches = {a.name: a.g for a in result.graph.node[0].attribute}
    assert op_types(branches["then_branch"]) == ["Neg"]
    assert op_types(branches["else_branch"]) == ["Relu"]
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    for condition in (True, False):
        assert_same_outputs(proto, result, {"c": np.array(condition), "x": x})


@pytest.mark.parametrize(
    ("op", "attrs", "opset"),
    [
        ("Pad", {"pads": [0, 0, 0, 0]}, 10),
        ("Slice", {"starts": [0], "ends": [INT64_MAX], "axes": [1]}, 9),
        ("Split", {"axis": 0, "split": [2]}, 11),
    ],
)
def test_older_opsets_read_parameters_from_attributes(op, attrs, opset):
    assert_removed(around([node(op, ["r"], ["o"], **attrs)], [2, 3], opset=opset))


# ------------------------------------------------------------------------ collapse-chains


def test_transposes_that_cancel_are_both_removed():
    proto = around(
        [
            node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
            node("Transpose", ["t"], ["o"], perm=[0, 3, 1, 2]),
        ],
        [1, 2, 3, 4],
    )
    assert_becomes(proto, CollapseChains(), ["Relu", "Neg"])


def test_transposes_that_do_not_cancel_become_one():
    proto = around(
        [
            node("Transpose", ["r"], ["t"], perm=[1, 0, 2]),
            node("Transpose", ["t"], ["o"], perm=[0, 2, 1]),
        ],
        [2, 3, 4],
    )
    result = assert_becomes(proto, CollapseChains(), ["Relu", "Transpose", "Neg"])
    assert list(result.graph.node[1].attribute[0].ints) == [1, 2, 0]


def test_transposes_that_cancel_between_graph_input_and_output_leave_one_node():
    proto = make_model(
        [
            node("Transpose", ["x"], ["t"], perm=[1, 0]),
            node("Transpose", ["t"], ["y"], perm=[1, 0]),
        ],
        [tensor_info("x", FLOAT, [2, 3])],
        [tensor_info("y", FLOAT, [2, 3])],
    )
    result = assert_becomes(proto, CollapseChains(), ["Transpose"])
    assert list(result.graph.node[0].input) == ["x"]
    assert [o.name for o in result.graph.output] == ["y"]


def test_two_reversing_transposes_cancel_without_a_known_rank():
    proto = around(
        [node("Transpose", ["r"], ["t"]), node("Transpose", ["t"], ["o"])], ["A", "B", "C"]
    )
    result, _ = optimized(proto, CollapseChains(), infer=False)
    assert op_types(result.graph) == ["Relu", "Neg"]
    assert_same_outputs(proto, result)


def test_transpose_whose_output_has_another_reader_is_not_merged():
    proto = make_model(
        [
            node("Transpose", ["x"], ["t"], perm=[1, 0]),
            node("Transpose", ["t"], ["u"], perm=[1, 0]),
            node("Add", ["t", "t"], ["v"]),
        ],
        [tensor_info("x", FLOAT, [2, 3])],
        [tensor_info("u", FLOAT, [2, 3]), tensor_info("v", FLOAT, [3, 2])],
    )
    assert_kept(proto, CollapseChains())


def test_reshape_chain_keeps_the_last_reshape():
    proto = around(
        [
            node("Reshape", ["r", "s1"], ["m"]),
            node("Reshape", ["m", "s2"], ["o"]),
        ],
        [2, 3, 4],
        {"s1": ints(6, 4), "s2": ints(4, -1)},
    )
    result = assert_becomes(proto, CollapseChains(), ["Relu", "Reshape", "Neg"])
    assert list(result.graph.node[1].input) == ["r", "s2"]


def test_reshape_after_flatten_or_unsqueeze_reads_the_input():
    proto = around(
        [
            node("Flatten", ["r"], ["f"], axis=1),
            node("Unsqueeze", ["f", "axes"], ["u"]),
            node("Reshape", ["u", "s"], ["o"]),
        ],
        [2, 3, 4],
        {"axes": ints(0), "s": ints(4, 6)},
    )
    result = assert_becomes(proto, CollapseChains(), ["Relu", "Reshape", "Neg"])
    assert list(result.graph.node[1].input) == ["r", "s"]


def test_reshape_chain_whose_middle_is_a_graph_output_stays():
    proto = make_model(
        [node("Reshape", ["x", "s1"], ["m"]), node("Reshape", ["m", "s2"], ["y"])],
        [tensor_info("x", FLOAT, [2, 3, 4])],
        [tensor_info("m", FLOAT, [6, 4]), tensor_info("y", FLOAT, [4, 6])],
        {"s1": ints(6, 4), "s2": ints(4, 6)},
    )
    assert_kept(proto, CollapseChains())


def test_reshape_chain_writes_out_a_copied_static_dim():
    proto = around(
        [node("Reshape", ["r", "s1"], ["m"]), node("Reshape", ["m", "s2"], ["o"])],
        [2, 3, 4],
        {"s1": ints(6, 4), "s2": ints(0, 2, 2)},
    )
    result = assert_becomes(proto, CollapseChains(), ["Relu", "Reshape", "Neg"])
    shape = next(t for t in result.graph.initializer if t.name == result.graph.node[1].input[1])
    assert onnx.numpy_helper.to_array(shape).tolist() == [6, 2, 2]


def test_reshape_chain_keeps_a_0_that_both_copy_from_the_input():
    proto = around(
        [node("Reshape", ["r", "s1"], ["m"]), node("Reshape", ["m", "s2"], ["o"])],
        ["batch", 3, 4],
        {"s1": ints(0, 12), "s2": ints(0, 4, 3)},
    )
    result = assert_becomes(proto, CollapseChains(), ["Relu", "Reshape", "Neg"])
    assert list(result.graph.node[1].input) == ["r", "s2"]


def test_reshape_chain_whose_0_copies_a_symbolic_intermediate_dim_stays():
    proto = around(
        [node("Reshape", ["r", "s1"], ["m"]), node("Reshape", ["m", "s2"], ["o"])],
        ["batch", 3, 4],
        {"s1": ints(-1, 4), "s2": ints(0, 2, 2)},  # m is [batch * 3, 4]
    )
    result, notes = optimized(proto, CollapseChains())
    assert op_types(result.graph) == op_types(proto.graph)
    assert any("not static" in note for note in notes)


@pytest.mark.parametrize("opset", [11, 17])
def test_squeeze_then_unsqueeze_of_the_same_axes_cancel(opset):
    if opset < 13:
        middle = [
            node("Squeeze", ["r"], ["s"], axes=[1]),
            node("Unsqueeze", ["s"], ["o"], axes=[-2]),
        ]
        initializers = {}
    else:
        middle = [node("Squeeze", ["r", "a"], ["s"]), node("Unsqueeze", ["s", "b"], ["o"])]
        initializers = {"a": ints(1), "b": ints(-2)}
    proto = around(middle, [2, 1, 3], initializers, opset=opset)
    assert_becomes(proto, CollapseChains(), ["Relu", "Neg"])


def test_unsqueeze_then_squeeze_of_the_same_axes_cancel():
    proto = around(
        [node("Unsqueeze", ["r", "a"], ["u"]), node("Squeeze", ["u", "b"], ["o"])],
        ["N", 3],
        {"a": ints(0, -1), "b": ints(3, 0)},
    )
    assert_becomes(proto, CollapseChains(), ["Relu", "Neg"])


def test_squeeze_and_unsqueeze_of_different_axes_stay():
    proto = around(
        [node("Squeeze", ["r", "a"], ["s"]), node("Unsqueeze", ["s", "b"], ["o"])],
        [2, 1, 3],
        {"a": ints(1), "b": ints(0)},
    )
    assert_kept(proto, CollapseChains())


def test_slices_of_disjoint_axes_become_one():
    proto = around(
        [
            node("Slice", ["r", "st1", "en1", "ax1"], ["m"]),
            node("Slice", ["m", "st2", "en2", "ax2", "sp2"], ["o"]),
        ],
        [4, 6, 8],
        {
            "st1": ints(1),
            "en1": ints(3),
            "ax1": ints(0),
            "st2": ints(-1),
            "en2": ints(-INT64_MAX),
            "ax2": ints(2),
            "sp2": ints(-2),
        },
    )
    assert_becomes(proto, CollapseChains(), ["Relu", "Slice", "Neg"])


@pytest.mark.parametrize(
    ("x_shape", "first", "second"),
    [
        ([10, 3], (2, 9), (1, 4)),
        ([10, 3], (-8, -1), (-3, 100)),
        (["N", 3], (2, INT64_MAX), (1, 4)),
        ([10, 3], (8, 9), (3, 5)),  # empty
    ],
)
def test_slices_of_one_axis_with_step_1_become_one(x_shape, first, second):
    proto = around(
        [
            node("Slice", ["r", "st1", "en1", "ax"], ["m"]),
            node("Slice", ["m", "st2", "en2", "ax"], ["o"]),
        ],
        x_shape,
        {
            "st1": ints(first[0]),
            "en1": ints(first[1]),
            "st2": ints(second[0]),
            "en2": ints(second[1]),
            "ax": ints(0),
        },
    )
    feeds = {"x": np.random.default_rng(2).standard_normal((10, 3)).astype(np.float32)}
    result, _ = optimized(proto, CollapseChains())
    assert op_types(result.graph) == ["Relu", "Slice", "Neg"]
    assert_same_outputs(proto, result, feeds)


@pytest.mark.parametrize(
    ("x_shape", "steps", "second"), [([10, 3], (2, 1), (1, 4)), (["N", 3], (1, 1), (-3, -1))]
)
def test_slices_of_one_axis_that_cannot_be_merged_stay(x_shape, steps, second):
    proto = around(
        [
            node("Slice", ["r", "st1", "en1", "ax", "sp1"], ["m"]),
            node("Slice", ["m", "st2", "en2", "ax", "sp2"], ["o"]),
        ],
        x_shape,
        {
            "st1": ints(1),
            "en1": ints(9),
            "st2": ints(second[0]),
            "en2": ints(second[1]),
            "ax": ints(0),
            "sp1": ints(steps[0]),
            "sp2": ints(steps[1]),
        },
    )
    feeds = {"x": np.random.default_rng(3).standard_normal((10, 3)).astype(np.float32)}
    result, _ = optimized(proto, CollapseChains())
    assert op_types(result.graph) == op_types(proto.graph)
    assert_same_outputs(proto, result, feeds)


def test_slices_in_opset_9_merge_into_attributes():
    proto = around(
        [
            node("Slice", ["r"], ["m"], starts=[1], ends=[5], axes=[0]),
            node("Slice", ["m"], ["o"], starts=[1, 0], ends=[3, 2], axes=[0, 1]),
        ],
        [6, 3],
        opset=9,
    )
    result = assert_becomes(proto, CollapseChains(), ["Relu", "Slice", "Neg"])
    attrs = {a.name: list(a.ints) for a in result.graph.node[1].attribute}
    assert attrs == {"starts": [2, 0], "ends": [4, 2], "axes": [0, 1]}


def test_chains_inside_a_loop_body_collapse():
    body = helper.make_graph(
        [
            node("Transpose", ["carried"], ["t"], perm=[1, 0]),
            node("Transpose", ["t"], ["u"], perm=[1, 0]),
            node("Add", ["u", "x"], ["next"]),
            node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            tensor_info("i", TensorProto.INT64, []),
            tensor_info("cond_in", TensorProto.BOOL, []),
            tensor_info("carried", FLOAT, [2, 3]),
        ],
        [tensor_info("cond_out", TensorProto.BOOL, []), tensor_info("next", FLOAT, [2, 3])],
    )
    proto = make_model(
        [node("Loop", ["trips", "", "x"], ["y"], body=body)],
        [tensor_info("x", FLOAT, [2, 3])],
        [tensor_info("y", FLOAT, [2, 3])],
        {"trips": np.array(3, np.int64)},
    )
    result, _ = optimized(proto, CollapseChains())
    body_ops = op_types(result.graph.node[0].attribute[0].g)
    assert sorted(body_ops) == ["Add", "Identity"]
    assert_same_outputs(proto, result)


def test_and_with_true_and_or_with_false_leave_the_other_operand():
    model = parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (bool[2,3] x) => (bool[2,3] y) <bool t = {1}, bool[3] f = {0, 0, 0}> {
        a = And(t, x)
        o = Or(a, f)
        y = Not(o)
    }""")
    result = apply(NeutralArithmetic, model)
    assert dict(result.ops) == {"Not": 1}
    testing.assert_same_outputs(model, result.model, {"x": np.array([[1, 0, 1], [0, 1, 0]], bool)})


def test_and_with_true_that_broadcasts_the_other_operand_stays():
    model = parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (bool[3] x) => (bool[2,3] y) <bool[2,3] t = {1, 1, 1, 1, 1, 1}> {
        y = And(t, x)
    }""")
    assert dict(apply(NeutralArithmetic, model).ops) == {"And": 1}


def test_unsqueeze_after_unsqueeze_is_one_unsqueeze():
    """Dynamo's causal mask: Unsqueeze(Range, [1, 2]) then Unsqueeze(.., [3])."""
    model = parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N] x) => (float[1,N,1,1,1] y) <int64[2] a = {0, -1}, int64[2] b = {2, -1}> {
        u = Unsqueeze(x, a)
        y = Unsqueeze(u, b)
    }""")
    result = apply(MergeUnsqueezes, model)
    assert dict(result.ops) == {"Unsqueeze": 1}
    testing.assert_same_outputs(model, result.model, {"x": np.arange(4, dtype=np.float32)})


def test_an_unsqueeze_read_by_two_unsqueezes_goes_into_both():
    """Dynamo's causal mask: one Unsqueeze of a Range feeds two more."""
    model = parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N] x) => (float[1,N,1] y, float[1,1,N] z)
      <int64[1] a = {0}, int64[1] b = {2}, int64[1] c = {1}> {
        u = Unsqueeze(x, a)
        y = Unsqueeze(u, b)
        z = Unsqueeze(u, c)
    }""")
    result = apply(MergeUnsqueezes, model)
    assert dict(result.ops) == {"Unsqueeze": 2}
    testing.assert_same_outputs(model, result.model, {"x": np.arange(4, dtype=np.float32)})


def test_an_unsqueeze_also_read_by_another_op_stays():
    model = parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N] x) => (float[1,N,1] y, float[1,N] r) <int64[1] a = {0}, int64[1] b = {2}> {
        u = Unsqueeze(x, a)
        y = Unsqueeze(u, b)
        r = Relu(u)
    }""")
    assert dict(apply(MergeUnsqueezes, model).ops) == {"Unsqueeze": 2, "Relu": 1}
