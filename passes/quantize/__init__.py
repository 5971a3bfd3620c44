"""Quantization: the ``quantize`` pass and what it is built from.

``quantize`` runs the pass: the scheme, calibration, the quality floor, the report. Around it:

- ``layers``: which nodes are quantized, and where their weights really come from;
- ``scheme``: what ``activations=auto`` picks for a model, and why;
- ``graph``: static Q/DQ placement where onnxruntime fuses it into integer kernels;
- ``dynamic``: dynamic activations (DynamicQuantizeLinear + MatMulInteger);
- ``smooth``: SmoothQuant, activation outliers moved into the weights;
- ``evaluate``: quality on held-out samples, and the floor it is judged by;
- ``guard``: per-layer sensitivity from one run, and which layers to keep float;
- ``numerics``: the arithmetic (types, scales, zero points, int4 packing);
- ``opset``: raising a model to the opset a quantized type needs.
"""

from onnxslim.passes.quantize.quantize import AlreadyQuantizedError, Quantize

__all__ = ["Quantize", "AlreadyQuantizedError"]
