"""Shared fixtures: tiny ONNX models built with onnx.helper, small enough to run in milliseconds.

Every model uses opset 17 and IR version 8, which both test environments (the newest onnx and
onnxruntime, and onnxruntime-training 1.19 with onnx 1.17) can load and run.

Fixtures that return a model return a fresh ``onnx.ModelProto`` each time, so a test may edit
it (perturb a weight, rename an input) without affecting others. Factory fixtures
(``build_model``, ``make_classifier``, ``make_text_model``, ``save_model``) take arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

Shape = Sequence[int | str | None] | None


def tensor_info(name: str, elem_type: int, shape: Shape) -> onnx.ValueInfoProto:
    """A graph input/output: ints are static dims, strings symbolic, None unnamed unknown."""
    return helper.make_tensor_value_info(name, elem_type, shape)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[np.ndarray | onnx.TensorProto] | dict[str, np.ndarray] = (),
    *,
    opset: int = OPSET,
    domains: dict[str, int] | None = None,
    name: str = "test",
) -> onnx.ModelProto:
    """A checked model from nodes, value infos and initializers (arrays in a dict by name).

    ``domains`` adds opset imports for custom domains, e.g. ``{"com.example": 1}``.
    """
    if isinstance(initializers, dict):
        initializers = [numpy_helper.from_array(v, k) for k, v in initializers.items()]
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    opsets = [helper.make_opsetid("", opset)]
    opsets += [helper.make_opsetid(domain, v) for domain, v in (domains or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def external_data_file(model_path: Path) -> Path | None:
    """The one external data file a saved model refers to (None when it has none)."""
    proto = onnx.load(str(model_path), load_external_data=False)
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert len(locations) <= 1, locations
    return model_path.parent / locations.pop() if locations else None


def run_model(
    proto: onnx.ModelProto, feeds: dict[str, np.ndarray], *, ort_optimizations: bool = True
) -> list[np.ndarray]:
    """Run a model on onnxruntime's CPU provider. Pass tests compare with
    ``ort_optimizations=False`` where onnxruntime's own rewrites could hide a pass's mistake."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not ort_optimizations:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def classifier(seed: int = 0, classes: int = 10, channels: int = 4) -> onnx.ModelProto:
    """Conv+Relu -> GlobalAveragePool -> Flatten -> Gemm: ``image`` [N,3,8,8] -> ``logits``
    [N, classes]. Weights are standard normal from ``seed``; initializers are named
    ``conv.weight``, ``conv.bias``, ``fc.weight`` ([classes, channels]) and ``fc.bias``."""
    rng = np.random.default_rng(seed)
    weights = {
        "conv.weight": rng.standard_normal((channels, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(channels).astype(np.float32),
        "fc.weight": rng.standard_normal((classes, channels)).astype(np.float32),
        "fc.bias": rng.standard_normal(classes).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["conv"], pads=[1] * 4),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
        helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    return make_model(
        nodes,
        [tensor_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [tensor_info("logits", TensorProto.FLOAT, ["N", classes])],
        weights,
        name="classifier",
    )


def text_model(
    vocab: int = 50, type_vocab: int = 2, max_positions: int = 32, hidden: int = 8
) -> onnx.ModelProto:
    """A BERT-like embedding block with four ``[batch, sequence]`` int64 inputs.

    ``input_ids`` -> Cast(int32) -> Gather(word table [vocab, hidden]); ``token_type_ids`` ->
    Gather(type table [type_vocab, hidden]); ``position_ids`` -> Gather(position table
    [max_positions, hidden]); ``attention_mask`` (0/1) scales the sum. Outputs: ``hidden``
    float [batch, sequence, hidden] and ``top_feature`` int64 [batch, sequence] (its argmax).
    """
    rng = np.random.default_rng(1)
    tables = {
        "word_embeddings": rng.standard_normal((vocab, hidden)).astype(np.float32),
        "type_embeddings": rng.standard_normal((type_vocab, hidden)).astype(np.float32),
        "position_embeddings": rng.standard_normal((max_positions, hidden)).astype(np.float32),
        "mask_axes": np.array([-1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["word_embeddings", "ids32"], ["words"]),
        helper.make_node("Gather", ["type_embeddings", "token_type_ids"], ["types"]),
        helper.make_node("Gather", ["position_embeddings", "position_ids"], ["positions"]),
        helper.make_node("Add", ["words", "types"], ["words_types"]),
        helper.make_node("Add", ["words_types", "positions"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_float", "mask_axes"], ["mask3d"]),
        helper.make_node("Mul", ["embedded", "mask3d"], ["hidden"]),
        helper.make_node("ArgMax", ["hidden"], ["top_feature"], axis=-1, keepdims=0),
    ]
    ids = ["batch", "sequence"]
    inputs = [
        tensor_info(name, TensorProto.INT64, ids)
        for name in ("input_ids", "token_type_ids", "position_ids", "attention_mask")
    ]
    outputs = [
        tensor_info("hidden", TensorProto.FLOAT, ["batch", "sequence", hidden]),
        tensor_info("top_feature", TensorProto.INT64, ids),
    ]
    return make_model(nodes, inputs, outputs, tables, name="text")


def typed_inputs_model() -> onnx.ModelProto:
    """Identity of each input, to exercise dtypes and dims:

    ``x`` float16 [?, 4] (unnamed dim), ``y`` float64 [batch, length], ``z`` float32
    [length, 3], ``flags`` bool [2], ``count`` int32 [1]. Output ``<name>_out`` per input.
    """
    specs = [
        ("x", TensorProto.FLOAT16, [None, 4]),
        ("y", TensorProto.DOUBLE, ["batch", "length"]),
        ("z", TensorProto.FLOAT, ["length", 3]),
        ("flags", TensorProto.BOOL, [2]),
        ("count", TensorProto.INT32, [1]),
    ]
    return make_model(
        [helper.make_node("Identity", [name], [f"{name}_out"]) for name, _, _ in specs],
        [tensor_info(name, elem, shape) for name, elem, shape in specs],
        [tensor_info(f"{name}_out", elem, shape) for name, elem, shape in specs],
        name="typed",
    )


@pytest.fixture
def build_model() -> Callable[..., onnx.ModelProto]:
    """``make_model(nodes, inputs, outputs, initializers=(), *, opset=17, domains=None)``."""
    return make_model


@pytest.fixture
def make_classifier() -> Callable[..., onnx.ModelProto]:
    """``classifier(seed=0, classes=10, channels=4)``."""
    return classifier


@pytest.fixture
def classifier_model() -> onnx.ModelProto:
    """Conv+Relu+Gemm classifier: ``image`` [N,3,8,8] float32 -> ``logits`` [N,10]."""
    return classifier()


@pytest.fixture
def make_text_model() -> Callable[..., onnx.ModelProto]:
    """``text_model(vocab=50, type_vocab=2, max_positions=32, hidden=8)``."""
    return text_model


@pytest.fixture
def text_embedding_model() -> onnx.ModelProto:
    """int64 ``input_ids``/``token_type_ids``/``position_ids``/``attention_mask``
    [batch, sequence] -> ``hidden`` float and ``top_feature`` int64."""
    return text_model()


@pytest.fixture
def symbolic_dims_model() -> onnx.ModelProto:
    """Inputs of five dtypes with static, symbolic (shared ``length``) and unnamed dims."""
    return typed_inputs_model()


@pytest.fixture
def save_model(tmp_path: Path) -> Callable[..., Path]:
    """``save_model(proto, name="model.onnx")`` writes into the test's tmp_path; returns the
    path."""

    def save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save_model(model, str(path))
        return path

    return save
