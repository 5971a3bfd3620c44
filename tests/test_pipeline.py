"""The pass manager: order, fixed points, records, and verification that names the culprit."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from conftest import make_model, tensor_info
from onnx import TensorProto, helper

from onnxslim.errors import EXIT_INTERNAL, PassCrashError, PassError, VerificationError
from onnxslim.model import load
from onnxslim.pipeline import (
    FixedPoint,
    Pass,
    PassContext,
    PassManager,
    _attribute_docs,
    _in_topological_order,
)
from onnxslim.registry import parse_pipeline


def _relu_chain() -> gs.Graph:
    return load(
        make_model(
            [
                helper.make_node("Identity", ["x"], ["a"]),
                helper.make_node("Relu", ["a"], ["b"]),
                helper.make_node("Add", ["b", "bias"], ["y"]),
            ],
            [tensor_info("x", TensorProto.FLOAT, [2, 3])],
            [tensor_info("y", TensorProto.FLOAT, [2, 3])],
            {"bias": np.ones((2, 3), np.float32)},
        )
    )


@dataclass
class CountingPass(Pass):
    """Claims a change for its first ``changes`` runs."""

    changes: int = 0
    runs: int = 0

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        self.runs += 1
        return self.runs <= self.changes


CountingPass.name = "counting"


@dataclass
class ScaleBias(Pass):
    """Claims to be lossless but doubles the bias: verify_each must catch it."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        bias = graph.tensors()["bias"]
        bias.values = bias.values * 2
        return True


ScaleBias.name = "scale-bias"


@dataclass
class BreakGraph(Pass):
    """Makes Relu read a tensor of the wrong type: onnx.checker must reject the result."""

    lossless = False

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        relu = next(n for n in graph.nodes if n.op == "Relu")
        relu.inputs[0] = gs.Constant("ids", np.array([[1, 2, 3]] * 2, np.int64))
        return True


BreakGraph.name = "break-graph"


@dataclass
class Explodes(Pass):
    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        raise KeyError("boom")


Explodes.name = "explodes"


def test_records_time_nodes_and_bytes_per_pass():
    model = _relu_chain()
    from onnxslim.passes.cleanup import Cleanup

    (record,) = PassManager([Cleanup()]).run(model)
    assert (record.name, record.changed, record.nodes_before, record.nodes_after) == (
        "cleanup",
        True,
        3,
        2,
    )
    assert record.initializer_bytes_before == record.initializer_bytes_after == 24
    assert record.seconds >= 0


def test_fixed_point_stops_at_the_first_round_without_change():
    counting = CountingPass(changes=2)
    records = PassManager([FixedPoint([counting], max_iterations=10)]).run(_relu_chain())
    assert [r.round for r in records] == [1, 2, 3]
    assert [r.changed for r in records] == [True, True, False]


def test_fixed_point_is_capped():
    counting = CountingPass(changes=100)
    records = PassManager([FixedPoint([counting], max_iterations=4)]).run(_relu_chain())
    assert len(records) == 4


def test_unexpected_exceptions_become_internal_errors_naming_the_pass():
    with pytest.raises(PassCrashError, match="internal error in pass 'explodes': KeyError") as info:
        PassManager([Explodes()]).run(_relu_chain())
    assert info.value.exit_code == EXIT_INTERNAL
    assert isinstance(info.value, PassError)
    assert isinstance(info.value.__cause__, KeyError)


def test_verify_each_names_the_pass_that_changed_outputs():
    from onnxslim.passes.cleanup import Cleanup

    with pytest.raises(VerificationError, match="pass 'scale-bias' changed the outputs"):
        PassManager([Cleanup(), ScaleBias(), Cleanup()], verify_each=True).run(_relu_chain())


def test_verify_each_names_the_pass_that_made_the_model_invalid():
    with pytest.raises(VerificationError, match="pass 'break-graph' produced an invalid model"):
        PassManager([BreakGraph()], verify_each=True).run(_relu_chain())


def test_without_verification_a_bad_pass_goes_unnoticed_by_the_manager():
    records = PassManager([ScaleBias()]).run(_relu_chain())
    assert records[0].changed


def test_notes_logged_by_a_pass_land_in_its_record():
    @dataclass
    class Noting(Pass):
        def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
            ctx.log("left node X alone: unsupported")
            return False

    Noting.name = "noting"
    (record,) = PassManager([Noting()]).run(_relu_chain())
    assert record.notes == ["left node X alone: unsupported"]


def test_pass_description_and_options_come_from_the_class():
    assert CountingPass.description() == "Claims a change for its first ``changes`` runs."
    assert [(o.name, o.type_name, o.default) for o in CountingPass.options()] == [
        ("changes", "int", 0),
        ("runs", "int", 0),
    ]
    assert CountingPass(changes=3).label() == "counting(changes=3)"


@dataclass
class Documented(Pass):
    """Options documented where they are declared."""

    ratio: float = 0.5
    """Share of channels to remove,
    in [0, 1)."""
    undocumented: int = 1
    named: str = field(default="x", metadata={"help": "Help from field metadata."})


