"""An example plugin pass: ``onnxslim optimize model.onnx --plugin examples/drop_noop_cast.py``.

It removes Cast nodes that convert a tensor to the type it already has, which exporters
emit around dtype-generic code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from onnxslim import Pass, PassContext, register_pass


@register_pass("drop-noop-cast")
@dataclass
class DropNoopCast(Pass):
    """Remove Cast nodes whose input already has the target type."""

    keep_graph_outputs: bool = True  # options are typed fields with defaults
    """Keep a Cast whose output is a graph output (its name is the model's interface)."""

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        changed = False
        for node in graph.nodes:
            source, result = node.inputs[0] if node.inputs else None, node.outputs[0]
            if node.op != "Cast" or source is None or source.dtype is None:
                continue
            if np.dtype(source.dtype) != helper.tensor_dtype_to_np_dtype(node.attrs["to"]):
                continue
            if result in graph.outputs:
                if self.keep_graph_outputs:
                    ctx.log(f"kept {node.name}: its output is a graph output")
                continue
            for consumer in list(result.outputs):
                consumer.inputs[consumer.inputs.index(result)] = source
            changed = True  # the manager removes the now-dead Cast
        return changed
