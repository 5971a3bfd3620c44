"""symbolic-shapes: Reshape targets and Expand shapes computed from Shape become constants
with 0 (copy), -1 and 1 entries exactly where that is provably the same, symbolic dims stay
symbolic in the signature, and outputs stay equal on onnxruntime for several batch sizes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnxslim.passes.eliminations import SimplifyShapes, SymbolicShapes

import onnxslim
from onnxslim.testing import apply, assert_same_outputs, parse_model

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
# The batch of x as a one-entry vector, as TorchScript writes it.
BATCH = """
    s = Shape(x)
    i0 = Constant<value = int64 {0}>()
    b = Gather<axis=0>(s, i0)
    ax = Constant<value = int64[1] {0}>()
    bu = Unsqueeze(b, ax)
"""


def channel_shuffle() -> onnx.ModelProto:
    """shufflenet_v2's channel shuffle: [N, 8, 4, 4] -> [N, 2, 4, 4, 4] -> swap -> back."""
    return parse_model(f"""{HEADER}
    g (float[N,8,4,4] x) => (float[N,8,4,4] y) {{
        {BATCH}
        c = Constant<value = int64[4] {{2, 4, 4, 4}}>()
        t = Concat<axis=0>(bu, c)
        r = Reshape(x, t)
        tr = Transpose<perm=[0,2,1,3,4]>(r)
        c2 = Constant<value = int64[3] {{8, 4, 4}}>()
        t2 = Concat<axis=0>(bu, c2)
        y = Reshape(tr, t2)
    }}""")


def feeds(batch: int, shape: tuple[int, ...] = (8, 4, 4)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {"x": rng.standard_normal((batch, *shape)).astype(np.float32)}


def targets(model: onnx.ModelProto) -> list[list[int]]:
    """The constant targets of the model's Reshapes, in node order."""
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return [constants[n.input[1]].tolist() for n in model.graph.node if n.op_type == "Reshape"]


def test_batch_copied_from_the_input_becomes_a_zero_entry():
    model = channel_shuffle()
    result = apply(SymbolicShapes, model)
    assert targets(result.model) == [[0, 2, 4, 4, 4], [0, 8, 4, 4]]
    for batch in (1, 3):
        assert_same_outputs(model, result.model, feeds(batch))


def test_whole_shape_chain_disappears_in_the_default_pipeline():
    model = channel_shuffle()
    optimized = onnxslim.optimize(model).model
    proto = onnxslim.model.to_proto(optimized)
    ops = [n.op_type for n in proto.graph.node]
    assert ops == ["Reshape", "Transpose", "Reshape"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert_same_outputs(model, proto, feeds(2))


def test_one_unknown_entry_becomes_minus_one():
    """[N, S, 8] -> [N*S, 8]: the product is neither a dim of the input nor static."""
    model = parse_model(f"""{HEADER}
    g (float[N,S,8] x) => (float[M,8] y) {{
        {BATCH}
        i1 = Constant<value = int64 {{1}}>()
        sq = Gather<axis=0>(s, i1)
        n = Mul(b, sq)
        nu = Unsqueeze(n, ax)
        c = Constant<value = int64[1] {{8}}>()
        t = Concat<axis=0>(nu, c)
        y = Reshape(x, t)
    }}""")
    result = apply(SymbolicShapes, model)
    assert targets(result.model) == [[-1, 8]]
    for batch in (1, 4):
        assert_same_outputs(model, result.model, feeds(batch, (5, 8)))


def test_two_unknown_entries_keep_the_computed_target():
    """[N, S, 8] -> [S, N, 8]: neither S nor N lines up with the input's dim, and no
    constant can say which is which."""
    model = parse_model(f"""{HEADER}
    g (float[N,S,8] x) => (float[A,B,8] y) {{
        {BATCH}
        i1 = Constant<value = int64 {{1}}>()
        sq = Gather<axis=0>(s, i1)
        su = Unsqueeze(sq, ax)
        c = Constant<value = int64[1] {{8}}>()
        t = Concat<axis=0>(su, bu, c)
        y = Reshape(x, t)
    }}""")
    result = apply(SymbolicShapes, model)
    assert not result.changed
    assert any("more than one entry" in note for note in result.notes)


def test_allowzero_keeps_the_copy_out():
    """With allowzero=1 a 0 is a zero-sized dim, not a copy: the batch stays computed, and
    with a second symbolic dim the target stays as it is."""
    model = parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N,S,8] x) => (float[A,B,8] y) {
        s = Shape(x)
        two = Constant<value = int64[2] {0, 1}>()
        ns = Gather<axis=0>(s, two)
        c = Constant<value = int64[1] {8}>()
        t = Concat<axis=0>(ns, c)
        y = Reshape<allowzero=1>(x, t)
    }""")
    result = apply(SymbolicShapes, model)
    assert not result.changed


def test_expand_to_the_inputs_own_batch_gets_a_constant_shape():
    """Expand([N, 1, 4] -> [N, 3, 4]) with N read from x: 1 keeps x's dim."""
    model = parse_model(f"""{HEADER}
    g (float[N,1,4] x) => (float[N,3,4] y) {{
        {BATCH}
        c = Constant<value = int64[2] {{3, 4}}>()
        t = Concat<axis=0>(bu, c)
        y = Expand(x, t)
    }}""")
    result = apply(SymbolicShapes, model)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    expand = next(n for n in result.model.graph.node if n.op_type == "Expand")
    assert constants[expand.input[1]].tolist() == [1, 3, 4]
    for batch in (1, 3):
        assert_same_outputs(model, result.model, feeds(batch, (1, 4)))


def test_expand_to_a_dim_of_another_tensor_keeps_its_shape():
    """Expand([1, 4] -> [N, 4]) with N read from another input: no constant says N."""
    model = parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4] x, float[N,2] z) => (float[N,4] y) {
        s = Shape(z)
        i0 = Constant<value = int64 {0}>()
        b = Gather<axis=0>(s, i0)
        ax = Constant<value = int64[1] {0}>()
        bu = Unsqueeze(b, ax)
        c = Constant<value = int64[1] {4}>()
        t = Concat<axis=0>(bu, c)
        y = Expand(x, t)
    }""")
    assert not apply(SymbolicShapes, model).changed


def test_a_dim_only_the_writing_reshape_knows_is_read_as_a_constant():
    """Shape inference left r's dims symbolic (as after an exporter's own annotations); the
    Reshape's constant target says dim 2 is 4, so Gather(Shape(r), 2) is the constant 4."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "target"], ["r"]),
            helper.make_node("Shape", ["r"], ["s"]),
            helper.make_node("Gather", ["s", "two"], ["g"], axis=0),
            helper.make_node("Identity", ["g"], ["d"]),
            helper.make_node("Relu", ["r"], ["y"]),
        ],
        "aliases",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4]),
            helper.make_tensor_value_info("d", TensorProto.INT64, []),
        ],
        [
            onnx.numpy_helper.from_array(np.array([0, 3, 4], np.int64), "target"),
            onnx.numpy_helper.from_array(np.array(2, np.int64), "two"),
        ],
        value_info=[helper.make_tensor_value_info("r", TensorProto.FLOAT, ["A", "B", "C"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = apply(SimplifyShapes, model, infer_shapes=False, check=False)
    identity = next(n for n in result.model.graph.node if n.op_type == "Identity")
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert constants[identity.input[0]].tolist() == 4
    assert_same_outputs(model, result.model, feeds(2, (12,)))
