"""Weight storage compression: ``prune-weights`` (``sparsify``) and ``cluster-weights``
(``cluster``), on the weights that ``storage`` finds and rebuilds."""

from onnxslim.passes.weights.cluster import ClusterWeights
from onnxslim.passes.weights.sparsify import PruneWeights

__all__ = ["ClusterWeights", "PruneWeights"]
