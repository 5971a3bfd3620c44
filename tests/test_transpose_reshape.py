"""collapse-chains' TransposeAcrossReshape: Transposes on both sides of a Reshape that only
splits or merges axes compose into one or cancel, pushed down or pulled up; a Reshape that
mixes axes the permutations move apart keeps both. Outputs equal on onnxruntime."""

from __future__ import annotations

import numpy as np
from onnxslim.passes.eliminations import CollapseChains, TransposeAcrossReshape, UnitAxisTranspose

from onnxslim.testing import apply, assert_same_outputs, parse_model

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def feeds(*shape: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def test_transposes_that_cancel_across_a_split_leave_the_reshape_alone():
    """[N, 6, 4] -> [N, 4, 6] -> split 6 into 2 x 3 -> back: one Reshape of x."""
    model = parse_model(f"""{HEADER}
    g (float[N,6,4] x) => (float[N,2,3,4] y) <int64[4] s = {{0, 4, 2, 3}}> {{
        t = Transpose<perm=[0,2,1]>(x)
        r = Reshape(t, s)
        y = Transpose<perm=[0,2,3,1]>(r)
    }}""")
    result = apply(TransposeAcrossReshape, model)
    assert dict(result.ops) == {"Reshape": 1}
    assert_same_outputs(model, result.model, feeds(3, 6, 4))


def test_a_pushed_down_transpose_merges_with_the_one_after():
    """A -1 target entry that stands for the named batch dim is kept as such."""
    model = parse_model(f"""{HEADER}
    g (float[N,6,4] x) => (float[N,4,3,2] y) <int64[4] s = {{-1, 4, 2, 3}}> {{
        t = Transpose<perm=[0,2,1]>(x)
        r = Reshape(t, s)
        y = Transpose<perm=[0,1,3,2]>(r)
    }}""")
    result = apply(TransposeAcrossReshape, model)
    assert dict(result.ops) == {"Reshape": 1, "Transpose": 1}
    assert_same_outputs(model, result.model, feeds(3, 6, 4))


def test_attention_head_merge_pulls_the_last_transpose_up():
    """[N, H, S, D] -> [N, S, H, D] -> [N, S, H*D] -> [N, H*D, S]: the head merge cannot
    take the first Transpose down, but the last one moves up and composes with it."""
    model = parse_model(f"""{HEADER}
    g (float[N,2,3,4] x) => (float[N,8,3] y) <int64[3] s = {{0, 0, 8}}> {{
        t = Transpose<perm=[0,2,1,3]>(x)
        r = Reshape(t, s)
        y = Transpose<perm=[0,2,1]>(r)
    }}""")
    result = apply(TransposeAcrossReshape, model)
    assert dict(result.ops) == {"Reshape": 1, "Transpose": 1}
    transpose = next(n for n in result.model.graph.node if n.op_type == "Transpose")
    assert list(transpose.attribute[0].ints) == [0, 1, 3, 2]
    assert_same_outputs(model, result.model, feeds(5, 2, 3, 4))


def test_a_graph_output_keeps_its_name_when_both_transposes_go():
    model = parse_model(f"""{HEADER}
    g (float[6,4] x) => (float[2,3,4] y) <int64[3] s = {{4, 2, 3}}> {{
        t = Transpose<perm=[1,0]>(x)
        r = Reshape(t, s)
        y = Transpose<perm=[1,2,0]>(r)
    }}""")
    result = apply(TransposeAcrossReshape, model)
    assert dict(result.ops) == {"Reshape": 1}
    assert [o.name for o in result.model.graph.output] == ["y"]
    assert_same_outputs(model, result.model, feeds(6, 4))


def test_a_reshape_that_regroups_across_axes_keeps_both_transposes():
    """[2, 6] -> [3, 4] joins both axes into one run, which neither permutation keeps in
    order."""
    model = parse_model(f"""{HEADER}
    g (float[6,2] x) => (float[4,3] y) <int64[2] s = {{3, 4}}> {{
        t = Transpose<perm=[1,0]>(x)
        r = Reshape(t, s)
        y = Transpose<perm=[1,0]>(r)
    }}""")
    result = apply(TransposeAcrossReshape, model)
    assert dict(result.ops) == {"Transpose": 2, "Reshape": 1}


def test_a_transpose_read_elsewhere_stays():
    model = parse_model(f"""{HEADER}
    g (float[N,6,4] x) => (float[N,2,3,4] y, float[N,4,6] t) <int64[4] s = {{0, 4, 2, 3}}> {{
        t = Transpose<perm=[0,2,1]>(x)
        r = Reshape(t, s)
        y = Transpose<perm=[0,2,3,1]>(r)
    }}""")
    result = apply(TransposeAcrossReshape, model)
    assert dict(result.ops) == {"Transpose": 2, "Reshape": 1}


def test_two_named_dims_merged_into_one_keep_both_transposes():
    """A Reshape that merges two named dims has no group the rule can remap."""
    model = parse_model(f"""{HEADER}
    g (float[N,S,4] x) => (float[4,M] y) <int64[2] s = {{4, -1}}> {{
        t = Transpose<perm=[2,0,1]>(x)
        r = Reshape(t, s)
        y = Transpose<perm=[0,1]>(r)
    }}""")
    result = apply(TransposeAcrossReshape, model)
    assert result.ops["Transpose"] == 2


def test_a_transpose_of_unit_axes_joins_the_reshapes_around_it():
    """Swin's last-stage window partition: one window, so only axes of size 1 move."""
    model = parse_model(f"""{HEADER}
    g (float[N,7,7,8] x) => (float[N,49,8] y)
      <int64[6] a = {{0, 1, 7, 1, 7, 8}}, int64[3] b = {{-1, 49, 8}}> {{
        r = Reshape(x, a)
        t = Transpose<perm=[0,1,3,2,4,5]>(r)
        y = Reshape(t, b)
    }}""")
    result = apply(UnitAxisTranspose, model)
    assert dict(result.ops) == {"Reshape": 3}
    assert_same_outputs(model, result.model, feeds(2, 7, 7, 8))
    merged = apply(CollapseChains, result.model)
    assert dict(merged.ops) == {"Reshape": 1}
    assert_same_outputs(model, merged.model, feeds(2, 7, 7, 8))


def test_a_transpose_that_moves_data_stays():
    model = parse_model(f"""{HEADER}
    g (float[N,7,2,8] x) => (float[N,2,7,8] y) <int64[4] b = {{0, 2, 7, 8}}> {{
        t = Transpose<perm=[0,2,1,3]>(x)
        y = Reshape(t, b)
    }}""")
    assert dict(apply(UnitAxisTranspose, model).ops) == {"Transpose": 1, "Reshape": 1}
