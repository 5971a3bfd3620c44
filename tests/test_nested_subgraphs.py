"""Deeply nested subgraphs cost time linear in their depth: a 25-level chain of If (the
deepest protobuf lets one nest comfortably) goes through every pass in seconds, not hours.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import onnx
import pytest
from conftest import run_model, tensor_info
from onnx import TensorProto, helper, numpy_helper

from onnxslim.api import optimize

T = TypeVar("T")
DEPTH = 25
# Generous for a busy 2-core machine: linear passes take about a second here, while cse
# doubled its time with every level before (2**25 times a millisecond is nine hours).
BUDGET_SECONDS = 60


def nested_ifs(depth: int) -> onnx.ModelProto:
    """``y = (x + 1) * 2`` then an If on ``c`` whose then-branch is the same again, ``depth``
    levels deep; every else-branch computes ``m - 1``. Every level repeats the same Add and
    Mul, so cse has candidates at every depth."""

    def body(level: int, out: str) -> onnx.GraphProto:
        added, scaled = f"a{level}", f"m{level}"
        nodes = [
            helper.make_node("Add", ["x", "one"], [added]),
            helper.make_node("Mul", [added, "two"], [scaled]),
        ]
        if level == 0:
            nodes.append(helper.make_node("Identity", [scaled], [out]))
        else:
            leaf = helper.make_graph(
                [helper.make_node("Sub", [scaled, "one"], [f"e{level}"])],
                f"else{level}",
                [],
                [tensor_info(f"e{level}", TensorProto.FLOAT, [4])],
            )
            then = body(level - 1, f"t{level}")
            nodes.append(helper.make_node("If", ["c"], [out], then_branch=then, else_branch=leaf))
        return helper.make_graph(nodes, f"b{level}", [], [tensor_info(out, TensorProto.FLOAT, [4])])

    main = body(depth, "y")
    graph = helper.make_graph(
        list(main.node),
        "nested",
        [tensor_info("x", TensorProto.FLOAT, [4]), tensor_info("c", TensorProto.BOOL, [])],
        [tensor_info("y", TensorProto.FLOAT, [4])],
        [
            numpy_helper.from_array(np.ones(4, np.float32), "one"),
            numpy_helper.from_array(np.full(4, 2, np.float32), "two"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def within_budget(work: Callable[[], T]) -> T:
    def expire(*_: object) -> None:
        raise TimeoutError(f"took more than {BUDGET_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(BUDGET_SECONDS)
    try:
        return work()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


SPECS = [
    None,  # the default pipeline, to a fixed point
    "cse",
    "cleanup",
    "infer-shapes",
    "simplify-shapes",
    "fold-constants",
    "eliminate-noops",
    "collapse-chains",
    "fuse-batchnorm",
    "fuse-affine",
    "fuse-layernorm",
    "fuse-gelu",
    "prune-channels(ratio=0.5)",
    "float16",
    "prune-weights(sparsity=0.5)",
    "cluster-weights",
    "quantize(activations=none)",
    "convert-opset(target=18)",
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec or "default")
def test_a_deep_if_chain_goes_through_every_pass_in_seconds(spec):
    proto = nested_ifs(DEPTH)
    result = within_budget(lambda: optimize(proto, spec))
    optimized = result.model.to_proto()
    onnx.checker.check_model(optimized)
    feeds = {"x": np.arange(4, dtype=np.float32), "c": np.array(True)}
    actual = run_model(optimized, feeds)[0]
    if result.report.passes and all(not r.changed for r in result.report.passes):
        return
    if spec is None or spec in ("cse", "cleanup", "fold-constants", "convert-opset(target=18)"):
        np.testing.assert_allclose(actual, run_model(proto, feeds)[0], rtol=1e-6)
