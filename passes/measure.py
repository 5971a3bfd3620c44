"""measure: a checkpoint in a recipe that records size, FLOPs, latency and quality.

It changes nothing. Put one after each compression step of a recipe (prune → distill →
quantize) and the optimize report shows one table with a row per stage, so the trade of
accuracy against size and speed is visible where it happens.
"""

from __future__ import annotations

from pathlib import Path

import onnx_graphsurgeon as gs

from onnxslim.pipeline import Pass, PassContext
from onnxslim.registry import register_pass
from onnxslim.stages import measure_stage

__all__ = ["Measure"]


@register_pass("measure")
class Measure(Pass):
    """Record file size, parameters, FLOPs, CPU latency and accuracy or output cosine.

    ``data`` is a .npz keyed by input name, one sample per row; with a ``labels`` array the
    quality is top-1 accuracy of the first output, otherwise the smallest cosine similarity of
    the outputs with the original model's. Latency is the median of ``runs`` runs on the first
    ``batch`` rows. ``stage`` names the row (default: its number).
    """

    needs_original = True

    stage: str = ""
    data: Path | None = None
    batch: int = 1
    runs: int = 20

    def run(self, graph: gs.Graph, ctx: PassContext) -> bool:
        label = self.stage or f"stage {len(ctx.stages) + 1}"
        ctx.stages.append(
            measure_stage(
                ctx.model,
                label,
                data=self.data,
                original=ctx.original_path(),
                batch=self.batch,
                runs=self.runs,
            )
        )
        return False
