"""Model I/O: what goes in comes out, big weights stay on disk, writes are atomic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from conftest import external_data_file, make_model, tensor_info
from onnx import TensorProto, helper, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxslim import model as model_io
from onnxslim.errors import ModelLoadError, ModelSaveError
from onnxslim.model import load, save, to_proto


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _matmul_model(rows: int = 64, cols: int = 64) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["y"]),
        ],
        [tensor_info("x", TensorProto.FLOAT, ["N", rows])],
        [tensor_info("y", TensorProto.FLOAT, ["N", cols])],
        {
            "w": rng.standard_normal((rows, cols)).astype(np.float32),
            "b": rng.standard_normal(cols).astype(np.float32),
        },
    )


def _if_model() -> onnx.ModelProto:
    """An If whose branches both read the outer initializer ``s``."""
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["x", "s"], ["t"])], "then", [], [tensor_info("t", 1, [2])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Sub", ["x", "s"], ["e"])], "else", [], [tensor_info("e", 1, [2])]
    )
    return make_model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        [tensor_info("c", TensorProto.BOOL, []), tensor_info("x", TensorProto.FLOAT, [2])],
        [tensor_info("y", TensorProto.FLOAT, [2])],
        {"s": np.array([1.0, 2.0], np.float32)},
    )


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_round_trip_keeps_model_level_fields(tmp_path):
    proto = _matmul_model()
    proto.producer_name, proto.producer_version = "exporter", "9.9"
    proto.doc_string, proto.graph.doc_string = "model doc", "graph doc"
    proto.domain, proto.model_version = "ai.example", 7
    helper.set_model_props(proto, {"author": "tests", "license": "MIT"})
    proto.opset_import.append(helper.make_opsetid("com.example", 3))

    saved = onnx.load(save(load(proto), tmp_path / "out.onnx"))

    assert (saved.producer_name, saved.producer_version) == ("exporter", "9.9")
    assert (saved.doc_string, saved.graph.doc_string) == ("model doc", "graph doc")
    assert (saved.domain, saved.model_version, saved.ir_version) == ("ai.example", 7, 8)
    assert {p.key: p.value for p in saved.metadata_props} == {"author": "tests", "license": "MIT"}
    assert {(o.domain, o.version) for o in saved.opset_import} >= {("", 17), ("com.example", 3)}


def test_round_trip_keeps_weights_exactly_and_in_order(tmp_path):
    proto = _matmul_model()
    saved = onnx.load(save(load(proto), tmp_path / "out.onnx"))
    assert [t.name for t in saved.graph.initializer] == ["w", "b"]
    for before, after in zip(proto.graph.initializer, saved.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(before), numpy_helper.to_array(after))
    onnx.checker.check_model(saved, full_check=True)


def test_model_local_functions_survive(tmp_path):
    function = helper.make_function(
        "custom",
        "Double",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [helper.make_node("Double", ["x"], ["y"], domain="custom")],
        "g",
        [tensor_info("x", TensorProto.FLOAT, [3])],
        [tensor_info("y", TensorProto.FLOAT, [3])],
    )
    proto = helper.make_model(
        graph,
        functions=[function],
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
        ir_version=8,
    )
    path = save(load(proto), tmp_path / "out.onnx")
    assert [f.name for f in onnx.load(path).functions] == ["Double"]
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(_run(path, {"x": x})[0], 2 * x)


def test_outer_scope_initializer_is_written_once_at_top_level(tmp_path):
    path = save(load(_if_model()), tmp_path / "out.onnx")
    saved = onnx.load(path)
    assert [t.name for t in saved.graph.initializer] == ["s"]
    branches = [attr.g for attr in saved.graph.node[0].attribute]
    assert all(len(branch.initializer) == 0 for branch in branches)
    x = np.array([5.0, 5.0], np.float32)
    np.testing.assert_array_equal(_run(path, {"c": np.array(True), "x": x})[0], [6.0, 7.0])
    np.testing.assert_array_equal(_run(path, {"c": np.array(False), "x": x})[0], [4.0, 3.0])


def test_external_data_stays_on_disk_until_read(tmp_path):
    source = tmp_path / "ext.onnx"
    onnx.save(
        _matmul_model(), source, save_as_external_data=True, location="ext.bin", size_threshold=0
    )
    loaded = load(source)
    weight = next(t for t in loaded.graph.tensors().values() if t.name == "w")
    assert isinstance(weight._values, LazyValues)
    assert loaded.external_files() == {(tmp_path / "ext.bin").resolve()}
    np.testing.assert_array_equal(
        model_io.read_constant(weight), numpy_helper.to_array(_matmul_model().graph.initializer[0])
    )
    assert isinstance(weight._values, LazyValues), "read_constant must not cache the values"


@pytest.mark.parametrize("external_out", [True, False])
def test_external_data_source_saves_external_or_inline(tmp_path, external_out):
    source = tmp_path / "ext.onnx"
    onnx.save(
        _matmul_model(), source, save_as_external_data=True, location="ext.bin", size_threshold=0
    )
    before = _digest(tmp_path / "ext.bin")
    out = save(load(source), tmp_path / "out.onnx", external_data=external_out)

    data = external_data_file(out)
    assert (data is not None and data.exists()) == external_out
    assert _digest(tmp_path / "ext.bin") == before
    onnx.checker.check_model(str(out), full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, {"x": x})[0], _run(source, {"x": x})[0])


def test_models_over_the_protobuf_limit_get_external_data(tmp_path, monkeypatch):
    # The real limit is 2 GiB (bench/optimize.py exercises a 3 GB model); a lower limit
    # exercises the same decision on a small model.
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 8 * 1024)
    monkeypatch.setattr(model_io, "_INLINE_MARGIN", 0)
    out = save(load(_matmul_model()), tmp_path / "big.onnx")
    assert external_data_file(out).stat().st_size >= 64 * 64 * 4
    saved = onnx.load(str(out), load_external_data=False)
    assert saved.graph.initializer[0].data_location == TensorProto.EXTERNAL
    onnx.checker.check_model(str(out))


def test_to_proto_reads_external_data_in(tmp_path):
    source = tmp_path / "ext.onnx"
    onnx.save(
        _matmul_model(), source, save_as_external_data=True, location="ext.bin", size_threshold=0
    )
    proto = to_proto(load(source))
    assert all(t.data_location == TensorProto.DEFAULT for t in proto.graph.initializer)
    onnx.checker.check_model(proto, full_check=True)


def test_loading_a_proto_never_changes_it():
    proto = _matmul_model()
    before = proto.SerializeToString()
    loaded = load(proto)
    loaded.graph.nodes.clear()
    save_target = to_proto(loaded)
    assert proto.SerializeToString() == before
    assert len(save_target.graph.node) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"\x00\xffnot an onnx model at all\x13\x37" * 10, "not a valid ONNX protobuf"),
        ("truncated", "not a valid ONNX protobuf"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "model.onnx"
    if content == "truncated":
        full = _matmul_model().SerializeToString()
        content = full[: len(full) // 2]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message) as info:
        load(path)
    assert "\n" not in str(info.value)


def test_a_folder_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="directory"):
        load(tmp_path)


def test_missing_external_data_is_reported_at_load(tmp_path):
    source = tmp_path / "ext.onnx"
    onnx.save(
        _matmul_model(), source, save_as_external_data=True, location="ext.bin", size_threshold=0
    )
    (tmp_path / "ext.bin").unlink()
    with pytest.raises(ModelLoadError, match="ext.bin"):
        load(source)


def test_save_refuses_to_overwrite_the_source(tmp_path):
    source = tmp_path / "ext.onnx"
    onnx.save(
        _matmul_model(), source, save_as_external_data=True, location="ext.bin", size_threshold=0
    )
    digests = (_digest(source), _digest(tmp_path / "ext.bin"))
    loaded = load(source)
    with pytest.raises(ModelSaveError, match="overwrite the input"):
        save(loaded, source)
    assert (_digest(source), _digest(tmp_path / "ext.bin")) == digests


def test_failed_save_leaves_destination_and_folder_untouched(tmp_path):
    source = tmp_path / "ext.onnx"
    onnx.save(
        _matmul_model(), source, save_as_external_data=True, location="ext.bin", size_threshold=0
    )
    loaded = load(source)
    (tmp_path / "ext.bin").write_bytes(b"short")  # the data vanishes under the loaded model
    destination = tmp_path / "out.onnx"
    destination.write_bytes(b"previous contents")
    before = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(ModelLoadError, match="runs past the end of 'ext.bin'"):
        save(loaded, destination)

    assert destination.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_save_into_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSaveError, match="does not exist"):
        save(load(_matmul_model()), tmp_path / "nope" / "out.onnx")


def test_initializers_of_old_ir_models_stay_graph_inputs(tmp_path):
    """Before IR 4 every initializer had to be a graph input as well."""
    proto = _matmul_model()
    proto.ir_version = 3
    proto.opset_import[0].version = 9
    proto.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in proto.graph.initializer
    )
    onnx.checker.check_model(proto)
    saved = onnx.load(save(load(proto), tmp_path / "old.onnx"))
    assert saved.ir_version == 3
    assert {i.name for i in saved.graph.input} == {"x", "w", "b"}
    onnx.checker.check_model(saved, full_check=True)


def test_optional_typed_values_survive_the_round_trip(tmp_path):
    optional = helper.make_optional_type_proto(helper.make_tensor_type_proto(1, [2]))
    proto = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("OptionalHasElement", ["maybe"], ["has"]),
                helper.make_node("Identity", ["maybe"], ["same"]),
            ],
            "g",
            [helper.make_value_info("maybe", optional)],
            [tensor_info("has", TensorProto.BOOL, []), helper.make_value_info("same", optional)],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
        ir_version=8,
    )
    onnx.checker.check_model(proto, full_check=True)
    path = save(load(proto), tmp_path / "optional.onnx")
    saved = onnx.load(path)
    assert saved.graph.input[0].type == optional
    assert saved.graph.output[1].type == optional
    onnx.checker.check_model(saved, full_check=True)
    outputs = _run(path, {"maybe": np.array([1.0, 2.0], np.float32)})
    assert bool(outputs[0]) is True
    np.testing.assert_array_equal(outputs[1], [1.0, 2.0])


def test_type_attributes_that_gs_skips_are_kept(tmp_path):
    """``Optional(type=...)`` carries a TypeProto attribute, which gs does not import."""
    element = helper.make_tensor_type_proto(TensorProto.FLOAT, [5])
    proto = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Optional", [], ["empty"], type=element),
                helper.make_node("OptionalHasElement", ["empty"], ["has"]),
            ],
            "g",
            [],
            [tensor_info("has", TensorProto.BOOL, [])],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
        ir_version=8,
    )
    path = save(load(proto), tmp_path / "typed.onnx")
    saved = onnx.load(path)
    assert saved.graph.node[0].attribute[0].tp == element
    onnx.checker.check_model(saved, full_check=True)
    assert bool(_run(path, {})[0]) is False


def test_intermediate_shapes_are_written_only_if_the_input_had_them(tmp_path):
    from onnxslim.passes.infer_shapes import InferShapes

    from onnxslim.pipeline import PassManager

    bare = _matmul_model()
    annotated = onnx.shape_inference.infer_shapes(_matmul_model())
    assert not bare.graph.value_info and annotated.graph.value_info
    for proto, expected in ((bare, []), (annotated, ["mm"])):
        model = load(proto)
        PassManager([InferShapes()]).run(model)
        assert model.graph.tensors()["mm"].shape == ["N", 64]  # passes still see shapes
        saved = onnx.load(save(model, tmp_path / "out.onnx"))
        assert [v.name for v in saved.graph.value_info] == expected


@pytest.mark.parametrize("source", ["inline", "external"])
def test_saved_file_is_no_larger_than_what_onnx_writes(tmp_path, source):
    proto = _matmul_model()
    path = tmp_path / "in.onnx"
    if source == "external":
        onnx.save(proto, path, save_as_external_data=True, location="in.bin", size_threshold=0)
    else:
        onnx.save(proto, path)
    reference = tmp_path / "reference.onnx"
    onnx.save(onnx.load(path), reference)  # onnx's own whole-model serialization, inline

    out = save(load(path), tmp_path / "out.onnx")

    if source == "inline":
        assert out.stat().st_size == reference.stat().st_size
        assert onnx.load(out) == onnx.load(reference)
    else:  # onnx marks tensors read back from external data DEFAULT explicitly: 2 bytes each
        expected = _matmul_model()  # saving with external data rewrote ``proto`` in place
        assert out.stat().st_size == reference.stat().st_size - 2 * len(expected.graph.initializer)
        for ours, theirs in zip(
            onnx.load(out).graph.initializer, expected.graph.initializer, strict=True
        ):
            np.testing.assert_array_equal(
                numpy_helper.to_array(ours), numpy_helper.to_array(theirs)
            )


def test_scalar_and_strided_numpy_constants_keep_their_shapes(tmp_path):
    model = load(_matmul_model())
    weight = next(t for t in model_io.all_constants(model.graph) if t.name == "w")
    bias = next(t for t in model_io.all_constants(model.graph) if t.name == "b")
    weight.values = np.asarray(model_io.read_constant(weight)).T  # not C-contiguous
    scalar = gs.Constant("scale", np.array(3.0, np.float32))
    bias.values = np.asarray(model_io.read_constant(bias))
    mul = gs.Node("Mul", inputs=[model.graph.outputs[0], scalar], outputs=[gs.Variable("z")])
    model.graph.nodes.append(mul)
    model.graph.outputs = [mul.outputs[0]]
    saved = onnx.load(save(model, tmp_path / "out.onnx"))
    shapes = {t.name: list(t.dims) for t in saved.graph.initializer}
    assert shapes == {"w": [64, 64], "b": [64], "scale": []}
    written = {t.name: numpy_helper.to_array(t) for t in saved.graph.initializer}
    np.testing.assert_array_equal(written["w"], np.asarray(weight.values))


def test_empty_numpy_constants_are_written(tmp_path):
    """A tensor with a zero-length axis (onnx's backend tests have them) has no bytes to write,
    which the streaming writer must not trip over."""
    model = load(_matmul_model())
    empty = gs.Constant("state", np.zeros((2, 0, 3), np.float32))
    concat = gs.Node("Concat", inputs=[model.graph.outputs[0], empty], outputs=[gs.Variable("z")])
    concat.attrs["axis"] = 1
    model.graph.nodes.append(concat)
    saved = onnx.load(save(model, tmp_path / "out.onnx"))
    (state,) = [t for t in saved.graph.initializer if t.name == "state"]
    assert numpy_helper.to_array(state).shape == (2, 0, 3)


def test_copies_of_subgraphs_share_the_outer_constants_they_read(tmp_path):
    """gs copies an outer tensor once per subgraph that reads it; copy_graph keeps one, so a
    copy swapped back in does not write an initializer twice."""
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["t"])],
        "then",
        [],
        [tensor_info("t", TensorProto.FLOAT, [4])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Sub", ["x", "one"], ["e"])],
        "else",
        [],
        [tensor_info("e", TensorProto.FLOAT, [4])],
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)
    proto = make_model(
        [node],
        [tensor_info("x", TensorProto.FLOAT, [4]), tensor_info("c", TensorProto.BOOL, [])],
        [tensor_info("y", TensorProto.FLOAT, [4])],
        initializers=[numpy_helper.from_array(np.ones(4, np.float32), "one")],
    )
    model = load(proto)
    copy = model_io.copy_graph(model.graph)
    model.graph.nodes, model.graph.inputs, model.graph.outputs = (
        copy.nodes,
        copy.inputs,
        copy.outputs,
    )
    written = to_proto(model)
    onnx.checker.check_model(written)
    assert [t.name for t in written.graph.initializer] == ["one"]


def test_large_initializers_are_read_from_the_model_file_only_when_needed(tmp_path):
    """A model file's weights of 1 MiB and more are not parsed into memory at load: they are
    read from their range of the file when a pass or a save asks."""
    big = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [tensor_info("x", TensorProto.FLOAT, [1, 512])],
        [tensor_info("y", TensorProto.FLOAT, [1, 1024])],
        {"w": big},
    )
    source = tmp_path / "big.onnx"
    onnx.save(proto, source)
    loaded = load(source)
    weight = next(t for t in model_io.all_constants(loaded.graph) if t.name == "w")
    assert isinstance(weight._values, model_io.ExternalValues)
    assert loaded.source_files() == [source.resolve()]
    np.testing.assert_array_equal(model_io.read_constant(weight), big)
    out = save(loaded, tmp_path / "out.onnx")
    assert onnx.load(out).SerializeToString() == proto.SerializeToString()
