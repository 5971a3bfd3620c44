"""Inputs to run a model on: its signature, synthesized data, and data read from files.

Validation and calibration need inputs that the model accepts *and* that exercise it the way
real data would. Random floats are fine for images and features, but integer inputs are
usually indices: token ids beyond the embedding table make onnxruntime fail, and a random
"attention mask" of large integers means nothing. So integer inputs get a value range read
from the graph (the Gather they index) or from their name (masks, token types, positions).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxslim.errors import InputDataError, InvalidModelError, ModelLoadError
from onnxslim.model import Model, all_constants, stub_proto

__all__ = [
    "Dim",
    "IdRange",
    "InputSpec",
    "input_specs",
    "model_input_specs",
    "id_ranges",
    "parse_input_shapes",
    "resolve_shapes",
    "synthesize_inputs",
    "conform_feeds",
    "load_inputs",
    "read_npz",
    "split_rows",
    "LABELS_KEY",
    "DATA_LAYOUT",
]

DATA_LAYOUT = (
    "A .npz holds one array per input name (an array named 'labels' is ignored). An array "
    "with one more dimension than its input stacks samples along axis 0; an array of the "
    "input's rank is one batch, whose rows count as samples where axis 0 is a symbolic "
    "batch dim. A folder of .npz files is read in name order; a folder of <input>.npy "
    "files follows the same rules."
)
"""How input data files are laid out, for help texts and docs."""

LABELS_KEY = "labels"
"""The array of a data file that holds the expected classes rather than an input: files such
as ``fixtures/digits_test.npz`` serve calibration, distillation and accuracy alike."""

Dim = int | str | None
"""One dimension of an input: a size, a symbolic name, or None when unnamed and unknown."""

_NUMPY_TYPES: dict[int, np.dtype] = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
    onnx.TensorProto.INT8: np.dtype(np.int8),
    onnx.TensorProto.INT16: np.dtype(np.int16),
    onnx.TensorProto.INT32: np.dtype(np.int32),
    onnx.TensorProto.INT64: np.dtype(np.int64),
    onnx.TensorProto.UINT8: np.dtype(np.uint8),
    onnx.TensorProto.UINT16: np.dtype(np.uint16),
    onnx.TensorProto.UINT32: np.dtype(np.uint32),
    onnx.TensorProto.UINT64: np.dtype(np.uint64),
    onnx.TensorProto.BOOL: np.dtype(np.bool_),
    onnx.TensorProto.STRING: np.dtype(object),
}
# Ops that pass index values through unchanged on their first input.
_INDEX_PRESERVING = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}
_BATCH_NAMES = {"n", "b", "bs", "batch", "batch_size", "batchsize"}
_DEFAULT_BATCH = 1
_DEFAULT_NAMED_DIM = 16
# Tokens a synthesized KV cache (``past_key_values``) holds: short, so that the cache is
# exercised without dominating the work.
_DEFAULT_PAST = 4
_DEFAULT_ID_HIGH = 10


@dataclass(frozen=True)
class IdRange:
    """The integers an input accepts: ``[low, high)``, or positions along the last axis.

    ``positional`` inputs (``position_ids``) hold ``0, 1, ..., L-1`` along their last axis
    (taken modulo ``high``), as a model expects them.
    """

    low: int
    high: int
    positional: bool = False


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, ONNX element type, shape, and for integers the valid range.

    ``shape`` is None when the rank is unknown.
    """

    name: str
    elem_type: int
    shape: tuple[Dim, ...] | None
    id_range: IdRange | None = None

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype onnxruntime takes for this input; None when numpy has none (bf16)."""
        return _NUMPY_TYPES.get(self.elem_type)

    @property
    def type_name(self) -> str:
        return onnx.TensorProto.DataType.Name(self.elem_type).lower()

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


def _as_proto(model: onnx.ModelProto | str | os.PathLike | bytes) -> onnx.ModelProto:
    """The model proto, read without its external data (only the signature is needed)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes | bytearray):
        return onnx.load_from_string(bytes(model))
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    return onnx.load(str(path), load_external_data=False)


