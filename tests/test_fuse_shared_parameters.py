"""fuse-batchnorm and fuse-affine on parameters that layers share (the TorchScript exporter
deduplicates identical tensors and reads them through Identity): the size rule counts the
node a fusion removes and an equal share of shared constants, and every declined fusion is
said in a note."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxslim.passes.fusions import FuseAffine, FuseBatchNorm

from onnxslim.testing import apply, assert_same_outputs


def _conv_bn_layers(channels: int, layers: int, *, through_identity: bool) -> onnx.ModelProto:
    """``layers`` parallel Conv (no bias) -> BatchNormalization branches over one input, every
    BatchNorm reading the same four statistics (through an Identity each, as TorchScript
    writes it, or directly), the branch outputs summed."""
    rng = np.random.default_rng(0)
    stats = {
        "scale": rng.uniform(0.5, 1.5, channels),
        "shift": rng.standard_normal(channels),
        "mean": rng.standard_normal(channels),
        "var": rng.uniform(0.5, 2.0, channels),
    }
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in stats.items()]
    nodes, outputs = [], []
    for layer in range(layers):
        weight = f"w{layer}"
        initializers.append(
            numpy_helper.from_array(
                rng.standard_normal((channels, 3, 1, 1)).astype(np.float32), weight
            )
        )
        names = list(stats)
        if through_identity:
            names = [f"{name}_{layer}" for name in stats]
            nodes += [
                helper.make_node("Identity", [s], [n]) for s, n in zip(stats, names, strict=True)
            ]
        nodes.append(helper.make_node("Conv", ["x", weight], [f"c{layer}"]))
        nodes.append(helper.make_node("BatchNormalization", [f"c{layer}", *names], [f"b{layer}"]))
        outputs.append(f"b{layer}")
    nodes.append(helper.make_node("Sum", outputs, ["y"]))
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)}


def test_batchnorms_sharing_statistics_through_identity_all_fold():
    model = _conv_bn_layers(channels=16, layers=4, through_identity=True)
    result = apply([FuseBatchNorm()], model)
    assert result.ops["BatchNormalization"] == 0
    assert_same_outputs(model, result.model, _feeds())


def test_batchnorms_sharing_statistics_directly_all_fold():
    model = _conv_bn_layers(channels=16, layers=4, through_identity=False)
    result = apply([FuseBatchNorm()], model)
    assert result.ops["BatchNormalization"] == 0
    assert_same_outputs(model, result.model, _feeds())


def test_wide_batchnorms_shared_many_times_stay_and_say_why():
    """Eight branches of 1024 channels: each fusion adds a 4 KiB bias and frees an eighth
    of the 16 KiB statistics, more than a node is worth."""
    model = _conv_bn_layers(channels=1024, layers=8, through_identity=True)
    result = apply([FuseBatchNorm()], model)
    assert result.ops["BatchNormalization"] == 8
    assert any("outweigh those it frees and the node it removes" in n for n in result.notes)


def test_batchnorm_after_a_relu_is_noted():
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Relu", ["x"], ["r"]),
                helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["y"]),
            ],
            "relu_bn",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 3, 3])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 3, 3])],
            [numpy_helper.from_array(np.ones(2, np.float32), n) for n in "sbmv"],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    result = apply([FuseBatchNorm()], model)
    assert not result.changed
    assert any("left 1 node(s) because its input is not the output" in n for n in result.notes)


def test_per_channel_mul_shared_through_identity_folds_into_conv():
    """fuse-affine reads the constant behind an Identity too."""
    rng = np.random.default_rng(2)
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Conv", ["x", "w"], ["c"]),
                helper.make_node("Identity", ["k"], ["k1"]),
                helper.make_node("Mul", ["c", "k1"], ["y"]),
            ],
            "conv_mul",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            [
                numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w"),
                numpy_helper.from_array(rng.standard_normal((4, 1, 1)).astype(np.float32), "k"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    result = apply([FuseAffine()], model)
    assert result.ops["Mul"] == 0
    assert_same_outputs(model, result.model, _feeds())
