"""collapse-chains' TransposeThrough: Transposes meeting across elementwise ops, Softmax and
reductions cancel or merge (constants permuted, axes renumbered), only where fewer Transposes
remain, with outputs equal on onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnxslim.passes.eliminations import TransposeThrough
from onnxslim.passes.fusions import FuseAffine

from onnxslim.testing import apply, assert_same_outputs, parse_model

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def feeds(*shape: int, names: tuple[str, ...] = ("x",)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32) for name in names}


def test_relu_between_inverse_transposes_leaves_none():
    model = parse_model(f"""{HEADER}
    g (float[N,4,5,6] x) => (float[N,4,5,6] y) {{
        t = Transpose<perm=[0,2,3,1]>(x)
        r = Relu(t)
        y = Transpose<perm=[0,3,1,2]>(r)
    }}""")
    result = apply(TransposeThrough, model)
    assert dict(result.ops) == {"Relu": 1}
    assert_same_outputs(model, result.model, feeds(2, 4, 5, 6))


def test_add_of_a_per_channel_constant_is_permuted_with_it():
    """NHWC + [C] bias between layout conversions: the bias becomes [C, 1, 1]."""
    model = parse_model(f"""{HEADER}
    g (float[N,4,5,6] x) => (float[N,4,5,6] y) <float[4] b = {{1.0, 2.0, 3.0, 4.0}}> {{
        t = Transpose<perm=[0,2,3,1]>(x)
        a = Add(t, b)
        y = Transpose<perm=[0,3,1,2]>(a)
    }}""")
    result = apply(TransposeThrough, model)
    assert dict(result.ops) == {"Add": 1}
    assert_same_outputs(model, result.model, feeds(2, 4, 5, 6))


def test_transposes_that_do_not_cancel_merge_into_one():
    model = parse_model(f"""{HEADER}
    g (float[2,3,4] x) => (float[4,2,3] y) <float c = {{2.0}}> {{
        t = Transpose<perm=[1,0,2]>(x)
        m = Mul(t, c)
        y = Transpose<perm=[2,1,0]>(m)
    }}""")
    result = apply(TransposeThrough, model)
    assert dict(result.ops) == {"Mul": 1, "Transpose": 1}
    assert_same_outputs(model, result.model, feeds(2, 3, 4))


def test_sum_of_two_transposed_tensors_transposes_once():
    model = parse_model(f"""{HEADER}
    g (float[2,3,4] x, float[2,3,4] z) => (float[3,4,2] y) {{
        a = Transpose<perm=[1,2,0]>(x)
        b = Transpose<perm=[1,2,0]>(z)
        y = Add(a, b)
    }}""")
    result = apply(TransposeThrough, model)
    assert dict(result.ops) == {"Add": 1, "Transpose": 1}
    assert_same_outputs(model, result.model, feeds(2, 3, 4, names=("x", "z")))


def test_softmax_axis_follows_the_permutation():
    model = parse_model(f"""{HEADER}
    g (float[2,3,4] x) => (float[2,3,4] y) {{
        t = Transpose<perm=[0,2,1]>(x)
        s = Softmax<axis=1>(t)
        y = Transpose<perm=[0,2,1]>(s)
    }}""")
    result = apply(TransposeThrough, model)
    assert dict(result.ops) == {"Softmax": 1}
    assert_same_outputs(model, result.model, feeds(2, 3, 4))


def test_mean_over_the_moved_spatial_axes_needs_no_transpose():
    """NHWC -> NCHW -> mean over H, W without keepdims: [N, C] either way."""
    model = parse_model(f"""{HEADER}
    g (float[N,5,6,4] x) => (float[N,4] y) {{
        t = Transpose<perm=[0,3,1,2]>(x)
        y = ReduceMean<axes=[2,3], keepdims=0>(t)
    }}""")
    result = apply(TransposeThrough, model)
    assert dict(result.ops) == {"ReduceMean": 1}
    assert_same_outputs(model, result.model, feeds(2, 5, 6, 4))


@pytest.mark.parametrize("keepdims", [0, 1])
def test_sum_over_one_axis_merges_with_the_transpose_after(keepdims):
    out = "float[A,B]" if not keepdims else "float[A,B,C]"
    back = "[1,0]" if not keepdims else "[0,2,1]"
    model = parse_model(f"""<ir_version: 8, opset_import: ["" : 18]>
    g (float[2,3,4] x) => ({out} y) <int64[1] ax = {{0}}> {{
        t = Transpose<perm=[2,0,1]>(x)
        r = ReduceSum<keepdims={keepdims}>(t, ax)
        y = Transpose<perm={back}>(r)
    }}""")
    result = apply(TransposeThrough, model)
    assert result.ops["Transpose"] == 1 and result.ops["ReduceSum"] == 1
    assert_same_outputs(model, result.model, feeds(2, 3, 4))


def test_a_transpose_read_elsewhere_too_stays():
    model = parse_model(f"""{HEADER}
    g (float[2,3] x) => (float[2,3] y, float[3,2] z) {{
        t = Transpose<perm=[1,0]>(x)
        r = Relu(t)
        y = Transpose<perm=[1,0]>(r)
        z = Neg(t)
    }}""")
    assert not apply(TransposeThrough, model).changed


def test_one_transpose_into_a_unary_op_is_left_where_it_is():
    """Moving it after the op would keep as many Transposes."""
    model = parse_model(f"""{HEADER}
    g (float[2,3] x) => (float[3,2] y) {{
        t = Transpose<perm=[1,0]>(x)
        y = Relu(t)
    }}""")
    assert not apply(TransposeThrough, model).changed


def test_operand_that_is_neither_transposed_nor_constant_keeps_the_pattern():
    model = parse_model(f"""{HEADER}
    g (float[2,3] x, float[3,2] z) => (float[2,3] y) {{
        t = Transpose<perm=[1,0]>(x)
        a = Add(t, z)
        y = Transpose<perm=[1,0]>(a)
    }}""")
    assert not apply(TransposeThrough, model).changed


# ------------------------------------------------------------- Transpose into Gemm / MatMul


def test_transposed_matrix_into_a_matmul_becomes_a_gemm_flag():
    model = parse_model(f"""{HEADER}
    g (float[3,2] a, float[3,4] b) => (float[2,4] y) {{
        t = Transpose<perm=[1,0]>(a)
        y = MatMul(t, b)
    }}""")
    result = apply(FuseAffine(), model)
    assert dict(result.ops) == {"Gemm": 1}
    assert_same_outputs(
        model, result.model, {**feeds(3, 2, names=("a",)), **feeds(3, 4, names=("b",))}
    )


def test_transpose_into_a_gemm_flips_its_flag():
    model = parse_model(f"""{HEADER}
    g (float[2,3] a, float[3,4] b) => (float[2,4] y) {{
        t = Transpose<perm=[1,0]>(b)
        y = Gemm<transB=1>(a, t)
    }}""")
    result = apply(FuseAffine(), model)
    assert dict(result.ops) == {"Gemm": 1}
    gemm = result.model.graph.node[0]
    assert all(attr.i == 0 for attr in gemm.attribute if attr.name == "transB")
    assert_same_outputs(
        model, result.model, {**feeds(2, 3, names=("a",)), **feeds(3, 4, names=("b",))}
    )


def test_batched_matmul_of_a_transpose_stays():
    model = parse_model(f"""{HEADER}
    g (float[5,3,2] a, float[5,3,4] b) => (float[5,2,4] y) {{
        t = Transpose<perm=[0,2,1]>(a)
        y = MatMul(t, b)
    }}""")
    assert not apply(FuseAffine(), model).changed


def test_integer_matmul_of_a_transpose_stays():
    model = parse_model(f"""{HEADER}
    g (int32[3,2] a, int32[3,4] b) => (int32[2,4] y) {{
        t = Transpose<perm=[1,0]>(a)
        y = MatMul(t, b)
    }}""")
    assert not apply(FuseAffine(), model).changed
