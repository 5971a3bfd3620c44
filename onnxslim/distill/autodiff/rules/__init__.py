"""The gradient rules, one module per op family; importing this package registers them all.

Each module's rules, by op:

* ``arithmetic``: Add, Sub, Mul, Div, Sum, Pow, Sqrt, Exp, Log, Neg, Reciprocal, Abs,
  Identity, Dropout (inference), Cast, Where, Round (straight-through in fake quantization);
* ``activations``: Relu, LeakyRelu, PRelu, Clip, Sigmoid, Tanh, Erf, Gelu, Softplus,
  HardSigmoid, HardSwish;
* ``softmax``: Softmax, LogSoftmax, SoftmaxCrossEntropyLoss;
* ``linear``: MatMul, Gemm;
* ``convolution``: Conv, ConvTranspose;
* ``pooling``: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool;
* ``normalization``: LayerNormalization, BatchNormalization (inference form);
* ``reductions``: ReduceSum, ReduceMean, ReduceSumSquare, ReduceL2, ReduceMax, ReduceMin;
* ``layout``: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand, Concat, Split, Slice,
  Pad;
* ``indexing``: Gather, GatherElements;
* ``resize``: Resize;
* ``quantization``: QuantizeLinear → DequantizeLinear (straight-through estimator).
"""

from __future__ import annotations

from onnxslim.distill.autodiff.rules import (  # noqa: F401
    activations,
    arithmetic,
    convolution,
    indexing,
    layout,
    linear,
    normalization,
    pooling,
    quantization,
    reductions,
    resize,
    softmax,
)

__all__: list[str] = []
