"""Quantization: the ``quantize`` pass and what it is built from.

``quantize`` runs the pass (options, calibration, accuracy guard, report), ``graph`` places
QuantizeLinear/DequantizeLinear where onnxruntime fuses them into integer kernels, ``numerics``
holds the arithmetic (types, scales, zero points, int4 packing) and ``opset`` raises a model
to the opset that a quantized type needs.
"""

from onnxslim.passes.quantize.quantize import Quantize

__all__ = ["Quantize"]
