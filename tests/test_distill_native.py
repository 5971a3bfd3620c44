"""The native backend's parts: optimizer steps, whole-model gradients, the fused step.

Whole-model gradients are checked like single rules (``gradcheck``): finite differences in
float64 on the pruned digits CNN, on a small transformer encoder layer, and through each
distillation loss.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_model
from gradcheck import Case, check_gradients
from onnx import TensorProto, helper, numpy_helper
from test_distill import mlp_student

from onnxslim import optimize
from onnxslim.distill import distill
from onnxslim.distill.autodiff import build_backward
from onnxslim.distill.losses import LABELS_INPUT, PositionMask, build_loss, target_name
from onnxslim.distill.native import NativeBackend
from onnxslim.distill.optimizers import (
    LR_INPUT,
    STEP_INPUT,
    OptimizerSettings,
    build_optimizer_step,
)
from onnxslim.distill.training_graph import build_training_graphs
from onnxslim.distill.versions import NATIVE_MIN_OPSET, for_native_training

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FLOAT = TensorProto.FLOAT


# ----------------------------------------------------------------------------- optimizers


def _torch_adamw(p, g, m, v, step, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.AdamW's update, as its documentation states it."""
    p = p * (1 - lr * wd)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denominator = np.sqrt(v) / math.sqrt(1 - b2**step) + eps
    return p - lr / (1 - b1**step) * m / denominator, m, v


