"""Structured channel pruning: the ``prune-channels`` pass and what it is built from.

``channels`` runs the pass; ``groups`` finds the channels that must go together, on
``layout`` (which axis of each tensor carries them) and ``reshapes`` (how a Reshape maps
them); ``importance`` scores channels, ``surgery`` removes them and ``shapes`` pins the
stand-in shapes the analysis needs.
"""

from onnxslim.passes.prune.channels import PruneChannels

__all__ = ["PruneChannels"]
