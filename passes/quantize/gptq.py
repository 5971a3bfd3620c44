"""GPTQ: block-wise weights whose rounding errors the rest of the layer compensates.

Round to nearest treats every weight alone. GPTQ (Frantar et al., 2022) quantizes a MatMul's
weight ``W`` (``K x N``) one input row at a time and moves each row's rounding error onto the
rows not yet quantized, weighted by the inverse of ``H = X^T X``, the second moment of the
layer's inputs over calibration data: the error of the layer's *output* is what shrinks, not
the error of each weight. Scales are chosen per block when the block's first row is reached,
from the weights as updated so far (with the clipping search of ``numerics.block_params``;
asymmetric, with a zero point per block, under ``zero_points``).

``hessians`` measures ``H`` for the inputs of the layers, one calibration batch at a time, in
float64; ``gptq`` quantizes one weight. The result is stored exactly as round to nearest's
(opset-21 block-wise DequantizeLinear), so onnxruntime still fuses it into MatMulNBits.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnxslim.passes.quantize.numerics import QuantParams, QuantType, block_params

from onnxslim.calibration import batched
from onnxslim.inputs import input_specs
from onnxslim.progress import progress_bar
from onnxslim.runtime import open_session, run

__all__ = ["hessians", "gptq", "DAMPING"]

# Added to H's diagonal, as a fraction of its mean: keeps the inverse stable where inputs are
# nearly collinear. The paper's 1% assumes 128 x 2048 calibration tokens; with a few thousand
# (fewer than a wide layer has inputs) H is nearly singular and GPTQ fits the calibration
# set: on the Llama-style bench decoder, 1% made int4 worse than no calibration (held-out
# cosine 0.934 vs 0.940) and 10% better than both (0.946).
DAMPING = 0.1
# Rows whose errors are moved onto the rest in one matrix product (the paper's lazy batches).
_LAZY_ROWS = 128
_BATCH = 8


def hessians(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    samples: Sequence[Mapping[str, np.ndarray]],
    provider: str = "cpu",
) -> dict[str, np.ndarray]:
    """``X^T X / count`` for each tensor in ``tensors`` (the inputs of linear layers; ``X``
    holds one row per token, the last axis as columns), over ``samples``."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(tensors, 0)
    specs = input_specs(model)
    started, done = time.perf_counter(), 0
    with (
        open_session(model, provider, expose=tensors) as session,
        progress_bar("measuring layer inputs", len(samples)) as advance,
    ):
        for feed, count in batched(samples, specs, _BATCH):
            outputs = run(session, feed)
            for name in tensors:
                value = outputs.get(name, feed.get(name))
                if value is None or np.asarray(value).size == 0:
                    continue
                rows = np.asarray(value, dtype=np.float64).reshape(-1, np.shape(value)[-1])
                product = rows.T @ rows
                sums[name] = sums[name] + product if name in sums else product
                counts[name] += rows.shape[0]
            del outputs
            done += count
            rate = done / max(time.perf_counter() - started, 1e-9)
            advance(count, description=f"measuring layer inputs ({rate:,.0f} samples/s)")
    return {name: total / counts[name] for name, total in sums.items()}


def gptq(
    weights: np.ndarray,
    hessian: np.ndarray,
    qtype: QuantType,
    block_size: int,
    *,
    search: bool = True,
    zero_points: bool = False,
) -> tuple[np.ndarray, QuantParams]:
    """The integers and block-wise parameters (along axis 0) of the 2-D ``weights`` (``K x N``,
    read as ``x @ weights``), quantized by GPTQ against ``hessian`` (``K x K``)."""
    work = np.array(weights, dtype=np.float64)
    rows, columns = work.shape
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    work[dead] = 0.0  # an input that is always zero: its weights do not matter
    h[np.diag_indices(rows)] += DAMPING * np.mean(np.diag(h))
    upper = _inverse_cholesky(h)

    blocks = -(-rows // block_size)
    scale = np.ones((blocks, columns), dtype=np.float32)
    zero_point = np.zeros((blocks, columns), dtype=qtype.storage)
    q = np.zeros((rows, columns), dtype=qtype.storage)
    lazy = max(block_size, _LAZY_ROWS // block_size * block_size)
    for first in range(0, rows, lazy):
        last = min(first + lazy, rows)
        errors = np.zeros((last - first, columns))
        for row in range(first, last):
            if row % block_size == 0:
                block = work[row : row + block_size].astype(np.float32)[None]
                found = block_params(block, qtype, search, zero_points)
                scale[row // block_size], zero_point[row // block_size] = found[0][0], found[1][0]
            step = scale[row // block_size].astype(np.float64)
            zero = zero_point[row // block_size].astype(np.float64)
            values = np.clip(np.round(work[row] / step) + zero, qtype.qmin, qtype.qmax)
            q[row] = values
            error = (work[row] - (values - zero) * step) / upper[row, row]
            work[row + 1 : last] -= np.outer(upper[row, row + 1 : last], error)
            errors[row - first] = error
        work[last:] -= upper[first:last, last:].T @ errors
    return q, QuantParams(scale, zero_point, qtype, 0, block_size)


def _inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper ``U`` with ``U^T U = H^-1``; more damping until ``H`` is positive definite."""
    damping = DAMPING * np.mean(np.diag(h))
    for _ in range(8):
        try:
            inverse = np.linalg.inv(h)
            return np.linalg.cholesky(inverse).T
        except np.linalg.LinAlgError:
            h = h + damping * np.eye(h.shape[0])
            damping *= 10
    return np.diag(1.0 / np.sqrt(np.diag(h)))
