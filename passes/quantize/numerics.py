"""The arithmetic of quantization: integer types, scales and zero points, int4 packing.

Kept apart from graph editing so that every formula can be checked against hand-computed
values. Conventions follow ONNX QuantizeLinear: ``q = clip(round(x / scale) + zero_point)``
with round-half-to-even, and ``x ~ (q - zero_point) * scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

__all__ = [
    "QuantType",
    "QUANT_TYPES",
    "QuantParams",
    "activation_params",
    "weight_params",
    "blockwise_params",
    "block_params",
    "CLIP_RATIOS",
    "quantize",
    "dequantize",
    "quantization_sqnr",
    "bias_params",
    "PackedInt4",
    "pack_int4",
    "unpack_int4",
]


@dataclass(frozen=True)
class QuantType:
    """An integer type a tensor can be stored in, with its ONNX element type and range."""

    name: str
    onnx_type: int
    qmin: int
    qmax: int
    storage: np.dtype  # the numpy type that holds unpacked values

    @property
    def needs_opset21(self) -> bool:
        """int4 and int16 exist in standard QuantizeLinear/DequantizeLinear from opset 21."""
        return self.name in ("int4", "int16")

    def reduced(self) -> QuantType:
        """One bit less of range: onnxruntime's ``reduce_range`` for CPUs without VNNI, whose
        u8s8 dot products can saturate in 16-bit intermediates."""
        half_min = self.qmin // 2 if self.qmin < 0 else self.qmin
        return QuantType(self.name, self.onnx_type, half_min, self.qmax // 2, self.storage)


QUANT_TYPES: dict[str, QuantType] = {
    "int8": QuantType("int8", onnx.TensorProto.INT8, -128, 127, np.dtype(np.int8)),
    "uint8": QuantType("uint8", onnx.TensorProto.UINT8, 0, 255, np.dtype(np.uint8)),
    "int16": QuantType("int16", onnx.TensorProto.INT16, -32768, 32767, np.dtype(np.int16)),
    "int4": QuantType("int4", onnx.TensorProto.INT4, -8, 7, np.dtype(np.int8)),
}


@dataclass(frozen=True)
class QuantParams:
    """Scale and zero point of one tensor: scalars, or 1-D along ``axis``, or blocks of
    ``block_size`` along ``axis`` (then shaped like the tensor with that axis divided)."""

    scale: np.ndarray
    zero_point: np.ndarray
    qtype: QuantType
    axis: int | None = None
    block_size: int | None = None


def _asymmetric(
    low: np.ndarray, high: np.ndarray, qtype: QuantType
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point mapping ``[min(low, 0), max(high, 0)]`` onto the full integer range;
    zero stays exactly representable (padding and ReLU outputs need a true zero)."""
    low = np.minimum(np.asarray(low, dtype=np.float64), 0.0)
    high = np.maximum(np.asarray(high, dtype=np.float64), 0.0)
    span = high - low
    scale = np.where(span > 0, span / (qtype.qmax - qtype.qmin), 1.0)
    zero_point = np.clip(np.round(qtype.qmin - low / scale), qtype.qmin, qtype.qmax)
    return scale.astype(np.float32), zero_point.astype(qtype.storage)


def activation_params(low: float, high: float, qtype: QuantType) -> QuantParams:
    """Per-tensor asymmetric parameters for a calibrated range."""
    scale, zero_point = _asymmetric(np.float64(low), np.float64(high), qtype)
    return QuantParams(np.asarray(scale), np.asarray(zero_point), qtype)


def _symmetric_scale(absmax: np.ndarray, qtype: QuantType) -> np.ndarray:
    limit = min(-qtype.qmin, qtype.qmax)
    return np.where(absmax > 0, absmax / limit, 1.0).astype(np.float32)