def test_option_help_comes_from_attribute_docstrings_or_field_metadata():
    helps = {option.name: option.help for option in Documented.options()}
    assert helps == {
        "ratio": "Share of channels to remove,\nin [0, 1).",
        "undocumented": "",
        "named": "Help from field metadata.",
    }


def test_parsing_a_pipeline_does_not_read_the_passes_source():
    """Option help is read from source only when shown; running a pipeline needs none."""
    _attribute_docs.cache_clear()
    steps = parse_pipeline("[infer-shapes,fold-constants(max_growth_bytes=10),cleanup]*2")
    assert [step.label() for step in steps] == [
        "[infer-shapes,fold-constants(max_growth_bytes=10),cleanup]*2"
    ]
    assert _attribute_docs.cache_info().currsize == 0


def test_metrics_a_pass_publishes_land_in_its_record():
    @dataclass
    class Measuring(Pass):
        def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
            ctx.metric("output_cosine", np.float32(0.5))
            return False

    Measuring.name = "measuring"
    first, second = PassManager([Measuring(), CountingPass()]).run(_relu_chain())
    assert first.metrics == {"output_cosine": 0.5}
    assert type(first.metrics["output_cosine"]) is float
    assert second.metrics == {}


@dataclass
class Tabulating(Pass):
    """Reports a table and changes nothing."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        ctx.table("per layer", ["layer", "sqnr"], [["conv", 31.5], ["gemm", None]])
        return False


Tabulating.name = "tabulating"


def test_a_pass_table_lands_in_its_record_and_renders():
    from rich.console import Console

    from onnxslim.report import render_pass_table

    (record,) = PassManager([Tabulating()]).run(_relu_chain())
    (table,) = record.tables
    assert (table.title, table.columns, table.rows) == (
        "per layer",
        ["layer", "sqnr"],
        [["conv", 31.5], ["gemm", None]],
    )
    console = Console(record=True, width=60)
    render_pass_table(table, console)
    text = console.export_text()
    assert "per layer" in text and "31.5" in text and "conv" in text


def test_keep_if_valid_undoes_a_rewrite_that_breaks_the_model():
    from onnxslim.pipeline import keep_if_valid

    model = _relu_chain()
    ctx = PassContext(model=model)

    def break_it() -> bool:
        relu = next(n for n in model.graph.nodes if n.op == "Relu")
        relu.op = "NoSuchOp"
        return True

    assert keep_if_valid(ctx, break_it, "breaker") is False
    assert [n.op for n in model.graph.nodes] == ["Identity", "Relu", "Add"]
    assert ctx.notes and ctx.notes[0].startswith("breaker left the model untouched")


def test_keep_if_valid_keeps_a_valid_rewrite():
    from onnxslim.pipeline import keep_if_valid

    model = _relu_chain()
    ctx = PassContext(model=model)

    def drop_identity() -> bool:
        identity = next(n for n in model.graph.nodes if n.op == "Identity")
        identity.outputs[0].outputs[0].inputs[0] = identity.inputs[0]
        return True

    assert keep_if_valid(ctx, drop_identity, "dropper") is True
    assert [n.op for n in model.graph.nodes] == ["Relu", "Add"]


@dataclass
class AppendsRelu(Pass):
    """Inserts a Relu before the Add by appending it to the node list (out of order), as a
    rewrite that builds a new node does."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        add = next(node for node in graph.nodes if node.op == "Add")
        source = add.inputs[0]
        relu_out = gs.Variable("relu_out", dtype=source.dtype, shape=source.shape)
        graph.nodes.append(gs.Node("Relu", inputs=[source], outputs=[relu_out]))
        add.inputs[0] = relu_out
        return True


AppendsRelu.name = "appends-relu"


@dataclass
class RewiresToInput(Pass):
    """Makes the Add read the graph input: the order stays topological."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        add = next(node for node in graph.nodes if node.op == "Add")
        add.inputs[0] = graph.inputs[0]
        return True


RewiresToInput.name = "rewires-to-input"


def test_a_pass_that_appends_a_node_out_of_order_leaves_a_sorted_graph() -> None:
    model = _relu_chain()
    PassManager([AppendsRelu()]).run(model)
    order = [node.op for node in model.graph.nodes]
    assert order.index("Relu", order.index("Identity") + 1) < order.index("Add")
    assert _in_topological_order(model.graph)


def test_an_order_that_is_already_topological_is_recognised_and_kept() -> None:
    model = _relu_chain()
    assert _in_topological_order(model.graph)
    PassManager([RewiresToInput()]).run(model)
    assert [node.op for node in model.graph.nodes] == ["Add"]  # the rest is unused
    model.graph.nodes.reverse()
    assert _in_topological_order(model.graph)  # one node
    graph = _relu_chain().graph
    graph.nodes.reverse()
    assert not _in_topological_order(graph)


def test_a_graph_with_a_subgraph_is_always_sorted_by_gs() -> None:
    graph = _relu_chain().graph
    body = gs.Graph(nodes=[], inputs=[], outputs=[graph.inputs[0]])
    graph.nodes[0].attrs["body"] = body
    assert not _in_topological_order(graph)