def _shape_of(value: onnx.ValueInfoProto) -> tuple[Dim, ...] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value < -1:
            raise InvalidModelError(
                f"input '{value.name}' has a negative dimension ({dim.dim_value}), "
                "which ONNX does not allow"
            )
        if dim.HasField("dim_value") and dim.dim_value >= 0:  # -1: PaddlePaddle's dynamic dim
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:  # unnamed, or -1 as PaddlePaddle's exporter writes a dynamic dim
            dims.append(None)
    return tuple(dims)


def _graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in graph.initializer}
    return [value for value in graph.input if value.name not in initializers]


def input_specs(model: Model | onnx.ModelProto | str | os.PathLike | bytes) -> list[InputSpec]:
    """The inputs a caller must feed (graph inputs that are not initializers), in order.

    A loaded ``Model`` is read without its weights (see :func:`model_input_specs`), so that
    models over 2 GiB, which no single ModelProto can hold, work too."""
    if isinstance(model, Model):
        return model_input_specs(model)
    proto = _as_proto(model)
    ranges = id_ranges(proto)
    return [
        InputSpec(
            name=value.name,
            elem_type=value.type.tensor_type.elem_type,
            shape=_shape_of(value),
            id_range=ranges.get(value.name),
        )
        for value in _graph_inputs(proto.graph)
    ]


def model_input_specs(model: Model) -> list[InputSpec]:
    """:func:`input_specs` of a loaded model, read from its data-less stand-in (whose large
    weights are typed graph inputs, left out here)."""
    constants = {t.name for t in all_constants(model.graph)}
    return [spec for spec in input_specs(stub_proto(model)) if spec.name not in constants]


def _gather_bound(graph: onnx.GraphProto, name: str) -> int | None:
    """The smallest table size among Gathers that ``name`` indexes, following pass-throughs."""
    # A table's size is in its dims: an initializer's, or a graph input's static shape (the
    # stand-ins of large weights are inputs; a fed table limits ids all the same).
    tables = {
        value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in graph.input
        if value.type.tensor_type.HasField("shape")
        and all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim)
    }
    tables.update({t.name: list(t.dims) for t in graph.initializer})
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, tensor in enumerate(node.input):
            consumers.setdefault(tensor, []).append((node, index))

    bounds = []
    frontier, seen = [name], {name}
    while frontier:
        tensor = frontier.pop()
        for node, index in consumers.get(tensor, []):
            if node.op_type == "Gather" and index == 1 and node.input[0] in tables:
                dims = tables[node.input[0]]
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                if dims:
                    bounds.append(dims[axis % len(dims)])
            elif node.op_type in _INDEX_PRESERVING and index == 0:
                for out in node.output:
                    if out not in seen:
                        seen.add(out)
                        frontier.append(out)
    return min(bounds) if bounds else None


def id_ranges(model: onnx.ModelProto | str | os.PathLike | bytes) -> dict[str, IdRange]:
    """A valid value range for every integer input of the model.

    An input that indexes (possibly through Cast/Reshape/Unsqueeze/Squeeze/Flatten) a Gather on
    an initializer of size V along the gathered axis gets ``[0, V)``. By name, masks and token
    types get ``{0, 1}`` and positions ``0..L-1`` along the last axis (all kept below V);
    anything else gets ``[1, 10)``: an integer the graph does not index with is most often a
    size, a count or an axis, and a zero there makes empty tensors or divisions by zero (which
    crash some onnxruntime kernels, e.g. Col2Im in 1.19).
    """
    proto = _as_proto(model)
    ranges = {}
    for value in _graph_inputs(proto.graph):
        dtype = _NUMPY_TYPES.get(value.type.tensor_type.elem_type)
        if dtype is None or not np.issubdtype(dtype, np.integer):
            continue
        lowered = value.name.lower()
        positional = "position" in lowered
        by_name = None
        if "mask" in lowered or "token_type" in lowered:
            by_name = 2
        elif positional:
            by_name = int(np.iinfo(dtype).max)
        bound = _gather_bound(proto.graph, value.name)
        low = 0
        if by_name is None:
            high = _DEFAULT_ID_HIGH if bound is None else bound
            low = 1 if bound is None else 0
        else:
            high = by_name if bound is None else min(by_name, bound)
        ranges[value.name] = IdRange(low, high, positional)
    return ranges