def weight_params(weights: np.ndarray, qtype: QuantType, axis: int | None) -> QuantParams:
    """Parameters for a constant weight, per channel along ``axis`` (or per tensor).

    Signed types are symmetric (zero point 0: integer kernels then skip the zero-point
    correction of the weights); uint8 is asymmetric.
    """
    reduce_axes = tuple(a for a in range(weights.ndim) if a != axis) if axis is not None else None
    values = np.asarray(weights)  # min, max and |x| are exact in the weights' own type
    if qtype.qmin < 0:
        # max(max, -min): no temporary of |values| as large as the weight.
        absmax = (
            np.maximum(values.max(axis=reduce_axes), -values.min(axis=reduce_axes))
            if values.size
            else np.float64(0)
        )
        absmax = np.asarray(absmax, dtype=np.float64)
        scale = _symmetric_scale(np.asarray(absmax), qtype)
        zero_point = np.zeros(scale.shape, dtype=qtype.storage)
    else:
        scale, zero_point = _asymmetric(
            values.min(axis=reduce_axes), values.max(axis=reduce_axes), qtype
        )
    return QuantParams(np.asarray(scale), np.asarray(zero_point), qtype, axis)


def blockwise_params(
    weights: np.ndarray,
    qtype: QuantType,
    axis: int,
    block_size: int,
    *,
    search: bool = False,
    zero_points: bool = False,
) -> QuantParams:
    """Parameters per block of ``block_size`` consecutive values along ``axis`` (the last
    block may be shorter), as opset-21 DequantizeLinear's ``block_size`` reads them.

    Symmetric (signed types without ``zero_points``): every level of the grid is used, as
    onnxruntime's MatMulNBits quantizer does: the value of largest magnitude ``m`` maps to
    ``qmin`` (-8 for int4), so ``scale = m / qmin`` (negative when ``m`` is), and the other
    side reaches ``qmax`` steps. Asymmetric (``zero_points``, and unsigned types always): the
    block's range ``[min(low, 0), max(high, 0)]`` spans all levels, ``scale = span / 15`` for
    int4 and an integer zero point per block places zero on the grid; a block whose values
    lean to one side then keeps all 16 levels for them.

    ``search=True`` picks, per block, the parameters of least squared error among shrunk
    clipping ranges (see :func:`block_params`): a few outliers then stop stretching the step
    of the whole block (data-free MSE-optimal clipping).
    """
    moved, _ = _blocks(weights, axis, block_size)
    shape = (moved.shape[0], *moved.shape[2:])
    scale = np.empty(shape, dtype=np.float32)
    zero_point = np.zeros(shape, dtype=qtype.storage)
    flat_blocks = moved.reshape(moved.shape[0], block_size, -1)
    flat_scale = scale.reshape(moved.shape[0], -1)
    flat_zero = zero_point.reshape(moved.shape[0], -1)
    columns = max(1, _SEARCH_CHUNK // max(flat_blocks.shape[0] * block_size, 1))
    for start in range(0, flat_blocks.shape[2], columns):
        chunk = flat_blocks[:, :, start : start + columns]
        found = block_params(chunk, qtype, search, zero_points)
        flat_scale[:, start : start + columns], flat_zero[:, start : start + columns] = found
    scale = np.moveaxis(scale, 0, axis)
    zero_point = np.moveaxis(zero_point, 0, axis)
    return QuantParams(scale, zero_point, qtype, axis, block_size)


# Values searched at once: small enough that the search's temporaries stay in the CPU's cache.
_SEARCH_CHUNK = 1 << 18
# Clipping ranges the search tries first, as fractions of the block's range; then, per block,
# the best one's neighbours at a quarter of that step.
CLIP_RATIOS = np.linspace(1.0, 0.5, 6, dtype=np.float32)
_REFINE_STEPS = np.array([-0.05, -0.025, 0.025, 0.05], dtype=np.float32)
# Asymmetric ranges shrink from the top (0), from both ends alike (0.5) or from the bottom (1).
_ANCHORS = (0.0, 0.5, 1.0)


def _blocks(weights: np.ndarray, axis: int, block_size: int) -> tuple[np.ndarray, int]:
    """``weights`` (float32) with ``axis`` first, zero-padded to whole blocks and split as
    ``(blocks, block_size, *rest)``; and the unpadded length of that axis."""
    moved = np.moveaxis(np.asarray(weights, dtype=np.float32), axis, 0)
    length = moved.shape[0]
    blocks = -(-length // block_size)
    if blocks * block_size != length:
        padded = np.zeros((blocks * block_size, *moved.shape[1:]), dtype=np.float32)
        padded[:length] = moved
        moved = padded
    return moved.reshape(blocks, block_size, *moved.shape[1:]), length


def block_params(
    blocks: np.ndarray, qtype: QuantType, search: bool, zero_points: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The scale and zero point of each block of ``blocks`` (shaped ``(blocks, block_size,
    columns)``; see :func:`blockwise_params`).

    Without ``search``: the block's whole range (round to nearest). With it, the candidate of
    least squared error among clipping ranges shrunk to :data:`CLIP_RATIOS` of the block's
    (in both orientations for a symmetric grid; from the top, the bottom or both ends for an
    asymmetric one), refined around each block's best ratio; then the scale that fits the
    chosen integers best in the least-squares sense, where it lowers the error further.
    """
    blocks = np.asarray(blocks, dtype=np.float32)
    grid = _AsymmetricGrid(blocks, qtype) if zero_points or qtype.qmin >= 0 else None
    grid = grid or _SymmetricGrid(blocks, qtype)
    one = np.ones(blocks.shape[::2], dtype=np.float32)
    best = grid.candidate(one, np.zeros_like(one))
    if not search:
        return best[0], best[1].astype(qtype.storage)
    best_error = _block_error(blocks, *best, qtype)
    best_ratio, best_form = one, np.zeros_like(one)

    def consider(ratio: np.ndarray, form: np.ndarray) -> None:
        nonlocal best, best_error, best_ratio, best_form
        candidate = grid.candidate(ratio, form)
        error = _block_error(blocks, *candidate, qtype)
        better = error < best_error
        best = tuple(np.where(better, new, old) for new, old in zip(candidate, best, strict=True))
        best_error = np.where(better, error, best_error)
        best_ratio = np.where(better, ratio, best_ratio)
        best_form = np.where(better, form, best_form)

    for ratio, form in grid.candidates():
        consider(one * ratio, np.full_like(one, form))
    for step in _REFINE_STEPS:
        consider(np.clip(best_ratio + step, 0.05, 1.0), best_form)
    fitted = _fitted_scale(blocks, *best, qtype)
    error = _block_error(blocks, fitted, best[1], qtype)
    scale = np.where(error < best_error, fitted, best[0])
    return scale.astype(np.float32), best[1].astype(qtype.storage)


class _SymmetricGrid:
    """Zero point 0; the block's peak magnitude, times a ratio, on ``qmin`` (form 0) or on
    ``qmax`` (form 1)."""

    def __init__(self, blocks: np.ndarray, qtype: QuantType) -> None:
        index = np.abs(blocks).argmax(axis=1)[:, None]
        self.peak = np.take_along_axis(blocks, index, axis=1)[:, 0]  # signed
        self.empty = self.peak == 0
        self.qtype = qtype

    @staticmethod
    def candidates() -> list[tuple[float, float]]:
        """(ratio, form) pairs the search tries besides the whole range on ``qmin``."""
        return [(r, f) for f in (0.0, 1.0) for r in CLIP_RATIOS if (r, f) != (1.0, 0.0)]

    def candidate(self, ratio: np.ndarray, form: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        level = np.where(form > 0, np.float32(self.qtype.qmax), np.float32(self.qtype.qmin))
        scale = np.where(self.empty, np.float32(1.0), self.peak * ratio / level)
        return scale.astype(np.float32), np.zeros_like(scale, dtype=np.float32)


class _AsymmetricGrid:
    """The range ``[min(low, 0), max(high, 0)]`` shrunk to ``ratio`` of its span, keeping its
    bottom (form 0), its middle (0.5) or its top (1) in place; the zero point puts the
    shrunk range's bottom on ``qmin``, rounded to an integer (zero stays on the grid)."""

    def __init__(self, blocks: np.ndarray, qtype: QuantType) -> None:
        self.low = np.minimum(blocks.min(axis=1), 0)
        self.span = np.maximum(blocks.max(axis=1), 0) - self.low
        self.empty = self.span == 0
        self.qtype = qtype

    @staticmethod
    def candidates() -> list[tuple[float, float]]:
        """(ratio, form) pairs the search tries besides the whole range (the same for every
        form)."""
        return [(r, f) for f in _ANCHORS for r in CLIP_RATIOS[1:]]

    def candidate(self, ratio: np.ndarray, form: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        levels = np.float32(self.qtype.qmax - self.qtype.qmin)
        scale = np.where(self.empty, np.float32(1.0), self.span * ratio / levels)
        bottom = self.low + (1 - ratio) * self.span * form
        zero_point = np.round(self.qtype.qmin - bottom / scale)
        zero_point = np.clip(zero_point, self.qtype.qmin, self.qtype.qmax)
        return scale.astype(np.float32), zero_point.astype(np.float32)


def _steps(
    blocks: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qtype: QuantType
) -> tuple[np.ndarray, np.ndarray]:
    """``blocks`` in steps of ``scale`` and their grid points ``q - zero_point``, rounded and
    clipped to the integer range (as float32)."""
    steps = blocks / scale[:, None]
    zero = zero_point[:, None]
    grid = np.round(steps)
    np.maximum(grid, qtype.qmin - zero, out=grid)
    np.minimum(grid, qtype.qmax - zero, out=grid)
    return steps, grid


def _block_error(
    blocks: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qtype: QuantType
) -> np.ndarray:
    """Squared error of each block quantized with ``scale`` and ``zero_point`` (one per block
    and column), computed in units of the step (one division, no multiplication back)."""
    steps, grid = _steps(blocks, scale, zero_point, qtype)
    grid -= steps
    np.square(grid, out=grid)
    return grid.sum(axis=1) * np.square(scale)


def _fitted_scale(
    blocks: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qtype: QuantType
) -> np.ndarray:
    """The least-squares scale for the grid points ``blocks`` round to under ``scale``:
    ``sum(x * g) / sum(g * g)`` per block (``scale`` where every point is zero)."""
    _, grid = _steps(blocks, scale, zero_point, qtype)
    numerator = (blocks * grid).sum(axis=1)
    denominator = np.square(grid).sum(axis=1)
    fitted = numerator / np.where(denominator > 0, denominator, 1)
    return np.where((denominator > 0) & (fitted != 0), fitted, scale).astype(np.float32)


def _expanded(values: np.ndarray, params: QuantParams, shape: tuple[int, ...]) -> np.ndarray:
    """Scale or zero point broadcast against a tensor of ``shape``."""
    if params.axis is None or values.ndim == 0:
        return values
    if params.block_size is not None:
        repeated = np.repeat(values, params.block_size, axis=params.axis)
        return np.take(repeated, np.arange(shape[params.axis]), axis=params.axis)
    view = [1] * len(shape)
    view[params.axis] = -1
    return values.reshape(view)


def quantize(values: np.ndarray, params: QuantParams) -> np.ndarray:
    """``values`` as integers (unpacked, in ``params.qtype.storage``), computed in float32 as
    QuantizeLinear does (float64 for int32 biases, whose range float32 cannot hold exactly).
    Large tensors go in slices along the first axis: the float temporaries of a 30,522-row
    embedding table would otherwise take several times the table."""
    values = np.asarray(values)
    work = np.float64 if params.qtype.qmax > 2**16 else np.float32
    scale = _expanded(params.scale.astype(work), params, values.shape)
    zero_point = _expanded(params.zero_point.astype(work), params, values.shape)
    result = np.empty(values.shape, dtype=params.qtype.storage)
    for rows in _row_slices(values):
        part = np.asarray(np.asarray(values[rows], dtype=work) / _rows_of(scale, rows, values))
        np.round(part, out=part)
        part += _rows_of(zero_point, rows, values)
        np.clip(part, params.qtype.qmin, params.qtype.qmax, out=part)
        result[rows] = part
    return result


def dequantize(q: np.ndarray, params: QuantParams) -> np.ndarray:
    scale = _expanded(params.scale.astype(np.float32), params, q.shape)
    zero_point = _expanded(params.zero_point.astype(np.float32), params, q.shape)
    return (q.astype(np.float32) - zero_point) * scale


def quantization_sqnr(values: np.ndarray, q: np.ndarray, params: QuantParams) -> float:
    """The SQNR in dB of ``q`` (``values`` quantized with ``params``) against ``values``,
    dequantized a slice at a time (inf when exact, -inf for a zero tensor that is not)."""
    scale = _expanded(params.scale.astype(np.float32), params, q.shape)
    zero_point = _expanded(params.zero_point.astype(np.float32), params, q.shape)
    signal = noise = 0.0
    for rows in _row_slices(values):
        part = np.asarray(values[rows], dtype=np.float64).ravel()
        restored = (q[rows].astype(np.float32) - _rows_of(zero_point, rows, q)) * _rows_of(
            scale, rows, q
        )
        error = part - restored.ravel()
        noise, signal = noise + _squared_sum(error), signal + _squared_sum(part)
    if noise == 0:
        return float("inf")
    return 10.0 * float(np.log10(signal / noise)) if signal else float("-inf")


def _squared_sum(values: np.ndarray) -> float:
    """The sum of squares of a 1-D float64 array, without BLAS: a BLAS dot product per slice
    wakes its threads each time, which on a busy machine costs far more than the sum
    (GPT-2-large's 1280 x 5120 weight: 1.5 s per SQNR with dot products, 0.3 s with one BLAS
    thread; half of an int4 quantize's time was spent there)."""
    return float(np.einsum("i,i->", values, values))


_SLICE_ELEMENTS = 1 << 16  # values per slice of a large tensor: 512 kB in float64


def _row_slices(values: np.ndarray) -> list:
    """Index expressions that cover ``values`` in slices of about :data:`_SLICE_ELEMENTS`
    along the first axis (one ``...`` for a small or 0-D tensor)."""
    shape = np.shape(values)
    if not shape or np.size(values) <= _SLICE_ELEMENTS or shape[0] < 2:
        return [Ellipsis]
    step = max(1, _SLICE_ELEMENTS // (np.size(values) // shape[0] or 1))
    return [slice(start, start + step) for start in range(0, shape[0], step)]


def _rows_of(parameter: np.ndarray, rows, values: np.ndarray) -> np.ndarray:
    """The part of a broadcast scale or zero point that meets ``values[rows]``."""
    if rows is Ellipsis or parameter.ndim < np.ndim(values) or parameter.shape[0] == 1:
        return parameter
    return parameter[rows]


def bias_params(input_scale: np.ndarray, weight_scale: np.ndarray) -> QuantParams:
    """int32 bias parameters: scale = input scale x weight scale, so that the bias adds
    directly to the int32 accumulator of the integer kernel."""
    scale = (np.float64(input_scale) * weight_scale.astype(np.float64)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    int32 = QuantType("int32", onnx.TensorProto.INT32, -(2**31), 2**31 - 1, np.dtype(np.int32))
    axis = 0 if scale.ndim else None
    return QuantParams(scale, np.zeros(scale.shape, dtype=np.int32), int32, axis)


def pack_int4(values: np.ndarray) -> bytes:
    """Two 4-bit values per byte, the first in the low nibble (ONNX's INT4 layout); an odd
    count leaves the last high nibble zero."""
    flat = values.astype(np.int8).ravel().astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


@dataclass(frozen=True)
class PackedInt4:
    """int4 integers two to a byte (:func:`pack_int4`'s layout) and their shape: how quantized
    int4 weights are kept between the variants built, in half the memory of one int8 each
    (GPT-2-large: 354 MB instead of 708). ``np.asarray`` gives the integers back."""

    data: np.ndarray
    shape: tuple[int, ...]

    @classmethod
    def of(cls, values: np.ndarray) -> PackedInt4:
        return cls(np.frombuffer(pack_int4(values), np.uint8), tuple(np.shape(values)))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = unpack_int4(self.data, self.shape)
        return values if dtype is None else values.astype(dtype)


def unpack_int4(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The signed values of :func:`pack_int4`'s bytes, in ``shape``."""
    packed = np.frombuffer(data, dtype=np.uint8)
    nibbles = np.empty(packed.size * 2, dtype=np.uint8)
    nibbles[0::2] = packed & 0x0F
    nibbles[1::2] = packed >> 4
    count = int(np.prod(shape)) if shape else 1
    signed = nibbles[:count].astype(np.int8)
    signed[signed > 7] -= 16
    return signed.reshape(shape)
