"""The Python API: ``onnxslim.optimize`` after an export, and writing a pass of your own."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from conftest import external_data_file
from onnx import TensorProto, helper

import onnxslim
from onnxslim import Pass, PassContext, PipelineSpecError, ValidationOptions, register_pass

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_cnn.onnx"


@register_pass("test-api-shift-gemm-bias")
class ShiftGemmBias(Pass):
    """Add ``amount`` to the bias of every Gemm: a lossy rewrite with a known error."""

    lossless = False
    amount: float = 0.0

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        for node in graph.nodes:
            if node.op == "Gemm" and len(node.inputs) > 2:
                bias = node.inputs[2]
                bias.values = bias.values + np.float32(self.amount)
        return self.amount != 0.0


def run_model(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cnn_feeds(seed: int = 0) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal((1, 3, 32, 32), np.float32)}


def classifier_feeds(batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).standard_normal((batch, 3, 8, 8), np.float32)}


# ------------------------------------------------------------------------- optimize(proto)


def test_optimize_takes_a_model_proto_and_leaves_it_unchanged():
    proto = onnx.load(str(FIXTURE))
    serialized = proto.SerializeToString()

    onnxslim.optimize(proto)

    assert proto.SerializeToString() == serialized


def test_optimize_returns_the_model_and_a_report():
    proto = onnx.load(str(FIXTURE))

    model, report = onnxslim.optimize(proto)

    assert isinstance(model, onnxslim.Model)
    assert report.before.nodes == len(proto.graph.node)
    assert report.after.nodes == model.node_count() < report.before.nodes
    assert report.output is None and report.written is False
    assert report.validation is None


def test_optimized_proto_passes_the_checker_and_computes_the_same_outputs():
    proto = onnx.load(str(FIXTURE))

    result = onnxslim.optimize(proto)

    optimized = result.to_proto()
    onnx.checker.check_model(optimized, full_check=True)
    feeds = cnn_feeds()
    np.testing.assert_allclose(
        run_model(optimized, feeds)[0], run_model(proto, feeds)[0], rtol=0, atol=1e-5
    )


def test_validation_without_output_reports_but_writes_nothing(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    _, report = onnxslim.optimize(onnx.load(str(FIXTURE)), validate=True)

    assert report.validation.passed
    assert report.written is False
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- optimize(path, output=...)


def test_optimize_with_validate_writes_when_outputs_match(tmp_path: Path):
    out = tmp_path / "out.onnx"

    _, report = onnxslim.optimize(FIXTURE, output=out, validate=True)

    assert report.validation.passed
    assert report.written is True
    assert report.output == str(out)
    feeds = cnn_feeds(1)
    np.testing.assert_allclose(run_model(out, feeds)[0], run_model(FIXTURE, feeds)[0], atol=1e-5)


def test_optimize_with_validate_does_not_write_when_outputs_differ(
    classifier_model, save_model, tmp_path: Path
):
    source = save_model(classifier_model)
    out = tmp_path / "out.onnx"

    _, report = onnxslim.optimize(
        source,
        "test-api-shift-gemm-bias(amount=0.01)",
        output=out,
        validate=ValidationOptions(atol=1e-4, rtol=0.0),
    )

    assert report.written is False
    assert not out.exists()
    assert not report.validation.passed
    # Shifting the classifier's bias by 0.01 moves every logit by 0.01.
    [logits] = report.validation.outputs
    assert logits.max_abs == pytest.approx(0.01, rel=1e-3)
    assert any("was not written" in note for note in report.notes)


@pytest.mark.parametrize(("min_cosine", "written"), [(None, True), (0.999999, False)])
def test_validation_options_min_cosine_is_honoured(
    classifier_model, save_model, tmp_path: Path, min_cosine: float | None, written: bool
):
    """atol and rtol are loose enough to pass the shifted model; only min_cosine can fail it."""
    out = tmp_path / "out.onnx"

    _, report = onnxslim.optimize(
        save_model(classifier_model),
        "test-api-shift-gemm-bias(amount=0.5)",
        output=out,
        validate=ValidationOptions(atol=10.0, rtol=10.0, min_cosine=min_cosine),
    )

    [logits] = report.validation.outputs
    assert logits.cosine < 0.999999
    assert report.written is written
    assert out.exists() is written


def test_top_level_validate_stays_callable_after_its_first_call():
    """``onnxslim.validate`` shares its name with the ``onnxslim.validate`` module."""
    for _ in range(2):
        assert onnxslim.validate(FIXTURE, FIXTURE, progress=False).passed


# --------------------------------------------------------------------------- README example


def _export(path: str) -> None:
    """Stands in for torch.onnx.export: y = relu(x @ (w * 2)), with a constant Mul and an
    Identity that optimization removes."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["w", "two"], ["w2"]),
            helper.make_node("MatMul", ["x", "w2"], ["xw"]),
            helper.make_node("Identity", ["xw"], ["xw_copy"]),
            helper.make_node("Relu", ["xw_copy"], ["y"]),
        ],
        "exported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [
            onnx.numpy_helper.from_array(np.random.default_rng(0).random((4, 3), np.float32), "w"),
            onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)