def parse_input_shapes(items: Iterable[str]) -> dict[str, list[int]]:
    """Parse ``["name:1,3,224,224", ...]`` into ``{"name": [1, 3, 224, 224]}``.

    The name ends at the *last* colon, so TensorFlow-style names such as ``input:0`` work.
    """
    shapes: dict[str, list[int]] = {}
    for item in items:
        name, colon, dims_text = item.rpartition(":")
        if not colon or not name:
            raise InputDataError(f"input shape '{item}' is not NAME:D1,D2,... (e.g. x:1,3,224,224)")
        try:
            dims = [int(d) for d in dims_text.split(",")]
        except ValueError:
            raise InputDataError(
                f"input shape '{item}': dims must be integers separated by commas"
            ) from None
        if any(d <= 0 for d in dims):
            raise InputDataError(f"input shape '{item}': dims must be positive")
        if name in shapes:
            raise InputDataError(f"input shape for '{name}' is given twice")
        shapes[name] = dims
    return shapes


def _format_shape(shape: Iterable[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_given_shape(spec: InputSpec, given: list[int]) -> None:
    if spec.shape is None:
        return
    if len(given) != len(spec.shape):
        raise InputDataError(
            f"input '{spec.name}': the given shape {_format_shape(given)} has rank "
            f"{len(given)}, the model expects rank {len(spec.shape)} {_format_shape(spec.shape)}"
        )
    for axis, (dim, size) in enumerate(zip(spec.shape, given, strict=True)):
        if isinstance(dim, int) and dim != size:
            raise InputDataError(
                f"input '{spec.name}': the given shape {_format_shape(given)} has {size} at "
                f"axis {axis}, the model fixes it to {dim} {_format_shape(spec.shape)}"
            )


def _default_size(dim_name: str) -> int:
    lowered = dim_name.lower()
    return _DEFAULT_BATCH if lowered in _BATCH_NAMES or "batch" in lowered else _DEFAULT_NAMED_DIM


def resolve_shapes(
    specs: Iterable[InputSpec], shapes: Mapping[str, list[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """A concrete shape for every input.

    Given shapes are checked against the model's rank and static dims, and the symbolic dim
    names they fill in apply to every input: a dim name has one value across inputs (BERT's
    ``input_ids`` and ``attention_mask`` are both ``[batch, sequence]``). Other named dims are
    1 for batch-like names (``batch``, ``N``, ``b``, ``batch_size``) and 16 otherwise; unnamed
    unknown dims are 1.
    """
    specs = list(specs)
    shapes = dict(shapes or {})
    names = [spec.name for spec in specs]
    unknown = [name for name in shapes if name not in names]
    if unknown:
        raise InputDataError(
            f"a shape is given for '{unknown[0]}', which is not an input of the model "
            f"(inputs: {', '.join(names)})"
        )

    bound: dict[str, int] = {}
    for spec in specs:
        if spec.name in shapes:
            _check_given_shape(spec, shapes[spec.name])
            for dim, size in zip(spec.shape or (), shapes[spec.name], strict=False):
                if isinstance(dim, str):
                    bound.setdefault(dim, size)

    _bind_decoder_dims(specs, shapes, bound)
    resolved = {}
    for spec in specs:
        if spec.name in shapes:
            resolved[spec.name] = tuple(shapes[spec.name])
            continue
        if spec.shape is None:
            raise InputDataError(
                f"input '{spec.name}' has an unknown rank: give its shape "
                f"(e.g. --input-shape {spec.name}:1,3,224,224)"
            )
        dims = []
        for dim in spec.shape:
            if isinstance(dim, str):
                dims.append(_named_size(dim, bound))
            else:
                dims.append(1 if dim is None else dim)
        resolved[spec.name] = tuple(dims)
    return resolved


def _named_size(dim: str, bound: dict[str, int]) -> int:
    """The size of a symbolic dim: bound already, a sum of others
    (``past_sequence_length + sequence_length``, as optimum names a mask's length), or its
    default."""
    if dim not in bound and "+" in dim:
        parts = [part.strip() for part in dim.split("+")]
        if all(parts):
            return bound.setdefault(
                dim, sum(int(p) if p.isdigit() else _named_size(p, bound) for p in parts)
            )
    return bound.setdefault(dim, _default_size(dim))


def is_cache_input(spec: InputSpec) -> bool:
    """A decoder's KV cache input (``past_key_values.0.key``, ``past_key``, ``cache.3``): a
    float tensor of rank 3 or more named after the past or a cache."""
    lowered = spec.name.lower()
    named = "past" in lowered or ("cache" in lowered and "position" not in lowered)
    dtype = spec.dtype
    floating = dtype is not None and np.issubdtype(dtype, np.floating)
    return named and floating and spec.rank is not None and spec.rank >= 3


def _is_mask(spec: InputSpec) -> bool:
    return "mask" in spec.name.lower() and spec.rank == 2


def _bind_decoder_dims(
    specs: list[InputSpec], shapes: Mapping[str, list[int]], bound: dict[str, int]
) -> None:
    """Sizes for a decoder with a KV cache: the cache's length is short
    (:data:`_DEFAULT_PAST`), and an attention mask spans the cached and the new tokens, as a
    decoder requires (dynamo exports give the mask's length a name of its own)."""
    caches = [spec for spec in specs if is_cache_input(spec)]
    if not caches:
        return
    given = [shapes[spec.name][-2] for spec in caches if spec.name in shapes]
    past = given[0] if given else _DEFAULT_PAST
    for spec in caches:
        named = [dim for dim in spec.shape[1:] if isinstance(dim, str)]  # axis 0: the batch
        if spec.name not in shapes and named:
            bound.setdefault(named[0], past)
    tokens = next(
        (
            spec
            for spec in specs
            if spec.rank == 2
            and not _is_mask(spec)
            and spec.dtype is not None
            and np.issubdtype(spec.dtype, np.integer)
            and isinstance(spec.shape[-1], str)
        ),
        None,
    )
    if tokens is None:
        return
    length = (
        shapes[tokens.name][-1] if tokens.name in shapes else _named_size(tokens.shape[-1], bound)
    )
    for spec in specs:
        last = spec.shape[-1] if _is_mask(spec) and spec.name not in shapes else None
        if isinstance(last, str) and last != tokens.shape[-1]:
            bound.setdefault(last, past + length)


def _past_length(specs: list[InputSpec], resolved: Mapping[str, tuple[int, ...]]) -> int:
    """Tokens in the synthesized KV cache: an attention mask's length beyond the tokens'
    (positions continue after the cache), else 0."""
    masks = [resolved[spec.name][-1] for spec in specs if _is_mask(spec)]
    positions = [
        resolved[spec.name][-1]
        for spec in specs
        if spec.id_range is not None and spec.id_range.positional and resolved[spec.name]
    ]
    if not masks or not positions or not any(is_cache_input(spec) for spec in specs):
        return 0
    return max(0, masks[0] - positions[0])


def _sample(
    spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, past: int = 0
) -> np.ndarray:
    dtype = spec.dtype
    if dtype is None or dtype == np.dtype(object):
        raise InputDataError(
            f"input '{spec.name}': cannot synthesize {spec.type_name} data; "
            "give input data instead (--inputs)"
        )
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    id_range = spec.id_range or IdRange(1, _DEFAULT_ID_HIGH)  # see id_ranges
    high = min(id_range.high, int(np.iinfo(dtype).max) + 1)
    if id_range.positional:
        positions = (past + np.arange(shape[-1])) % high if shape else 0
        return np.broadcast_to(positions, shape).astype(dtype)
    if _is_mask(spec) and id_range.high == 2 and shape[-1] > 0:
        # Padding at the end of each row, never all of it: holes, or a row that attends to
        # nothing, are no input a model meets (a decoder's softmax turns them into NaN).
        kept = rng.integers(max(1, (shape[-1] + 1) // 2), shape[-1] + 1, size=shape[0])
        return (np.arange(shape[-1]) < kept[:, None]).astype(dtype)
    return rng.integers(id_range.low, high, size=shape, dtype=dtype)


def synthesize_inputs(
    specs: Iterable[InputSpec],
    shapes: Mapping[str, list[int]] | None = None,
    seed: int = 0,
    sample_index: int = 0,
) -> dict[str, np.ndarray]:
    """Random inputs for one sample, the same for the same ``(seed, sample_index)``.

    Floats are standard normal, booleans fair coins, integers uniform in their IdRange.
    Shapes come from :func:`resolve_shapes`. Each input draws from its own stream (seeded
    also by its name), so adding an input does not change the others.
    """
    specs = list(specs)
    resolved = resolve_shapes(specs, shapes)
    past = _past_length(specs, resolved)
    feeds = {}
    for spec in specs:
        rng = np.random.default_rng([seed, sample_index, zlib.crc32(spec.name.encode())])
        feeds[spec.name] = _sample(spec, resolved[spec.name], rng, past)
    return feeds


def _check_names(keys: Iterable[str], specs: list[InputSpec], source: str) -> None:
    names = [spec.name for spec in specs]
    keys = list(keys)
    missing = [name for name in names if name not in keys]
    if missing:
        raise InputDataError(
            f"{source}: no data for input '{missing[0]}' (the model's inputs: {', '.join(names)})"
        )
    extra = [key for key in keys if key not in names]
    if extra:
        raise InputDataError(
            f"{source}: '{extra[0]}' is not an input of the model "
            f"(the model's inputs: {', '.join(names)})"
        )


def _conform(spec: InputSpec, array: np.ndarray, source: str) -> np.ndarray:
    """``array`` cast to the input's dtype, after checking that it fits the input."""
    array = np.asarray(array)
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise InputDataError(
                f"{source}: input '{spec.name}' expects rank {len(spec.shape)} "
                f"{_format_shape(spec.shape)}, got shape {_format_shape(array.shape)}"
            )
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and array.shape[axis] != dim:
                raise InputDataError(
                    f"{source}: input '{spec.name}' expects {dim} at axis {axis} "
                    f"{_format_shape(spec.shape)}, got shape {_format_shape(array.shape)}"
                )
    target = spec.dtype
    if target is None:
        raise InputDataError(
            f"{source}: input '{spec.name}' is {spec.type_name}, which numpy cannot hold"
        )
    if array.dtype == target:
        return array
    if not np.can_cast(array.dtype, target, casting="same_kind"):
        raise InputDataError(
            f"{source}: input '{spec.name}' expects {target} data, got {array.dtype} "
            "(which cannot be converted without losing values)"
        )
    if np.issubdtype(target, np.integer) and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise InputDataError(
                f"{source}: input '{spec.name}' expects {target} data, got {array.dtype} "
                f"values outside [{info.min}, {info.max}]"
            )
    return array.astype(target)


def conform_feeds(
    feeds: Mapping[str, np.ndarray], specs: Iterable[InputSpec], source: str = "inputs"
) -> dict[str, np.ndarray]:
    """Check one sample against the model's inputs and cast it to their dtypes.

    Names must match exactly, ranks and static dims must agree, and dtypes may only change
    within their kind (float64 -> float32 is fine, float -> int64 is an InputDataError).
    """
    specs = list(specs)
    _check_names(feeds, specs, source)
    return {spec.name: _conform(spec, feeds[spec.name], source) for spec in specs}


def _split_samples(
    arrays: Mapping[str, np.ndarray], specs: list[InputSpec], source: str
) -> list[dict[str, np.ndarray]]:
    """One sample per index of axis 0 for arrays one rank above their input, else one sample.

    An array with exactly its input's rank is shared by every sample, unless its input fixes
    axis 0 (to 1, say) and the array stacks several of those: then each is a sample. A
    ``labels`` array that is not an input is left out.
    """
    if LABELS_KEY not in {spec.name for spec in specs}:
        arrays = {key: value for key, value in arrays.items() if key != LABELS_KEY}
    _check_names(arrays, specs, source)
    arrays = dict(arrays)
    counts: dict[str, int] = {}
    for spec in specs:
        array = arrays[spec.name]
        if spec.rank is None:
            continue
        if array.ndim == spec.rank:
            stacked = _stacked_along_a_fixed_axis(spec, array)
            if stacked is None:
                continue
            arrays[spec.name] = stacked
        elif array.ndim != spec.rank + 1:
            raise InputDataError(
                f"{source}: input '{spec.name}' expects rank {spec.rank} "
                f"{_format_shape(spec.shape)} (or {spec.rank + 1} for several samples), "
                f"got shape {_format_shape(array.shape)}"
            )
        counts[spec.name] = arrays[spec.name].shape[0]
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"'{name}' has {n}" for name, n in counts.items())
        raise InputDataError(f"{source}: inputs hold different numbers of samples ({detail})")
    total = next(iter(counts.values()), 1)
    return [
        conform_feeds(
            {
                spec.name: arrays[spec.name][index] if spec.name in counts else arrays[spec.name]
                for spec in specs
            },
            specs,
            source,
        )
        for index in range(total)
    ]


def _stacked_along_a_fixed_axis(spec: InputSpec, array: np.ndarray) -> np.ndarray | None:
    """``array`` as samples along a new axis 0 when it stacks several of what its input
    takes: 64 images for an input fixed at ``[1, 3, 224, 224]``; else None."""
    first = spec.shape[0] if spec.shape else None
    if not isinstance(first, int) or first < 1 or array.shape[0] == first:
        return None
    if array.shape[0] % first or array.shape[1:] != tuple(
        d if isinstance(d, int) else s for d, s in zip(spec.shape[1:], array.shape[1:], strict=True)
    ):
        return None  # conform_feeds names the mismatch
    return array.reshape(array.shape[0] // first, first, *array.shape[1:])


def split_rows(
    samples: Sequence[Mapping[str, np.ndarray]], specs: Iterable[InputSpec]
) -> Sequence[Mapping[str, np.ndarray]]:
    """``samples`` with each batch cut into its rows, for inputs whose axis 0 is a symbolic
    batch dim: a 64-image batch counts as 64 samples (for calibration and its progress bar).
    Samples of other models are returned as they are."""
    specs = list(specs)
    batched_inputs = all(spec.shape and not isinstance(spec.shape[0], int) for spec in specs)
    if not specs or not batched_inputs:
        return samples
    rows = []
    for sample in samples:
        sizes = {sample[spec.name].shape[0] for spec in specs}
        if len(sizes) != 1:
            return samples  # inputs disagree on the batch: not one batch of rows
        rows.extend(
            {name: array[i : i + 1] for name, array in sample.items()} for i in range(sizes.pop())
        )
    return rows


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a ``.npz``, or InputDataError (one line) when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{path}: cannot read as .npz ({exc})") from exc


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{path}: cannot read as .npy ({exc})") from exc


def load_inputs(path: str | os.PathLike, specs: Iterable[InputSpec]) -> list[dict[str, np.ndarray]]:
    """Samples read from ``path``, checked against ``specs`` and cast to the inputs' dtypes.

    ``path`` is a ``.npz`` whose keys are input names, a folder of ``.npz`` files (read in name
    order), or a folder of ``<input>.npy`` files; see :data:`DATA_LAYOUT`.
    """
    specs = list(specs)
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix != ".npz":
            raise InputDataError(f"{path}: expected a .npz file or a folder of .npz/.npy files")
        return _split_samples(read_npz(path), specs, str(path))

    archives = sorted(path.glob("*.npz"))
    arrays = sorted(path.glob("*.npy"))
    if archives and arrays:
        raise InputDataError(
            f"{path}: holds both .npz and .npy files; keep one kind (a folder of samples as "
            ".npz, or one sample as <input>.npy)"
        )
    if archives:
        return [
            sample
            for archive in archives
            for sample in _split_samples(read_npz(archive), specs, str(archive))
        ]
    if arrays:
        return _split_samples({file.stem: _read_npy(file) for file in arrays}, specs, str(path))
    raise InputDataError(f"{path}: no .npz or .npy files in this folder")
