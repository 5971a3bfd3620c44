"""Raising a graph to opset 21, where QuantizeLinear/DequantizeLinear take int4 and int16.

Between opsets 13 and 21 most ops only gained element types (float8, int4, ...), so a graph
that uses no op whose *behaviour* changed in between is the same model at opset 21. Ops whose
newer versions read their inputs or attributes differently (ReduceMean's ``axes`` became an
input in 18, for instance) block the raise; converting them is convert-opset's job.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from onnxslim import opsets
from onnxslim.model import Model, iter_graphs
from onnxslim.rewrite import STANDARD_DOMAINS

__all__ = ["raise_to_opset21", "set_opset", "OPSET_21"]

OPSET_21 = 21
IR_FOR_OPSET_21 = 10
# Ops whose versions after 13 add element types or optional attributes/inputs whose defaults
# keep the old behaviour.
_SAME_BEHAVIOUR = frozenset(
    {
        "AveragePool",
        "Cast",
        "CastLike",
        "Constant",
        "ConstantOfShape",
        "DequantizeLinear",
        "Equal",
        "Flatten",
        "Identity",
        "If",
        "IsInf",
        "IsNaN",
        "Loop",
        "Pad",
        "QuantizeLinear",
        "Reshape",
        "Resize",
        "Scan",
        "ScatterElements",
        "ScatterND",
        "Shape",
        "Size",
        "Split",
        "Squeeze",
        "Transpose",
        "Unsqueeze",
    }
)


def _behaviour_changed(op: str, opset: int) -> bool:
    try:
        old = onnx.defs.get_schema(op, opset, "").since_version
        new = onnx.defs.get_schema(op, OPSET_21, "").since_version
    except onnx.defs.SchemaError:
        return True
    return old != new and op not in _SAME_BEHAVIOUR


def raise_to_opset21(graph: gs.Graph, model: Model) -> str | None:
    """Raise ``graph`` (and ``model``'s IR version) to opset 21; or, leaving both as they are,
    the reason why not."""
    opset = int(graph.opset)
    changed = sorted(
        {
            node.op
            for g in iter_graphs(graph)
            for node in g.nodes
            if node.domain in STANDARD_DOMAINS and _behaviour_changed(node.op, opset)
        }
    )
    if changed:
        return (
            f"{', '.join(changed)} changed between opset {opset} and {OPSET_21}; "
            "run convert-opset first"
        )
    set_opset(graph, model, OPSET_21, max(int(model.shell.ir_version), IR_FOR_OPSET_21))
    return None


def set_opset(graph: gs.Graph, model: Model, opset: int, ir_version: int) -> None:
    """Set the default-domain opset and the model's IR version."""
    opsets.set_default_opset(graph, opset)
    model.shell.ir_version = ir_version