def test_readme_example(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _export("exported.onnx")

    # README.md, "Python API", verbatim:
    import onnx

    import onnxslim

    proto = onnx.load("exported.onnx")  # e.g. straight from torch.onnx.export
    model, report = onnxslim.optimize(proto)  # the proto itself is never modified
    onnxslim.save(model, "slim.onnx")  # atomic; external data when over 2 GiB
    metrics = onnxslim.validate("exported.onnx", "slim.onnx", samples=4)
    assert metrics.passed
    print(report.before.nodes, "->", report.after.nodes)

    assert (report.before.nodes, report.after.nodes) == (4, 2)


# ------------------------------------------------------------------------ a pass of your own


@register_pass("test-api-drop-mul-by-one")
class DropMulByOne(Pass):
    """Remove ``Mul`` nodes whose constant factor is 1 within ``tolerance``."""

    tolerance: float = 0.0

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        changed = False
        for node in [n for n in graph.nodes if n.op == "Mul"]:
            x, factor = node.inputs
            if not isinstance(factor, gs.Constant):
                continue
            if np.any(np.abs(factor.values - 1.0) > self.tolerance):
                continue
            product = node.outputs[0]
            for consumer in list(product.outputs):
                consumer.inputs[consumer.inputs.index(product)] = x
            node.outputs.clear()  # the manager removes the dead node
            changed = True
        return changed


def _scaled_relu(factor: float) -> onnx.ModelProto:
    """y = relu(x * factor)."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "factor"], ["scaled"]),
            helper.make_node("Relu", ["scaled"], ["y"]),
        ],
        "scaled_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [onnx.numpy_helper.from_array(np.array(factor, np.float32), "factor")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_registered_pass_runs_by_name_with_an_option_parsed_from_the_spec():
    proto = _scaled_relu(1.0005)

    model, report = onnxslim.optimize(proto, "test-api-drop-mul-by-one(tolerance=1e-3),cleanup")

    assert report.pipeline == "test-api-drop-mul-by-one(tolerance=0.001),cleanup"
    assert [node.op for node in model.graph.nodes] == ["Relu"]
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5), np.float32)}
    np.testing.assert_allclose(
        run_model(model.to_proto(), feeds)[0], run_model(proto, feeds)[0], rtol=1e-3, atol=0
    )


def test_registered_pass_option_default_applies_without_a_value():
    model, report = onnxslim.optimize(_scaled_relu(1.0005), "test-api-drop-mul-by-one,cleanup")

    assert [node.op for node in model.graph.nodes] == ["Mul", "Relu"]
    assert report.passes[0].changed is False


def test_registered_pass_option_of_the_wrong_type_is_a_spec_error():
    with pytest.raises(PipelineSpecError, match=r"tolerance.*expected float.*'tiny'"):
        onnxslim.optimize(_scaled_relu(1.0), "test-api-drop-mul-by-one(tolerance=tiny)")


def test_registered_pass_is_listed_with_its_option():
    options = onnxslim.registered_passes()["test-api-drop-mul-by-one"].options()

    assert [(o.name, o.type_name, o.default) for o in options] == [("tolerance", "float", 0.0)]


# ---------------------------------------------------------------------------- external data


def test_model_with_external_data_is_optimized_to_external_data(make_classifier, tmp_path: Path):
    # Wide enough that both weight matrices exceed the 1 KiB external-data threshold.
    proto = make_classifier(classes=20, channels=16)
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    source = source_dir / "model.onnx"
    onnx.save(
        proto,
        str(source),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    data = source_dir / "model.onnx.data"
    digests = sha256(source), sha256(data)
    out = tmp_path / "out" / "slim.onnx"
    out.parent.mkdir()

    _, report = onnxslim.optimize(source, output=out, external_data=True, validate=True)

    assert report.written
    assert (sha256(source), sha256(data)) == digests
    written = onnx.load(str(out), load_external_data=False)
    external = {
        t.name for t in written.graph.initializer if t.data_location == TensorProto.EXTERNAL
    }
    assert external == {"conv.weight", "fc.weight"}
    assert external_data_file(out).stat().st_size >= (16 * 27 + 20 * 16) * 4
    feeds = classifier_feeds()
    np.testing.assert_allclose(
        run_model(out, feeds)[0], run_model(source, feeds)[0], rtol=0, atol=1e-5
    )


def test_skip_applies_to_recipes_and_ready_made_steps(tmp_path):
    from onnxslim.passes.cleanup import Cleanup
    from onnxslim.passes.infer_shapes import InferShapes

    from onnxslim.api import resolve_steps

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        '[[steps]]\nrepeat = ["infer-shapes", "cleanup"]\n\n[[steps]]\npass = "cleanup"\n'
    )
    (group,) = resolve_steps(recipe=recipe, skip=["cleanup"])
    assert [s.name for s in group.steps] == ["infer-shapes"]
    assert [s.name for s in resolve_steps([Cleanup(), InferShapes()], skip=["cleanup"])] == [
        "infer-shapes"
    ]


# ------------------------------------------------------- input shapes, data, nothing changed


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value or d.dim_param or None for d in value.type.tensor_type.shape.dim]


def test_input_shapes_are_written_into_the_model_and_its_symbolic_dims(text_embedding_model):
    model, _ = onnxslim.optimize(text_embedding_model, input_shapes={"input_ids": [2, 7]})
    proto = model.to_proto()
    assert {v.name: _dims(v) for v in proto.graph.input} == {
        name: [2, 7] for name in ("input_ids", "token_type_ids", "position_ids", "attention_mask")
    }
    assert _dims(proto.graph.output[0]) == [2, 7, 8]
    ids = np.ones((2, 7), np.int64)
    feeds = {name: ids for name in ("input_ids", "token_type_ids", "position_ids")}
    assert run_model(proto, {**feeds, "attention_mask": ids})[0].shape == (2, 7, 8)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"input_ids": [2]}, "rank"),
        ({"nope": [1, 2]}, "not an input"),
    ],
)
def test_input_shapes_that_do_not_fit_are_input_data_errors(text_embedding_model, shapes, message):
    with pytest.raises(onnxslim.InputDataError, match=message):
        onnxslim.optimize(text_embedding_model, input_shapes=shapes)


def test_a_static_dim_cannot_be_overwritten(classifier_model):
    with pytest.raises(onnxslim.InputDataError, match="fixes it to 3"):
        onnxslim.optimize(classifier_model, input_shapes={"image": [1, 4, 8, 8]})


def test_validation_runs_on_the_calibration_data_a_pass_was_given(tmp_path):
    digits = FIXTURE.parent / "digits_cnn.onnx"
    data = FIXTURE.parent / "digits_test.npz"  # 450 images and their labels
    _, report = onnxslim.optimize(
        digits,
        passes=[onnxslim.registry.create_pass("quantize", {"calib": data, "samples": 32})],
        output=tmp_path / "q.onnx",
        validate=ValidationOptions(min_cosine=0.99, atol=float("inf")),
    )
    assert report.validation.inputs == str(data)
    assert report.validation.samples == 450
    assert report.validation.passed and report.written


def test_require_change_refuses_to_write_when_the_pass_changed_nothing(tmp_path):
    out = tmp_path / "same.onnx"
    digits = FIXTURE.parent / "digits_cnn.onnx"  # opset 17
    with pytest.raises(onnxslim.OnnxSlimError, match=r"convert-opset\(target=17\) changed nothing"):
        onnxslim.optimize(
            digits, "convert-opset(target=17)", output=out, require_change="convert-opset"
        )
    assert not out.exists()


def test_a_recipe_and_passes_together_are_refused(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\npass = "cleanup"\n')
    with pytest.raises(PipelineSpecError, match="not both"):
        onnxslim.optimize(FIXTURE, "cleanup", recipe=recipe)


def test_the_report_says_whether_anything_changed_and_gathers_metrics():
    _, first = onnxslim.optimize(FIXTURE)
    model, _ = onnxslim.optimize(FIXTURE)
    _, second = onnxslim.optimize(model)
    assert first.changed and not second.changed
    assert first.to_dict()["changed"] is True and first.to_dict()["metrics"] == {}
    assert (first.before.opset, first.before.ir_version) == (first.after.opset, 8)