def _optimizer_model(settings: OptimizerSettings, shape) -> tuple[onnx.ModelProto, dict]:
    value_type = helper.make_tensor_type_proto(FLOAT, shape)
    step = build_optimizer_step({"p": ("g", value_type)}, settings, opset=17)
    outputs = [step.updated["p"], *(out for _, out in step.state.values())]
    graph = helper.make_graph(
        step.nodes,
        "optimizer",
        [helper.make_value_info("p", value_type), helper.make_value_info("g", value_type)]
        + step.inputs,
        [helper.make_value_info(name, value_type) for name in outputs],
        step.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model, step.state


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_step_follows_pytorch_for_several_steps(weight_decay):
    rng = np.random.default_rng(0)
    model, state = _optimizer_model(OptimizerSettings("adamw", weight_decay), [3, 4])
    p = rng.standard_normal((3, 4)).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    expected = (p.astype(np.float64), m.astype(np.float64), v.astype(np.float64))
    (m_in, _), (v_in, _) = state[("p", "exp_avg")], state[("p", "exp_avg_sq")]
    for step, lr in enumerate([1e-2, 3e-2, 5e-3], start=1):
        g = rng.standard_normal((3, 4)).astype(np.float32)
        feeds = {"p": p, "g": g, m_in: m, v_in: v}
        feeds |= {LR_INPUT: np.array(lr, np.float32), STEP_INPUT: np.array(step, np.float32)}
        p, m, v = run_model(model, feeds)
        expected = _torch_adamw(*expected[:1], g, *expected[1:], step, lr, weight_decay)
        np.testing.assert_allclose(p, expected[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v, expected[2], rtol=1e-5, atol=1e-9)


def test_sgd_step_adds_weight_decay_to_the_gradient():
    model, state = _optimizer_model(OptimizerSettings("sgd", weight_decay=0.5), [5])
    assert state == {}
    p, g = np.arange(5, dtype=np.float32), np.ones(5, np.float32)
    (updated,) = run_model(
        model,
        {
            "p": p,
            "g": g,
            LR_INPUT: np.array(0.1, np.float32),
            STEP_INPUT: np.array(1.0, np.float32),
        },
    )
    np.testing.assert_allclose(updated, p - 0.1 * (g + 0.5 * p), rtol=1e-6)


# --------------------------------------------------------------- whole-model gradients


def _as_case(proto: onnx.ModelProto, wrt_inputs: dict[str, np.ndarray], trained: list[str]) -> Case:
    """A model as a gradcheck case: its float weights in float64, ``trained`` ones as inputs."""
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    as64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in weights.items()}
    return Case(
        list(proto.graph.node),
        {**wrt_inputs, **{k: as64[k] for k in trained}},
        trained,
        [o.name for o in proto.graph.output],
        constants={k: v for k, v in as64.items() if k not in trained},
        opset=max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
    )


def _pruned_digits() -> onnx.ModelProto:
    model, _ = optimize(FIXTURES / "digits_cnn.onnx", passes="prune-channels(ratio=0.5)")
    return model.to_proto()


def test_pruned_digits_cnn_gradients_match_finite_differences():
    proto = _pruned_digits()
    # Random images: real digits have exact zeros, whose equal activations put ReLU and
    # max-pooling kinks within a finite-difference step of the point.
    images = np.random.default_rng(0).random((3, 1, 8, 8))
    trained = [t.name for t in proto.graph.initializer if len(t.dims) > 0]

    def build(dtype, rng):
        return _as_case(proto, {"image": images}, trained)

    errors = check_gradients(build, elements=4)
    assert max(errors.values()) <= 1e-4


def _encoder_layer(rng, vocab=11, width=8, heads=2, ffn=12, opset=17) -> onnx.ModelProto:
    """BERT-like: embeddings + positions, LayerNorm, masked multi-head attention, residual,
    LayerNorm, Erf-GELU FFN, residual, mean pooling."""
    head = width // heads

    def w(*shape):
        return (rng.standard_normal(shape) * 0.4).astype(np.float32)

    weights = {
        "words": w(vocab, width),
        "positions": w(5, width),
        "ln0.g": 1 + w(width),
        "ln0.b": w(width),
        "q.w": w(width, width),
        "q.b": w(width),
        "k.w": w(width, width),
        "k.b": w(width),
        "v.w": w(width, width),
        "v.b": w(width),
        "o.w": w(width, width),
        "o.b": w(width),
        "ln1.g": 1 + w(width),
        "ln1.b": w(width),
        "f1.w": w(width, ffn),
        "f1.b": w(ffn),
        "f2.w": w(ffn, width),
        "f2.b": w(width),
    }
    consts = {
        "split_heads": np.array([0, -1, heads, head], np.int64),
        "merge_heads": np.array([0, -1, width], np.int64),
        "scale": np.array(math.sqrt(head), np.float32),
        "neg": np.array(-1e4, np.float32),
        "zero": np.array(0, np.float32),
        "half": np.array(0.5, np.float32),
        "one": np.array(1.0, np.float32),
        "root2": np.array(math.sqrt(2), np.float32),
        "axis1": np.array([1], np.int64),
        "mask_axes": np.array([1, 2], np.int64),
        "pos_start": np.array([0], np.int64),
        "pos_axis": np.array([0], np.int64),
        "seq_end": np.array([2], np.int64),
    }
    n = helper.make_node
    nodes = [
        n("Gather", ["words", "ids"], ["tok"]),
        n("Shape", ["ids"], ["ids_shape"]),
        n("Slice", ["ids_shape", "axis1", "seq_end"], ["seq_length"]),
        n("Slice", ["positions", "pos_start", "seq_length", "pos_axis"], ["pos"]),
        n("Add", ["tok", "pos"], ["emb"]),
        n("LayerNormalization", ["emb", "ln0.g", "ln0.b"], ["h0"], axis=-1, epsilon=1e-5),
    ]
    for name in "qkv":
        nodes += [
            n("MatMul", ["h0", f"{name}.w"], [f"{name}_mm"]),
            n("Add", [f"{name}_mm", f"{name}.b"], [f"{name}_lin"]),
            n("Reshape", [f"{name}_lin", "split_heads"], [f"{name}_split"]),
            n("Transpose", [f"{name}_split"], [f"{name}_heads"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        n("Transpose", ["k_heads"], ["k_t"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q_heads", "k_t"], ["scores_raw"]),
        n("Div", ["scores_raw", "scale"], ["scores"]),
        n("Unsqueeze", ["mask", "mask_axes"], ["mask4"]),
        n("Cast", ["mask4"], ["keep"], to=TensorProto.BOOL),
        n("Where", ["keep", "scores", "neg"], ["masked"]),
        n("Softmax", ["masked"], ["probs"], axis=-1),
        n("MatMul", ["probs", "v_heads"], ["context_heads"]),
        n("Transpose", ["context_heads"], ["context_t"], perm=[0, 2, 1, 3]),
        n("Reshape", ["context_t", "merge_heads"], ["context"]),
        n("MatMul", ["context", "o.w"], ["attn_mm"]),
        n("Add", ["attn_mm", "o.b"], ["attn"]),
        n("Add", ["attn", "h0"], ["res1"]),
        n("LayerNormalization", ["res1", "ln1.g", "ln1.b"], ["h1"], axis=-1, epsilon=1e-5),
        n("MatMul", ["h1", "f1.w"], ["f1_mm"]),
        n("Add", ["f1_mm", "f1.b"], ["f1"]),
        n("Div", ["f1", "root2"], ["f1_scaled"]),
        n("Erf", ["f1_scaled"], ["erf"]),
        n("Add", ["erf", "one"], ["erf1"]),
        n("Mul", ["f1", "erf1"], ["gelu_2"]),
        n("Mul", ["gelu_2", "half"], ["gelu"]),
        n("MatMul", ["gelu", "f2.w"], ["f2_mm"]),
        n("Add", ["f2_mm", "f2.b"], ["f2"]),
        n("Add", ["f2", "h1"], ["hidden"]),
        n("ReduceMean", ["hidden", "axis1"], ["embedding"], keepdims=0)
        if opset >= 18
        else n("ReduceMean", ["hidden"], ["embedding"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "encoder",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", "S"]),
        ],
        [helper.make_tensor_value_info("embedding", FLOAT, ["N", width])],
        [numpy_helper.from_array(v, k) for k, v in {**weights, **consts}.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_transformer_layer_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    proto = _encoder_layer(rng)
    ids = np.array([[1, 5, 3, 9], [2, 2, 7, 0]], np.int64)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.int64)
    trained = [t.name for t in proto.graph.initializer if t.data_type == FLOAT and len(t.dims)]

    def build(dtype, rng):
        return _as_case(proto, {"ids": ids, "mask": mask}, trained)

    errors = check_gradients(build, elements=8)
    assert max(errors.values()) <= 1e-4


def _token_encoder(seed: int) -> onnx.ModelProto:
    """The encoder layer with a transformer export's input names and its hidden states out."""
    proto = _encoder_layer(np.random.default_rng(seed))
    for node in proto.graph.node:
        node.input[:] = ["attention_mask" if name == "mask" else name for name in node.input]
    proto.graph.input[1].name = "attention_mask"
    proto.graph.output.append(helper.make_tensor_value_info("hidden", FLOAT, ["N", "S", 8]))
    return proto


@pytest.mark.parametrize(("mask", "masked"), [("auto", True), ("none", False)])
def test_attention_mask_leaves_padding_out_of_token_losses(tmp_path, mask, masked):
    """mask=auto finds the ``attention_mask`` input and weighs the token outputs with it;
    the pooled output and mask=none average over every position."""
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 11, (24, 4)).astype(np.int64)
    attention = (np.arange(4) < rng.integers(1, 5, (24, 1))).astype(np.int64)
    ids[attention == 0] = 0
    data = {"ids": ids, "attention_mask": attention}
    report = distill(
        _token_encoder(0),
        _token_encoder(1),
        data,
        tmp_path / "tuned.onnx",
        loss="cosine",
        outputs=["embedding", "hidden"],
        mask=mask,
        epochs=1,
        batch_size=8,
        threads=1,
        progress=False,
    )
    notes = [n for n in report.notes if "masks" in n]
    assert notes == (
        ["the loss leaves out the positions 'attention_mask' masks, in hidden"] if masked else []
    )


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("kl", {"temperature": 3.0, "alpha": 0.5, "labels": True}),
        ("mse", {}),
        ("cosine", {}),
        ("ce", {}),
    ],
)
def test_loss_gradients_match_finite_differences(kind, options):
    output = helper.make_tensor_value_info("out", FLOAT, ["N", 5])
    loss = build_loss([output], kind, opset=17, **options)
    rng = np.random.default_rng(1)
    inputs = {"out": rng.standard_normal((4, 5)) * 2}
    if kind != "ce":
        inputs[target_name("out")] = rng.standard_normal((4, 5)) * 2
    if kind == "ce" or options.get("labels"):
        inputs[LABELS_INPUT] = np.array([0, 4, 2, 2], np.int64)
    constants = {t.name: numpy_helper.to_array(t) for t in loss.initializers}
    constants = {
        k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in constants.items()
    }

    def build(dtype, rng):
        return Case(loss.nodes, inputs, ["out"], [loss.output], constants=constants)

    assert max(check_gradients(build).values()) <= 1e-4


@pytest.mark.parametrize("kind", ["kl", "mse", "cosine"])
def test_masked_loss_gradients_match_finite_differences(kind):
    output = helper.make_tensor_value_info("out", FLOAT, ["N", "S", 5])
    loss = build_loss([output], kind, opset=17, mask=PositionMask("m", 2))
    rng = np.random.default_rng(2)
    inputs = {
        "out": rng.standard_normal((2, 3, 5)) * 2,
        target_name("out"): rng.standard_normal((2, 3, 5)) * 2,
        "m": np.array([[1, 1, 0], [1, 0, 0]], np.int64),
    }
    constants = {
        t.name: numpy_helper.to_array(t).astype(np.float64)
        if t.data_type == FLOAT
        else numpy_helper.to_array(t)
        for t in loss.initializers
    }

    def build(dtype, rng):
        # the mask's Cast follows the precision checked (float64 against finite differences)
        to = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        nodes = [
            helper.make_node("Cast", list(n.input), list(n.output), to=to)
            if n.op_type == "Cast"
            else n
            for n in loss.nodes
        ]
        return Case(nodes, inputs, ["out"], [loss.output], constants=constants)

    assert max(check_gradients(build).values()) <= 1e-4


# ------------------------------------------------------------------------ the fused step


def test_native_steps_equal_a_plain_session_loop():
    """I/O binding alternates two buffer sets: after three steps the parameters must equal
    those of running the same step model with numpy arrays passed back by hand."""
    proto = for_native_training(_pruned_digits(), "student")
    output = proto.graph.output[0]
    loss = build_loss([output], "mse", opset=17)
    parameters = [t.name for t in proto.graph.initializer if len(t.dims)]
    graphs = build_training_graphs(
        proto, loss, parameters, OptimizerSettings("adamw", 0.01), eval_outputs=[output.name]
    )
    initial = {
        t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if t.name in parameters
    }
    from onnxslim.runtime import create_session

    sessions = tuple(
        create_session(m.SerializeToString()) for m in (graphs.step_model, graphs.eval_model)
    )
    backend = NativeBackend(graphs, initial, sessions)
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": rng.random((8, 1, 8, 8), np.float32),
            target_name(output.name): rng.standard_normal((8, 10)).astype(np.float32),
        }
        for _ in range(3)
    ]
    values = dict(initial)
    for p in graphs.parameters:
        for state_input, _ in graphs.state[p]:
            values[state_input] = np.zeros_like(initial[p])
    names = [o.name for o in graphs.step_model.graph.output]
    for step, feeds in enumerate(batches, start=1):
        losses = [backend.train_step(feeds, 1e-2)]
        outputs = dict(
            zip(
                names,
                sessions[0].run(
                    None,
                    {
                        **feeds,
                        **values,
                        LR_INPUT: np.array(1e-2, np.float32),
                        STEP_INPUT: np.array(step, np.float32),
                    },
                ),
                strict=True,
            )
        )
        assert losses[0] == pytest.approx(float(outputs[graphs.loss]), rel=1e-6)
        for p in graphs.parameters:
            values[p] = outputs[graphs.updated[p]]
            for state_input, state_output in graphs.state[p]:
                values[state_input] = outputs[state_output]
    snapshot = backend.snapshot()
    for p in graphs.parameters:
        np.testing.assert_allclose(snapshot[p], values[p], rtol=1e-6, atol=1e-7)
    loss, (student,) = backend.evaluate(batches[0])
    expected = run_model(
        graphs.eval_model, {**batches[0], **{p: values[p] for p in graphs.parameters}}
    )
    np.testing.assert_allclose(student, expected[1], rtol=1e-5, atol=1e-6)


def test_parameters_the_loss_ignores_are_left_out():
    """A branch that does not reach the loss: its weight gets no gradient and stays a
    constant of both models."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((4, 3)).astype(np.float32),
        "unused": rng.standard_normal((4, 2)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("MatMul", ["x", "unused"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_heads",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("y", FLOAT, ["N", 3]),
            helper.make_tensor_value_info("z", FLOAT, ["N", 2]),
        ],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    loss = build_loss([proto.graph.output[0]], "mse", opset=17)
    graphs = build_training_graphs(
        proto, loss, ["w", "unused"], OptimizerSettings(), eval_outputs=["y"]
    )
    assert graphs.parameters == ["w"] and graphs.frozen == ["unused"]
    onnx.checker.check_model(graphs.step_model, full_check=True)


def test_older_opsets_are_converted_up_for_the_gradient_rules():
    proto = mlp_student(opset=13)
    converted = for_native_training(proto, "student")
    assert converted.opset_import[0].version == NATIVE_MIN_OPSET
    assert proto.opset_import[0].version == 13
    assert {t.name for t in converted.graph.initializer} == {
        t.name for t in proto.graph.initializer
    }
    feeds = {"image": np.load(FIXTURES / "digits.npz")["x_test"][:4]}
    np.testing.assert_allclose(
        run_model(converted, feeds)[0], run_model(proto, feeds)[0], rtol=1e-6
    )


def test_backward_of_an_unreachable_loss_is_empty():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["loss"])],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [])],
        [helper.make_tensor_value_info("loss", FLOAT, [])],
        [numpy_helper.from_array(np.ones(3, np.float32), "w")],
    )
    backward = build_backward(graph, "loss", ["w"], opset=17)
    assert backward.gradients == {} and backward.without_gradient == ["w"]
