"""Model: an onnx-graphsurgeon Graph plus the model-level facts that gs does not carry.

Loading and saving live here because they share one concern: tensor bytes are big, so they
are never copied when they need not be.

* Loading keeps external data on disk (``load_external_data=False``); a constant's values are
  read from its file only when a pass asks for them.
* Saving streams: the model is written without its top-level initializers, then each
  initializer is appended as its own ``graph { initializer { ... } }`` record. Protobuf merges
  repeated occurrences of a message field, so the file parses as one ordinary model, while peak
  memory stays at one tensor instead of a second copy of every weight.
* Every write goes to a temporary file beside the destination and is renamed into place, so a
  failed save leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError, Message
from onnx import TensorProto, external_data_helper, numpy_helper
from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx
from onnx_graphsurgeon.importers.onnx_importer import get_numpy_type
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxslim.errors import ModelLoadError, ModelSaveError
from onnxslim.staging import StagedWrite

# gs reports what it skips or repairs as warnings on stdout; onnxslim handles those cases
# itself (see _restore_type_attributes) and reports through its own channels.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR

__all__ = [
    "ModelSource",
    "DerivedValues",
    "copy_graph",
    "is_graph_attribute",
    "Model",
    "load",
    "load_skeleton",
    "model_files",
    "save",
    "write_staged",
    "refuse_overwriting_sources",
    "to_proto",
    "copied_bytes",
    "stub_proto",
    "read_constant",
    "read_constant_bytes",
    "external_data_file",
    "external_ref",
    "read_external",
    "expected_nbytes",
    "constant_nbytes",
    "iter_graphs",
    "all_constants",
    "file_bytes",
    "gs_dtype",
    "PROTOBUF_LIMIT",
]

# A serialized protobuf message cannot exceed 2 GiB; above this a model needs external data.
PROTOBUF_LIMIT = 2**31 - 1
# Leave room for the non-tensor parts of the model when deciding whether data fits inline.
_INLINE_MARGIN = 64 * 2**20
# Tensors at least this large go to the external data file (onnx's own default).
DEFAULT_SIZE_THRESHOLD = 1024
# Large external tensors start on this boundary so that runtimes can map them directly.
_ALIGNMENT = 64 * 1024
_ALIGN_ABOVE = 1024 * 1024
_COPY_CHUNK = 16 * 2**20

# Protobuf wire tags: ModelProto.graph is field 7, GraphProto.initializer is field 5 (both
# length-delimited, wire type 2).
_MODEL_GRAPH_FIELD = 7
_GRAPH_INITIALIZER_FIELD = 5
_TAG_MODEL_GRAPH = bytes([(_MODEL_GRAPH_FIELD << 3) | 2])
_TAG_GRAPH_INITIALIZER = bytes([(_GRAPH_INITIALIZER_FIELD << 3) | 2])
# Value sizes of the fixed-width wire types (1: 64-bit, 5: 32-bit).
_FIXED_SIZES = {1: 8, 5: 4}


# ----------------------------------------------------------------------------- external data
#
# A model names its external data files itself, in each tensor's ``location``: a model from
# elsewhere could name ``../../.ssh/id_rsa``. Every read of external data therefore goes
# through external_data_file(), which refuses anything that resolves outside the model's
# folder; otherwise saving would copy that file into the output as if it were a weight.

_OUTSIDE = "points outside the model's folder"
# Bits per element of the element types whose size is fixed (those absent from this onnx
# release are skipped); sub-byte types are packed.
_ELEMENT_BITS = {
    getattr(TensorProto, name): bits
    for bits, names in (
        (2, ("UINT2", "INT2")),
        (4, ("UINT4", "INT4", "FLOAT4E2M1")),
        (8, ("UINT8", "INT8", "BOOL", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2")),
        (8, ("FLOAT8E5M2FNUZ", "FLOAT8E8M0")),
        (16, ("UINT16", "INT16", "FLOAT16", "BFLOAT16")),
        (32, ("FLOAT", "INT32", "UINT32")),
        (64, ("DOUBLE", "INT64", "UINT64", "COMPLEX64")),
        (128, ("COMPLEX128",)),
    )
    for name in names
    if hasattr(TensorProto, name)
}


@dataclass(frozen=True)
class ExternalRef:
    """Where an external tensor's bytes are: a range of a regular file in the model's folder."""

    location: str
    path: Path
    offset: int
    length: int


def external_data_file(base_dir: Path, location: str) -> Path:
    """The file that external data ``location`` names, resolved (symlinks included).

    A ModelLoadError when the path is outside ``base_dir``, the model's folder. Only the
    resolved path is compared, before anything is asked about the file itself, so an outside
    path gets the same message whether or not something exists there.
    """
    if not location or "\0" in location:
        raise ModelLoadError(f"external data location '{location}' is not a file name")
    folder = base_dir.resolve()
    try:
        path = (folder / location).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop: where it leads is not for us to say
        raise ModelLoadError(f"external data '{location}' {_OUTSIDE}") from exc
    if not path.is_relative_to(folder):
        raise ModelLoadError(f"external data '{location}' {_OUTSIDE}")
    return path


def external_ref(tensor: onnx.TensorProto, base_dir: Path | None) -> ExternalRef:
    """Check where an external tensor's bytes are, without reading them: inside the model's
    folder, a regular file, and a range of it that holds exactly what the tensor's type and
    shape need. Raises ModelLoadError with one line otherwise."""
    location, offset, length = _external_entries(tensor)
    if base_dir is None:
        raise ModelLoadError(
            "the model refers to external data but was given without a folder: "
            "load it from its file path instead"
        )
    path = external_data_file(base_dir, location)
    try:
        status = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(
            f"external data file '{location}' of tensor '{tensor.name}' is missing "
            f"(looked in {base_dir})"
        ) from None
    except OSError as exc:
        raise ModelLoadError(
            f"external data file '{location}' of tensor '{tensor.name}' cannot be read "
            f"({exc.strerror})"
        ) from None
    if not stat.S_ISREG(status.st_mode):
        raise ModelLoadError(
            f"external data '{location}' of tensor '{tensor.name}' is not a regular file"
        )
    expected = expected_nbytes(tensor)
    if length is None:
        length = expected if expected is not None else max(status.st_size - offset, 0)
    if expected is not None and length != expected:
        raise ModelLoadError(
            f"external data of tensor '{tensor.name}' is {length} bytes long; its type and "
            f"shape need {expected}"
        )
    if offset + length > status.st_size:
        raise ModelLoadError(
            f"external data of tensor '{tensor.name}' runs past the end of '{location}' "
            f"(bytes {offset} to {offset + length}, the file has {status.st_size})"
        )
    return ExternalRef(location, path, offset, length)


def _external_entries(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError:
        offset, length = -1, None
    if offset < 0 or (length is not None and length < 0):
        raise ModelLoadError(
            f"external data of tensor '{tensor.name}' has a malformed offset or length"
        )
    return entries.get("location", ""), offset, length


def expected_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of a tensor's raw data as its type and shape declare them; None for strings and
    types of no fixed size."""
    bits = _ELEMENT_BITS.get(tensor.data_type)
    if bits is None:
        return None
    return (math.prod(tensor.dims) * bits + 7) // 8


def read_external(
    tensor: onnx.TensorProto, base_dir: Path | None, limit: int | None = None
) -> bytes:
    """An external tensor's bytes (at most ``limit`` of them), read after external_ref's
    checks."""
    ref = external_ref(tensor, base_dir)
    wanted = ref.length if limit is None else min(limit, ref.length)
    with _open_external(ref) as handle:
        handle.seek(ref.offset)
        data = handle.read(wanted)
    if len(data) != wanted:
        raise ModelLoadError(f"external data file '{ref.location}' is shorter than recorded")
    return data


def _external_chunks(
    tensor: onnx.TensorProto, base_dir: Path | None
) -> tuple[Iterator[bytes], int]:
    """An external tensor's bytes in blocks (for copying without holding them), and their
    count."""
    ref = external_ref(tensor, base_dir)

    def chunks() -> Iterator[bytes]:
        with _open_external(ref) as handle:
            handle.seek(ref.offset)
            left = ref.length
            while left > 0:
                block = handle.read(min(_COPY_CHUNK, left))
                if not block:
                    raise ModelLoadError(
                        f"external data file '{ref.location}' is shorter than recorded"
                    )
                left -= len(block)
                yield block

    return chunks(), ref.length


def _open_external(ref: ExternalRef):
    """The checked file, opened without following a symlink put in its place since."""
    try:
        fd = os.open(ref.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelLoadError(f"external data '{ref.location}' {_OUTSIDE}") from None
        raise ModelLoadError(
            f"external data file '{ref.location}' cannot be read ({exc.strerror})"
        ) from None
    return os.fdopen(fd, "rb")


def _inlined(tensor: onnx.TensorProto, base_dir: Path | None) -> onnx.TensorProto:
    """A copy of an external tensor with its bytes read in."""
    inline = onnx.TensorProto()
    inline.CopyFrom(tensor)
    inline.raw_data = read_external(tensor, base_dir)
    inline.ClearField("data_location")
    del inline.external_data[:]
    return inline


class ExternalValues(LazyValues):
    """LazyValues for a tensor whose bytes live in an external data file.

    gs's own LazyValues resolves external data relative to the working directory and follows
    any path; this one reads from the model's folder, through :func:`read_external`.
    """

    def __init__(self, tensor: onnx.TensorProto, base_dir: Path) -> None:
        super().__init__(tensor)
        self.base_dir = base_dir

    def load(self) -> np.ndarray:
        return np.array(numpy_helper.to_array(_inlined(self.tensor, self.base_dir)))


class DerivedValues(LazyValues):
    """LazyValues computed from another constant's values each time they are read: a pass
    that converts every weight (float16, say) gives each converted constant these instead of
    an array, so that the converted copy of the weights is never held at once. The writers
    ask for one tensor's bytes at a time, while writing it.

    ``header`` is a data-less TensorProto (name, type, shape); ``raw`` returns an array whose
    bytes are the tensor's raw data, in that type and shape; ``source`` is the values object
    it reads (kept so that the files it reads stay protected from being overwritten).
    """

    def __init__(
        self, header: onnx.TensorProto, raw: Callable[[], np.ndarray], source: object
    ) -> None:
        super().__init__(header)
        self.raw = raw
        self.source = source

    def load(self) -> np.ndarray:
        numpy_type = get_numpy_type(self.tensor.data_type)
        if numpy_type is not None and _raw_is_native(np.dtype(numpy_type)):
            return self.raw().view(numpy_type)
        return numpy_helper.to_array(self.proto())

    def raw_bytes(self) -> memoryview:
        """The tensor's raw data (computed now), as the writers stream it."""
        return byte_view(np.ascontiguousarray(self.raw()))

    def proto(self) -> onnx.TensorProto:
        """The whole TensorProto, data included (computed now)."""
        whole = onnx.TensorProto()
        whole.CopyFrom(self.tensor)
        whole.raw_data = self.raw_bytes().tobytes()
        return whole


@dataclass
class Model:
    """A graph to transform, with what must survive the round trip around it.

    ``graph`` is what passes rewrite. ``shell`` keeps the model-level fields that gs drops
    (IR version, producer, domain, model version, doc string, metadata_props, training info).
    ``base_dir`` is where external data of not-yet-loaded constants lives.
    """

    graph: gs.Graph
    shell: onnx.ModelProto
    base_dir: Path | None = None
    source: Path | None = None
    top_level_initializers: frozenset[str] = field(default_factory=frozenset)
    non_tensor_types: dict[str, onnx.TypeProto] = field(default_factory=dict)
    # Shapes of intermediate tensors are written only if the input carried them: passes use
    # them in memory, but a model should not grow by annotations nobody asked for.
    keep_value_info: bool = True

    @property
    def opset(self) -> int:
        return int(self.graph.opset)

    @property
    def ir_version(self) -> int:
        return int(self.shell.ir_version)

    def node_count(self) -> int:
        """Nodes in the main graph and in every subgraph."""
        return sum(len(g.nodes) for g in iter_graphs(self.graph))

    def initializer_bytes(self) -> int:
        """Bytes of constant data (each constant counted once, subgraphs included)."""
        return sum(constant_nbytes(t) for t in all_constants(self.graph))

    def to_proto(self) -> onnx.ModelProto:
        """The whole model as an in-memory ModelProto (see :func:`to_proto`)."""
        return to_proto(self)

    def save(self, path: str | os.PathLike, **options) -> Path:
        """Write the model atomically (see :func:`save`)."""
        return save(self, path, **options)

    def source_files(self) -> list[Path]:
        """The model file it was loaded from and the external data files it still reads (the
        model file itself holds the bytes of its large initializers until they change)."""
        source = [self.source] if self.source else []
        return source + sorted(self.external_files() - set(source))

    def external_files(self) -> set[Path]:
        """External data files that constants of this model still read from."""
        files = set()
        for tensor in all_constants(self.graph):
            values = tensor._values
            if isinstance(values, DerivedValues):
                values = values.source
            if isinstance(values, ExternalValues):
                location = _external_entries(values.tensor)[0]
                files.add(external_data_file(values.base_dir, location))
        return files


def is_graph_attribute(value: object) -> bool:
    """Whether a node attribute's value is a subgraph (If's branches, Loop's body) or a list
    of them (GRAPHS attributes)."""
    return isinstance(value, gs.Graph) or (
        isinstance(value, list | tuple) and bool(value) and isinstance(value[0], gs.Graph)
    )


def iter_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """The graph itself, then every nested subgraph (If/Loop/Scan bodies), depth first.

    Passes call this constantly; walking node attributes directly is several times cheaper
    than gs's generator-per-node ``Graph.subgraphs``.
    """
    yield graph
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from iter_graphs(value)
            elif isinstance(value, list) and value and isinstance(value[0], gs.Graph):
                for subgraph in value:
                    yield from iter_graphs(subgraph)


def copy_graph(graph: gs.Graph) -> gs.Graph:
    """``graph.copy()`` (weights shared, not copied), keeping what gs's copy drops: whether a
    value is a tensor, a sequence or another kind (``Variable.type``), and that a subgraph
    reads the outer graph's tensor itself. Passes that rewrite a copy and swap it in would
    otherwise turn sequence inputs into tensors, and write an outer initializer once per
    subgraph that reads it (gs copies it per subgraph; onnx.checker refuses the duplicates)."""
    copy = graph.copy()
    pairs = list(zip(iter_graphs(graph), iter_graphs(copy), strict=True))
    canonical: dict[int, gs.Tensor] = {}  # original tensor -> its copy in the outermost graph
    for original, copied in pairs:  # outer graphs first
        copies = copied.tensors()
        for name, tensor in original.tensors().items():
            twin = copies.get(name)
            if twin is None:
                continue
            if hasattr(tensor, "type"):
                twin.type = tensor.type
            canonical.setdefault(id(tensor), twin)
    for original, copied in pairs[1:]:
        for source, target in zip(original.nodes, copied.nodes, strict=True):
            for index, tensor in enumerate(source.inputs):
                shared = canonical.get(id(tensor))
                if shared is not None and target.inputs[index] is not shared:
                    target.inputs[index] = shared
    return copy


def file_bytes(files: Iterable[str | os.PathLike]) -> int | None:
    """Total size on disk of those of ``files`` that exist; None if none does."""
    sizes = [Path(f).stat().st_size for f in files if Path(f).exists()]
    return sum(sizes) if sizes else None


def all_constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    """Every constant of the graph and its subgraphs, each once."""
    seen: set[int] = set()
    for g in iter_graphs(graph):
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Constant) and id(tensor) not in seen:
                seen.add(id(tensor))
                yield tensor


def constant_nbytes(tensor: gs.Constant) -> int:
    """Size of a constant's data without loading it."""
    values = tensor._values
    if isinstance(values, LazyValues):
        return int(values.nbytes)
    return int(np.asarray(values).nbytes)


def read_constant(tensor: gs.Constant) -> np.ndarray:
    """A constant's values, without caching them on the tensor; read-only (the tensor's own
    array, or a view of the bytes of its proto).

    ``Constant.values`` replaces lazy values by a numpy array for good; passes that only look
    (hashing, statistics, quantizing) use this so that a multi-GB model is not pulled into
    memory.
    """
    values = tensor._values
    if type(values) is LazyValues:
        # LazyValues.load copies the bytes protobuf hands out: twice the tensor at once.
        return numpy_helper.to_array(values.tensor)
    if isinstance(values, LazyValues):
        return values.load()
    return np.asarray(values)


def read_constant_bytes(tensor: gs.Constant, limit: int | None = None) -> bytes | memoryview:
    """The little-endian bytes of a constant's data, at most ``limit`` of them.

    For comparing and hashing weights: an external tensor's prefix is read from its file
    without reading the rest, and nothing is cached on the tensor.
    """
    values = tensor._values
    if isinstance(values, ExternalValues):
        return read_external(values.tensor, values.base_dir, limit)
    if isinstance(values, DerivedValues):
        data = values.raw_bytes()
        return data if limit is None else data[:limit]
    if (
        isinstance(values, LazyValues)
        and not isinstance(values, SparseValues)
        and values.tensor.HasField("raw_data")
    ):
        data = memoryview(values.tensor.raw_data)
    else:
        data = byte_view(np.ascontiguousarray(read_constant(tensor)))
    return data if limit is None else data[:limit]


# ----------------------------------------------------------------------------------- loading


ModelSource = str | os.PathLike | bytes | onnx.ModelProto | Model
"""What :func:`load` reads: a path, serialized bytes, a ModelProto, or a Model as it is."""


def load(source: ModelSource) -> Model:
    """Load a model from a path, serialized bytes or a ModelProto (never modified).

    External data stays on disk until a pass reads it. Raises ModelLoadError with a
    one-line explanation for a missing file, bytes that are not ONNX, or missing external data.
    """
    if isinstance(source, Model):
        return source
    if isinstance(source, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        return _from_proto(proto, base_dir=None, source=None)
    if isinstance(source, bytes | bytearray):
        return _from_proto(_parse(bytes(source), "<bytes>"), base_dir=None, source=None)

    path = _model_file(source)
    proto = _parse_file(path)
    return _from_proto(
        proto, base_dir=path.parent.resolve(), source=path.resolve(), top_level_checked=True
    )


def load_skeleton(source: str | os.PathLike | bytes) -> onnx.ModelProto:
    """A model file (or serialized bytes) as a ModelProto whose top-level initializers keep
    their names, types and shapes but not their bytes, after the checks :func:`load` makes
    of its external data.

    For handing a path to onnxruntime, which reads the file itself: the model's signature,
    and the assurance that its external data stays inside its folder, at the memory of one
    tensor.
    """
    if isinstance(source, bytes | bytearray):
        proto, base_dir = _parse(bytes(source), "<bytes>"), None
    else:
        path = _model_file(source)
        proto, base_dir = _parse_file(path, keep_data=False), path.parent.resolve()
    _check_text(proto)
    for tensor in _all_tensor_protos(proto):
        if _is_external(tensor):
            external_ref(tensor, base_dir)
    _check_data(proto, top_level_checked=base_dir is not None)
    return proto


def model_files(path: str | os.PathLike) -> list[Path]:
    """A model file and the external data files it refers to: what it weighs on disk, and
    what to remove with it."""
    proto = load_skeleton(path)
    folder = Path(path).parent.resolve()
    data = {
        external_data_file(folder, _external_entries(tensor)[0])
        for tensor in _all_tensor_protos(proto)
        if _is_external(tensor)
    }
    return [Path(path), *sorted(data)]


def _model_file(source: str | os.PathLike) -> Path:
    """The path of a model file that exists and is a regular file (not a folder, a device or
    a pipe, which cannot be parsed record by record)."""
    path = Path(source)
    try:
        status = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(status.st_mode):
        raise ModelLoadError(f"{path}: is a directory, not an ONNX model file")
    if not stat.S_ISREG(status.st_mode):
        raise ModelLoadError(f"{path}: is not a regular file")
    return path


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{label}: file is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise _not_protobuf(label, exc) from exc
    return _checked_is_model(proto, label)


def _not_protobuf(label: str, exc: DecodeError) -> ModelLoadError:
    return ModelLoadError(
        f"{label}: not a valid ONNX protobuf (truncated or another format): {exc}"
    )


def _checked_is_model(proto: onnx.ModelProto, label: str) -> onnx.ModelProto:
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise ModelLoadError(f"{label}: parses as protobuf but is not an ONNX model (no graph)")
    return proto


def _parse_file(path: Path, keep_data: bool = True) -> onnx.ModelProto:
    """Parse a model file holding at most one initializer's bytes beside the parsed model
    (none of them without ``keep_data``).

    Parsing the whole file at once would hold its bytes and the parsed model together: twice
    the model. Instead the records of the model and of its graph are read one by one; each
    top-level initializer is parsed straight into the result, and the other records are
    gathered and merged in at the end. Protobuf merges concatenated records, so the result is
    what a whole-file parse gives.
    """
    try:
        return _checked_is_model(_parse_records(path, keep_data), str(path))
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from exc


def _parse_records(path: Path, keep_data: bool) -> onnx.ModelProto:
    # The bytes of a large initializer are not read: it becomes a reference to its range of
    # this file, read like external data when a pass asks (unless the file is reached through
    # a symlink, which the external data checks would take for a way out of its folder).
    in_place = path.parent.resolve() / path.name == path.resolve()
    with open(path, "rb") as handle:
        reader = _RecordReader(handle)
        if reader.end == 0:
            raise ModelLoadError(f"{path}: file is empty, not an ONNX model")
        proto = onnx.ModelProto()
        model_rest, graph_rest = bytearray(), bytearray()
        try:
            for number, head, length in reader.records(reader.end):
                if number != _MODEL_GRAPH_FIELD or length is None:
                    model_rest += head + reader.read(length or 0)
                    continue
                proto.graph.SetInParent()
                for inner, inner_head, inner_length in reader.records(handle.tell() + length):
                    if inner == _GRAPH_INITIALIZER_FIELD and inner_length is not None:
                        tensor = proto.graph.initializer.add()
                        if inner_length >= _READ_LATER:
                            _parse_large_tensor(
                                reader, inner_length, tensor, path, keep_data, in_place
                            )
                            continue
                        record = reader.read(inner_length)
                        tensor.ParseFromString(record)
                        check_tensor_data(tensor, _raw_data_length(record))
                        if not keep_data:
                            _drop_data(tensor)
                    else:
                        graph_rest += inner_head + reader.read(inner_length or 0)
            proto.MergeFromString(bytes(model_rest))
            proto.graph.MergeFromString(bytes(graph_rest))
        except DecodeError as exc:
            raise _not_protobuf(str(path), exc) from exc
    return proto


# Initializer records from this size on are parsed without their raw bytes (see above).
_READ_LATER = 1 << 20


def _parse_large_tensor(
    reader: _RecordReader,
    length: int,
    tensor: onnx.TensorProto,
    path: Path,
    keep_data: bool,
    in_place: bool,
) -> None:
    """Parse a TensorProto record of ``length`` bytes at the reader's position, leaving its
    raw_data in the file: the tensor refers to it as external data in its own file."""
    end = reader.handle.tell() + length
    fields, raw = bytearray(), None
    for number, head, size in reader.records(end):
        if size is None:
            fields += head
        elif number == _TENSOR_RAW_DATA_FIELD:
            raw = (reader.handle.tell(), size)
            reader.skip(size)
        else:
            fields += head + reader.read(size)
    tensor.ParseFromString(bytes(fields))
    check_tensor_data(tensor, None if raw is None else raw[1])
    if raw is None or not keep_data:
        return
    offset, size = raw
    if not in_place:
        reader.handle.seek(offset)
        tensor.raw_data = reader.read(size)
        reader.handle.seek(end)
        return
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", path.name), ("offset", str(offset)), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


_DATA_FIELDS = (
    "raw_data",
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


def _drop_data(tensor: onnx.TensorProto) -> None:
    """Clear an inline tensor's values, keeping what describes it (external ones keep their
    reference)."""
    for name in _DATA_FIELDS:
        tensor.ClearField(name)


class _RecordReader:
    """Reads a protobuf message from a file one record (tag and value) at a time."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.end = handle.seek(0, os.SEEK_END)
        handle.seek(0)

    def read(self, length: int) -> bytes:
        data = self.handle.read(length)
        if len(data) != length:
            raise DecodeError("truncated message")
        return data

    def skip(self, length: int) -> None:
        self.handle.seek(length, os.SEEK_CUR)

    def varint(self) -> int:
        value = shift = 0
        while shift < 64:
            byte = self.read(1)[0]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise DecodeError("varint longer than 10 bytes")

    def records(self, end: int) -> Iterator[tuple[int, bytes, int | None]]:
        """(field number, record bytes up to its payload, payload length) for records up to end.

        Fixed-size and varint values come whole in the record bytes, with length None; the
        caller reads a length-delimited payload before asking for the next record.
        """
        while self.handle.tell() < end:
            key = self.varint()
            number, wire_type = key >> 3, key & 7
            head = _varint(key)
            if number == 0:
                raise DecodeError("field number 0")
            if wire_type == 0:
                yield number, head + _varint(self.varint()), None
            elif wire_type in _FIXED_SIZES:
                yield number, head + self.read(_FIXED_SIZES[wire_type]), None
            elif wire_type == 2:
                length = self.varint()
                if length > end - self.handle.tell():
                    raise DecodeError("truncated message")
                yield number, head + _varint(length), length
            else:
                raise DecodeError(f"unsupported wire type {wire_type}")
        if self.handle.tell() != end:
            raise DecodeError("a record runs past the end of its message")


# ------------------------------------------------------------------------- data integrity
#
# onnx.checker sees only what stub_proto keeps (large weights become typed inputs), and a weight
# whose bytes do not match its shape makes passes crash and onnxruntime refuse the output. So
# loading checks every tensor's data against its type and shape, from lengths alone: the raw
# bytes of a file's initializers are never copied for it.

_TENSOR_RAW_DATA_FIELD = 9
_KNOWN_TYPES = frozenset(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
_TYPED_FIELD = {
    TensorProto.FLOAT: "float_data",
    TensorProto.COMPLEX64: "float_data",
    TensorProto.INT64: "int64_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.COMPLEX128: "double_data",
    TensorProto.UINT32: "uint64_data",
    TensorProto.UINT64: "uint64_data",
    TensorProto.STRING: "string_data",
}
_COMPLEX = frozenset({TensorProto.COMPLEX64, TensorProto.COMPLEX128})


def _raw_data_length(serialized: bytes) -> int | None:
    """The length of a serialized TensorProto's raw_data (None if it has none), found by
    walking its fields rather than copying the bytes out."""
    reader = _RecordReader(io.BytesIO(serialized))
    length = None
    for number, _, size in reader.records(reader.end):
        if size is not None:
            if number == _TENSOR_RAW_DATA_FIELD:
                length = size
            reader.skip(size)
    return length


def check_tensor_data(tensor: onnx.TensorProto, raw_length: int | None | bool = True) -> None:
    """ModelLoadError unless a tensor has a known element type, sane dims, and (when inline)
    exactly the data they declare. ``raw_length`` is the length of its raw_data when the
    caller knows it without copying (None: no raw_data); True asks the tensor."""
    name = tensor.name
    if tensor.data_type not in _KNOWN_TYPES:
        raise ModelLoadError(f"tensor '{name}' has no valid element type ({tensor.data_type})")
    if any(d < 0 for d in tensor.dims):
        raise ModelLoadError(f"tensor '{name}' has a negative dimension {list(tensor.dims)}")
    if _is_external(tensor):
        return
    if raw_length is True:
        raw_length = len(tensor.raw_data) if tensor.HasField("raw_data") else None
    count = math.prod(tensor.dims)
    type_name = TensorProto.DataType.Name(tensor.data_type).lower()
    declared = f"tensor '{name}' declares {list(tensor.dims)} {type_name}"
    if raw_length is not None:
        expected = expected_nbytes(tensor)
        if tensor.data_type == TensorProto.STRING:
            raise ModelLoadError(f"{declared} but holds raw bytes, which strings cannot be")
        if expected is not None and raw_length != expected:
            raise ModelLoadError(f"{declared} ({expected} bytes) but holds {raw_length} bytes")
        return
    if _ELEMENT_BITS.get(tensor.data_type, 8) < 8:
        return  # packed sub-byte values: the count of int32 words depends on the packing
    values = len(getattr(tensor, _TYPED_FIELD.get(tensor.data_type, "int32_data")))
    expected_values = count * (2 if tensor.data_type in _COMPLEX else 1)
    if values != expected_values:
        holds = f"{values} values" if values else "no data"
        raise ModelLoadError(f"{declared} ({expected_values} values) but holds {holds}")


def _check_data(proto: onnx.ModelProto, top_level_checked: bool) -> None:
    """Every tensor of the model checked (top-level initializers already were, while a file was
    parsed), and sparse tensors' indices within their dims."""
    for tensor in _all_tensor_protos(proto, top_level=not top_level_checked):
        check_tensor_data(tensor)
    for sparse in _sparse_tensor_protos(proto):
        try:
            onnx.checker.check_sparse_tensor(sparse)
        except onnx.checker.ValidationError as exc:
            raise ModelLoadError(
                f"sparse tensor '{sparse.values.name}': {_first_line(exc)}"
            ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _from_proto(
    proto: onnx.ModelProto,
    base_dir: Path | None,
    source: Path | None,
    top_level_checked: bool = False,
) -> Model:
    _check_text(proto)
    try:
        return _import(proto, base_dir, source, top_level_checked)
    except UnicodeDecodeError as exc:  # a string field that _names does not read
        raise ModelLoadError(
            f"the model holds text that is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc


def _check_text(proto: onnx.ModelProto) -> None:
    """ModelLoadError if a name in the model is not UTF-8, as ONNX requires (protobuf hands
    such a string over as bytes, which every tool then trips on)."""
    for text in _names(proto):
        if not isinstance(text, str):
            shown = text.decode("utf-8", "backslashreplace")
            raise ModelLoadError(f"the model holds a name that is not UTF-8 text: '{shown}'")


def _names(proto: onnx.ModelProto) -> Iterator[str | bytes]:
    yield from (proto.producer_name, proto.domain)
    for graph in _graphs_and_functions(proto):
        yield graph.name
        if isinstance(graph, onnx.GraphProto):
            for value in (*graph.input, *graph.output, *graph.value_info):
                yield value.name
            yield from (t.name for t in graph.initializer)
            yield from (t.values.name for t in graph.sparse_initializer)
        else:
            yield from (*graph.input, *graph.output, graph.domain)
        for node in graph.node:
            yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
            yield from (attr.name for attr in node.attribute)


def _import(
    proto: onnx.ModelProto, base_dir: Path | None, source: Path | None, top_level_checked: bool
) -> Model:
    external = [t for t in _all_tensor_protos(proto) if _is_external(t)]
    for tensor in external:
        external_ref(tensor, base_dir)
    # Sparse tensors are read whole by every tool (gs included): read their parts in now.
    for sparse in _sparse_tensor_protos(proto):
        for part in (sparse.values, sparse.indices):
            if _is_external(part):
                part.CopyFrom(_inlined(part, base_dir))
    _check_data(proto, top_level_checked)
    top_level = frozenset(t.name for t in proto.graph.initializer)
    try:
        graph = gs.import_onnx(proto)
    except Exception as exc:  # gs raises bare exceptions on malformed graphs
        raise ModelLoadError(f"cannot read the graph: {exc}") from exc
    _restore_type_attributes(proto.graph, graph)
    _read_sparse_values_exactly(graph)
    if _GS_LOSSY_TYPES & {v.type.tensor_type.elem_type for v in _values_of(proto.graph)}:
        _restore_element_types(proto.graph, graph)
    if external:
        _attach_base_dir(graph, base_dir)

    return Model(
        graph=graph,
        shell=_without_graph(proto),
        non_tensor_types=_non_tensor_types(proto.graph),
        keep_value_info=any(True for _ in _intermediate_values(proto.graph)),
        base_dir=base_dir,
        source=source,
        top_level_initializers=top_level,
    )


def _intermediate_values(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    """value_info entries of a graph and all its subgraphs."""
    yield from graph.value_info
    for sub in _subgraph_protos(graph):
        yield from sub.value_info


def _values_of(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    """Typed values of a graph and of all its subgraphs."""
    yield from graph.input
    yield from graph.output
    yield from graph.value_info
    for sub in _subgraph_protos(graph):
        yield from sub.input
        yield from sub.output
        yield from sub.value_info


def _is_gs_representable(value_type: onnx.TypeProto) -> bool:
    """gs keeps tensor, sparse tensor and sequence-of-tensor types; it cannot write others."""
    kind = value_type.WhichOneof("value")
    if kind == "sequence_type":
        return value_type.sequence_type.elem_type.WhichOneof("value") == "tensor_type"
    return kind in ("tensor_type", "sparse_tensor_type", None)


def _non_tensor_types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    """Optional, map and opaque types (and sequences of them), to be written back by name."""
    return {
        value.name: value.type
        for value in _values_of(graph)
        if not _is_gs_representable(value.type)
    }


def _restore_type_attributes(proto_graph: onnx.GraphProto, graph: gs.Graph) -> None:
    """Put back the TypeProto attributes (e.g. ``Optional(type=...)``) that gs skips on import.

    gs imports nodes in file order, so the two node lists pair up; on export gs hands
    attribute values it does not know to onnx.helper.make_attribute, which writes them.
    """
    for proto_node, node in zip(proto_graph.node, graph.nodes, strict=True):
        for attr in proto_node.attribute:
            if attr.type == onnx.AttributeProto.TYPE_PROTO:
                node.attrs[attr.name] = attr.tp
            elif attr.type == onnx.AttributeProto.TYPE_PROTOS:
                node.attrs[attr.name] = list(attr.tps)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _restore_type_attributes(attr.g, node.attrs[attr.name])


def gs_dtype(elem_type: int) -> np.dtype | int:
    """The dtype a gs tensor of ONNX element type ``elem_type`` carries: gs's numpy type, or
    the type number itself where gs would write that numpy type back as another type (with
    onnx < 1.18, INT4 and UINT4 become int8 and uint8). gs writes a type number as it is."""
    dtype = get_numpy_type(elem_type)
    if dtype is None or dtype_to_onnx(dtype) != elem_type:
        return elem_type
    return dtype


_GS_LOSSY_TYPES = frozenset(
    t
    for t in onnx.helper.get_all_tensor_dtypes()
    if get_numpy_type(t) is not None and isinstance(gs_dtype(t), int)
)


def _restore_element_types(proto_graph: onnx.GraphProto, graph: gs.Graph) -> None:
    """Give tensors of the types in _GS_LOSSY_TYPES their ONNX type back (see gs_dtype)."""
    tensors = graph.tensors()
    for value in (*proto_graph.input, *proto_graph.output, *proto_graph.value_info):
        tensor = tensors.get(value.name)
        elem_type = value.type.tensor_type.elem_type
        if isinstance(tensor, gs.Variable) and elem_type in _GS_LOSSY_TYPES:
            tensor.dtype = elem_type
    for proto_node, node in zip(proto_graph.node, graph.nodes, strict=True):
        for attr in proto_node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _restore_element_types(attr.g, node.attrs[attr.name])
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub_proto, sub in zip(attr.graphs, node.attrs[attr.name], strict=True):
                    _restore_element_types(sub_proto, sub)


def _without_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model-level fields only: graph, functions and opsets are rebuilt from the gs graph."""
    shell = onnx.ModelProto()
    for descriptor, value in proto.ListFields():
        if descriptor.name in ("graph", "functions", "opset_import"):
            continue
        if isinstance(value, Message):
            getattr(shell, descriptor.name).CopyFrom(value)
        elif not isinstance(value, str | bytes | int | float):  # a repeated field
            getattr(shell, descriptor.name).extend(value)
        else:
            setattr(shell, descriptor.name, value)
    return shell


class _ExactSparseValues(SparseValues):
    """Sparse initializer values densified in their own element type.

    gs's SparseValues ignores ``raw_data`` and always builds float64, which would change a
    weight's type the moment a pass reads it.
    """

    def load(self) -> np.ndarray:
        sparse = self.tensor
        values = numpy_helper.to_array(sparse.values)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        dense = np.zeros(tuple(sparse.dims), values.dtype)
        if indices.ndim == 1:  # linear indices
            dense.reshape(-1)[indices] = values
        else:  # [NNZ, rank] coordinates
            dense[tuple(indices.T)] = values
        return dense


def _read_sparse_values_exactly(graph: gs.Graph) -> None:
    for tensor in all_constants(graph):
        if type(tensor._values) is SparseValues:
            tensor._values = _ExactSparseValues(tensor._values.tensor)


def _attach_base_dir(graph: gs.Graph, base_dir: Path) -> None:
    """Make every external constant (initializers and node attributes, in subgraphs and
    local functions too) read its bytes from the model's folder, through read_external."""
    for g in (*iter_graphs(graph), *(sub for f in graph.functions for sub in iter_graphs(f))):
        constants = [t for t in g.tensors().values() if isinstance(t, gs.Constant)]
        for node in g.nodes:
            for value in node.attrs.values():
                values = value if isinstance(value, list) else [value]
                constants.extend(v for v in values if isinstance(v, gs.Constant))
        for tensor in constants:
            values = tensor._values
            if type(values) is LazyValues and _is_external(values.tensor):
                tensor._values = ExternalValues(values.tensor, base_dir)


# ----------------------------------------------------------------------------------- export


@dataclass
class _Skeleton:
    """A model without its top-level initializers, and the constants that belong there."""

    proto: onnx.ModelProto
    initializers: list[gs.Constant]


def _constants_by_graph(graph: gs.Graph) -> tuple[dict[int, gs.Constant], dict[int, int]]:
    """Every constant input of every node, and in how many graphs each is read."""
    constants: dict[int, gs.Constant] = {}
    graph_count: dict[int, int] = {}
    for g in iter_graphs(graph):
        here = {
            id(t): t
            for node in g.nodes
            for t in node.inputs
            if isinstance(t, gs.Constant) and not isinstance(t._values, SparseValues)
        }
        here.update({id(t): t for t in g.outputs if isinstance(t, gs.Constant)})
        for key, tensor in here.items():
            constants[key] = tensor
            graph_count[key] = graph_count.get(key, 0) + 1
    return constants, graph_count


def _export_skeleton(model: Model) -> _Skeleton:
    """Export the graph with gs, keeping initializer data out of the exported proto.

    Top-level initializers (and constants that gs would otherwise copy into every subgraph
    that reads them) are swapped for data-less stand-ins during the export, then restored;
    the caller decides how their data is written.
    """
    graph = model.graph
    top_ids = {
        id(t)
        for t in graph.tensors().values()
        if isinstance(t, gs.Constant) and not isinstance(t._values, SparseValues)
    }
    constants, graph_count = _constants_by_graph(graph)
    hoisted = [
        t
        for key, t in constants.items()
        if key not in top_ids and (graph_count[key] > 1 or t.name in model.top_level_initializers)
    ]
    ordered = [t for t in graph.tensors().values() if id(t) in top_ids] + hoisted
    # gs copies every constant a subgraph reads into that subgraph (as a data-less stand-in
    # here); all of these are written once at the top level, where every subgraph sees them.
    top_level_names = {t.name for t in ordered}

    saved_values = [(t, t._values) for t in ordered]
    # gs cannot write optional or map types: export those values untyped, then restore them.
    untyped = [
        (t, t.dtype)
        for g in iter_graphs(graph)
        for t in g.tensors().values()
        if isinstance(t, gs.Variable) and t.name in model.non_tensor_types
    ]
    try:
        for tensor, _ in saved_values:
            tensor._values = LazyValues(_data_less(tensor))
        for tensor, _ in untyped:
            tensor.dtype = None
        proto = gs.export_onnx(graph, do_type_check=False)
    finally:
        for tensor, values in saved_values:
            tensor._values = values
        for tensor, dtype in untyped:
            tensor.dtype = dtype
    if untyped:
        for value in _values_of(proto.graph):
            if value.name in model.non_tensor_types:
                value.type.CopyFrom(model.non_tensor_types[value.name])
    if not model.keep_value_info:
        for graph_proto in (proto.graph, *_subgraph_protos(proto.graph)):
            del graph_proto.value_info[:]

    del proto.graph.initializer[:]
    if top_level_names:
        for sub in _subgraph_protos(proto.graph):
            keep = [t for t in sub.initializer if t.name not in top_level_names]
            if len(keep) != len(sub.initializer):
                del sub.initializer[:]
                sub.initializer.extend(keep)

    _restore_model_fields(proto, model.shell)
    if proto.ir_version < 4:  # before IR 4, every initializer must also be a graph input
        declared = {i.name for i in proto.graph.input}
        for tensor in ordered:
            if tensor.name not in declared:
                stub = _data_less(tensor)
                info = onnx.helper.make_tensor_value_info(tensor.name, stub.data_type, stub.dims)
                proto.graph.input.append(info)
    return _Skeleton(proto=proto, initializers=ordered)


def _restore_model_fields(proto: onnx.ModelProto, shell: onnx.ModelProto) -> None:
    opsets = list(proto.opset_import)
    functions = list(proto.functions)
    graph = proto.graph
    rebuilt = onnx.ModelProto()
    rebuilt.CopyFrom(shell)
    if not rebuilt.ir_version:
        rebuilt.ir_version = proto.ir_version
    rebuilt.graph.CopyFrom(graph)
    rebuilt.opset_import.extend(opsets)
    rebuilt.functions.extend(functions)
    proto.Clear()
    proto.CopyFrom(rebuilt)


def _subgraph_protos(graph: onnx.GraphProto | onnx.FunctionProto) -> Iterator[onnx.GraphProto]:
    """Every subgraph (If/Loop/Scan body) of a graph's or function's nodes, at any depth."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
                yield from _subgraph_protos(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield g
                    yield from _subgraph_protos(g)


def _graphs_and_functions(
    proto: onnx.ModelProto,
) -> Iterator[onnx.GraphProto | onnx.FunctionProto]:
    yield proto.graph
    yield from _subgraph_protos(proto.graph)
    for function in proto.functions:
        yield function
        yield from _subgraph_protos(function)


def _sparse_tensor_protos(proto: onnx.ModelProto) -> Iterator[onnx.SparseTensorProto]:
    """Sparse initializers and sparse node attributes, everywhere in the model."""
    for graph in _graphs_and_functions(proto):
        if isinstance(graph, onnx.GraphProto):
            yield from graph.sparse_initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor
                yield from attr.sparse_tensors


def _all_tensor_protos(
    proto: onnx.ModelProto, top_level: bool = True
) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers (the main graph's unless ``top_level`` is
    False), node attributes and the parts of sparse tensors, in the graph, its subgraphs and
    local functions."""
    for graph in _graphs_and_functions(proto):
        if isinstance(graph, onnx.GraphProto) and (top_level or graph is not proto.graph):
            yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
    for sparse in _sparse_tensor_protos(proto):
        yield sparse.values
        yield sparse.indices


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def _data_less(tensor: gs.Constant) -> onnx.TensorProto:
    """A TensorProto with the name, type and shape of a constant but none of its data."""
    values = tensor._values
    stub = onnx.TensorProto()
    stub.name = tensor.name
    if isinstance(values, LazyValues):
        stub.data_type = values.tensor.data_type
        stub.dims.extend(values.tensor.dims)
    else:
        array = np.asarray(values)
        stub.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        stub.dims.extend(array.shape)
    return stub


def _tensor_proto(tensor: gs.Constant, base_dir: Path | None) -> onnx.TensorProto:
    """A self-contained TensorProto for a constant (external data read in)."""
    proto = _source_proto(tensor)
    if external_data_helper.uses_external_data(proto):
        return _inlined(proto, _source_dir(tensor, base_dir))
    return proto


def to_proto(model: Model, *, keep_external: bool = False) -> onnx.ModelProto:
    """The whole model as one in-memory ModelProto, external data read in.

    Meant for handing a model to other Python tools; for files use :func:`save`, which does
    not hold a second copy of the weights. With ``keep_external``, top-level constants still
    in an external file under ``model.base_dir`` stay references to it (relative to that
    folder), so that a runtime told the folder reads them from disk: that proto stays small
    however large the weights are.
    """
    skeleton = _export_skeleton(model)
    proto = skeleton.proto
    _inline_nested_external(proto, model.base_dir)
    proto.graph.initializer.extend(
        _source_proto(t)
        if keep_external and _is_external_in(t, model.base_dir)
        else _tensor_proto(t, model.base_dir)
        for t in skeleton.initializers
    )
    return proto


def copied_bytes(model: Model, *, keep_external: bool = False) -> int:
    """Bytes of constant data that :func:`to_proto` would copy into the proto (external data
    that stays a reference is not copied): what choosing between a proto and a file for
    handing a model to a runtime turns on."""
    return sum(
        constant_nbytes(t)
        for t in all_constants(model.graph)
        if not (keep_external and _is_external_in(t, model.base_dir))
    )


def _is_external_in(constant: gs.Constant, base_dir: Path | None) -> bool:
    """Whether a constant's bytes are in an external file under ``base_dir``, checked again
    (external_ref) since a runtime is about to read them itself."""
    values = constant._values
    return (
        base_dir is not None
        and isinstance(values, ExternalValues)
        and values.base_dir == base_dir
        and _is_external(values.tensor)
        and external_ref(values.tensor, base_dir) is not None
    )


def stub_proto(model: Model, keep_below: int = DEFAULT_SIZE_THRESHOLD) -> onnx.ModelProto:
    """The model with its large top-level initializers turned into typed graph inputs, and
    its large Constant nodes into ConstantOfShape nodes of the same type and shape.

    Enough for shape inference and onnx.checker, which read small constants such as Reshape
    targets but never the bytes of large weights, at a fraction of the memory: this is how
    models over 2 GiB are inferred and checked. Data propagation sees only the small ones,
    where shapes live; given a large 1-D constant it costs some 200 bytes per element.
    """
    skeleton = _export_skeleton(model)
    proto = skeleton.proto
    if model.opset >= _CONSTANT_OF_SHAPE_OPSET:
        for graph in (proto.graph, *_subgraph_protos(proto.graph)):
            _stub_constant_nodes(graph, keep_below)
    input_names = {value.name for value in proto.graph.input}
    for tensor in skeleton.initializers:
        if constant_nbytes(tensor) < keep_below:
            proto.graph.initializer.append(_tensor_proto(tensor, model.base_dir))
        elif tensor.name not in input_names:
            stub = _data_less(tensor)
            proto.graph.input.append(
                onnx.helper.make_tensor_value_info(stub.name, stub.data_type, list(stub.dims))
            )
    _inline_nested_external(proto, model.base_dir)
    # Strict shape inference types a sparse initializer as a sparse tensor, which no op reads.
    for sparse in proto.graph.sparse_initializer:
        proto.graph.input.append(
            onnx.helper.make_tensor_value_info(
                sparse.values.name, sparse.values.data_type, list(sparse.dims)
            )
        )
    del proto.graph.sparse_initializer[:]
    return proto


_CONSTANT_OF_SHAPE_OPSET = 9
# Element types ConstantOfShape has produced since it came in (opset 9).
_CONSTANT_OF_SHAPE_TYPES = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.DOUBLE,
        TensorProto.FLOAT16,
        TensorProto.BOOL,
        *(TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64),
        *(TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64),
    }
)


def _stub_constant_nodes(graph: onnx.GraphProto, keep_below: int) -> None:
    """Swap each Constant node whose ``value`` is ``keep_below`` bytes or more for a
    ConstantOfShape with the same output, type and shape (in place, node order kept)."""
    taken = {value.name for value in graph.initializer}
    for node in graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if (
            value is None
            or value.data_type not in _CONSTANT_OF_SHAPE_TYPES
            or (expected_nbytes(value) or 0) < keep_below
        ):
            continue
        shape_name = _unused_name(f"{node.output[0]}_shape", taken)
        graph.initializer.append(
            numpy_helper.from_array(np.array(list(value.dims), np.int64), shape_name)
        )
        fill = onnx.TensorProto(name="", data_type=value.data_type, dims=[1])
        fill.raw_data = b"\0" * max(1, (_ELEMENT_BITS[value.data_type] + 7) // 8)
        node.op_type = "ConstantOfShape"
        node.ClearField("domain")
        del node.input[:], node.attribute[:]
        node.input.append(shape_name)
        node.attribute.append(onnx.helper.make_attribute("value", fill))


def _unused_name(base: str, taken: set[str]) -> str:
    name, suffix = base, 0
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    taken.add(name)
    return name


def _nested_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Tensors other than top-level initializers: subgraph initializers, node attributes."""
    yield from external_data_helper._get_attribute_tensors(proto)
    for sub in _subgraph_protos(proto.graph):
        yield from sub.initializer
    for function in proto.functions:
        for node in function.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t


def _inline_nested_external(proto: onnx.ModelProto, base_dir: Path | None) -> None:
    for tensor in _nested_tensors(proto):
        if external_data_helper.uses_external_data(tensor):
            tensor.CopyFrom(_inlined(tensor, base_dir))


def _source_dir(constant: gs.Constant, default: Path | None) -> Path | None:
    values = constant._values
    return values.base_dir if isinstance(values, ExternalValues) else default


# ----------------------------------------------------------------------------------- saving


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _initializer_record(tensor_bytes: bytes) -> bytes:
    """Header of a ``graph { initializer { <tensor_bytes> } }`` record (data follows)."""
    inner_header = _TAG_GRAPH_INITIALIZER + _varint(len(tensor_bytes))
    return _TAG_MODEL_GRAPH + _varint(len(inner_header) + len(tensor_bytes)) + inner_header


class _DataFile:
    """The external data file being written, with aligned appends."""

    def __init__(self, handle, location: str) -> None:
        self.handle = handle
        self.location = location
        self.offset = 0

    def append(self, chunks: Iterator[bytes], length: int) -> onnx.TensorProto:
        if length >= _ALIGN_ABOVE and self.offset % _ALIGNMENT:
            pad = _ALIGNMENT - self.offset % _ALIGNMENT
            self.handle.write(b"\0" * pad)
            self.offset += pad
        start = self.offset
        for chunk in chunks:
            self.handle.write(chunk)
            self.offset += len(chunk)
        reference = onnx.TensorProto()
        reference.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (
            ("location", self.location),
            ("offset", str(start)),
            ("length", str(length)),
        ):
            entry = reference.external_data.add()
            entry.key, entry.value = key, value
        return reference


def _raw_bytes(tensor: onnx.TensorProto) -> bytes | None:
    """The raw little-endian bytes of an inline tensor, or None for strings."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.to_array(tensor).tobytes()


def _externalize(
    source: onnx.TensorProto,
    source_dir: Path | None,
    data_file: _DataFile,
    size_threshold: int,
    nbytes: int,
) -> onnx.TensorProto:
    """The tensor as it should be written: a reference into the new data file, or inline."""
    if source.data_type == onnx.TensorProto.STRING or nbytes < size_threshold:
        if external_data_helper.uses_external_data(source):
            return _inlined(source, source_dir)
        return source
    if external_data_helper.uses_external_data(source):
        chunks, length = _external_chunks(source, source_dir)
    else:
        raw = _raw_bytes(source)
        chunks, length = iter((raw,)), len(raw)
    reference = data_file.append(chunks, length)
    result = onnx.TensorProto()
    result.name = source.name
    result.data_type = source.data_type
    result.dims.extend(source.dims)
    result.doc_string = source.doc_string
    result.data_location = reference.data_location
    result.external_data.extend(reference.external_data)
    return result


def _estimated_size(skeleton: _Skeleton) -> int:
    return skeleton.proto.ByteSize() + sum(constant_nbytes(t) for t in skeleton.initializers)


def refuse_overwriting_sources(model: Model, targets: list[Path]) -> None:
    """Raise ModelSaveError if writing ``targets`` would overwrite a file the model came from.

    Inputs are never modified: not the model file, and not the external data that constants
    of the model still read lazily.
    """
    protected = set(model.source_files())
    for target in targets:
        if Path(target).resolve() in protected:
            raise ModelSaveError(
                f"{target}: this would overwrite the input model or its external data; "
                "choose another output path"
            )


def save(
    model: Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    size_threshold: int = DEFAULT_SIZE_THRESHOLD,
) -> Path:
    """Write ``model`` to ``path`` atomically; return the path.

    ``external_data=None`` chooses for you: external data when the model would not fit the
    2 GiB protobuf limit, inline otherwise. The data file is ``<file name>.<token>.data``
    beside the model, a new name for every write, so that a reader sees the old model and
    data or the new ones, never a mix (see :mod:`onnxslim.staging`); the data files of earlier
    writes to ``path`` are removed. Files the model still reads from are never overwritten.
    """
    destination = Path(path)
    refuse_overwriting_sources(model, [destination])
    with StagedWrite(destination, protected=model.source_files()) as staged:
        write_staged(model, staged, external_data=external_data, size_threshold=size_threshold)
        staged.commit()
    return destination


def write_staged(
    model: Model,
    staged: StagedWrite,
    *,
    external_data: bool | None = None,
    size_threshold: int = DEFAULT_SIZE_THRESHOLD,
) -> None:
    """Write ``model`` (and its external data) into ``staged``, not yet committed: for a
    caller that checks the written model before it replaces the destination."""
    skeleton = _export_skeleton(model)
    if external_data is None:
        external_data = _estimated_size(skeleton) > PROTOBUF_LIMIT - _INLINE_MARGIN
    try:
        with contextlib.ExitStack() as files:
            data_file = None
            if external_data:
                data_handle = files.enter_context(open(staged.data_path, "wb"))
                data_file = _DataFile(data_handle, staged.data_name)
            handle = files.enter_context(open(staged.model_path, "wb"))
            _write_model_file(handle, skeleton, model, data_file, size_threshold)
    except OSError as exc:
        raise ModelSaveError(f"{staged.destination}: cannot write ({exc.strerror or exc})") from exc


def _write_model_file(
    handle,
    skeleton: _Skeleton,
    model: Model,
    data_file: _DataFile | None,
    size_threshold: int,
) -> None:
    proto = skeleton.proto
    if data_file is None:
        _inline_nested_external(proto, model.base_dir)
        _write_inline(handle, proto, skeleton.initializers, model.base_dir)
        return
    for nested in _nested_tensors(proto):
        nbytes = _nested_nbytes(nested)
        nested.CopyFrom(_externalize(nested, model.base_dir, data_file, size_threshold, nbytes))

    handle.write(proto.SerializeToString())
    for constant in skeleton.initializers:
        tensor = _externalize(
            _source_proto(constant),
            _source_dir(constant, model.base_dir),
            data_file,
            size_threshold,
            constant_nbytes(constant),
        )
        payload = tensor.SerializeToString()
        handle.write(_initializer_record(payload))
        handle.write(payload)


def _write_inline(
    handle, proto: onnx.ModelProto, initializers: list[gs.Constant], base_dir: Path | None
) -> None:
    """Write the model with its initializers inside one graph record, streamed one by one.

    The graph record's length is known up front from each initializer's size, so the file has
    exactly the size a whole-model serialization would have (one record per initializer would
    add a few bytes of framing each). Each initializer's bytes are written from where they
    are, copied at most once: a model of one 400 MB weight is saved in about 800 MB.
    """
    tensors = [_InlineTensor.of(constant, base_dir) for constant in initializers]
    graph_bytes = proto.graph.SerializeToString()
    proto.ClearField("graph")
    handle.write(proto.SerializeToString())
    records = sum(1 + len(_varint(t.size)) + t.size for t in tensors)
    handle.write(_TAG_MODEL_GRAPH + _varint(len(graph_bytes) + records))
    handle.write(graph_bytes)
    for constant, tensor in zip(initializers, tensors, strict=True):
        handle.write(_TAG_GRAPH_INITIALIZER + _varint(tensor.size))
        tensor.write(handle, constant.name)


_TAG_TENSOR_RAW_DATA = bytes([(_TENSOR_RAW_DATA_FIELD << 3) | 2])
# Fields that say where a tensor's bytes are, rather than what the tensor is.
_PLACEMENT_FIELDS = frozenset({"raw_data", "external_data", "data_location"})


@dataclass
class _InlineTensor:
    """A constant as an inline TensorProto record, in two parts: its fields other than
    ``raw_data``, serialized, and its raw bytes, produced only while being written. Neither
    the size nor the writing needs a serialized copy of the whole tensor (protobuf's ByteSize
    and SerializeToString each make one, or two)."""

    head: bytes
    raw_length: int | None
    raw_chunks: Callable[[], Iterable[bytes | memoryview]]

    @property
    def size(self) -> int:
        if self.raw_length is None:
            return len(self.head)
        return len(self.head) + 1 + len(_varint(self.raw_length)) + self.raw_length

    def write(self, handle, name: str) -> None:
        handle.write(self.head)
        if self.raw_length is None:
            return
        handle.write(_TAG_TENSOR_RAW_DATA + _varint(self.raw_length))
        written = 0
        for chunk in self.raw_chunks():
            handle.write(chunk)
            written += len(chunk)
        if written != self.raw_length:  # the file would not parse: refuse rather than corrupt it
            raise ModelSaveError(
                f"tensor '{name}' holds {written} bytes of data, not the {self.raw_length} "
                "its type and shape need"
            )

    @classmethod
    def of(cls, constant: gs.Constant, base_dir: Path | None) -> _InlineTensor:
        values = constant._values
        if isinstance(values, DerivedValues):
            length = expected_nbytes(values.tensor)
            return cls(
                _head(values.tensor, constant.name),
                length,
                lambda: (values.raw_bytes(),),
            )
        if isinstance(values, LazyValues) and not isinstance(values, SparseValues):
            tensor = values.tensor
            if _is_external(tensor):
                chunks, length = _external_chunks(tensor, _source_dir(constant, base_dir))
                return cls(_head(tensor, constant.name), length, lambda: chunks)
            length = expected_nbytes(tensor)
            if tensor.HasField("raw_data") and length is not None:
                return cls(_head(tensor, constant.name), length, lambda: (tensor.raw_data,))
        elif isinstance(values, np.ndarray) and _raw_is_native(values.dtype):
            # (np.ascontiguousarray would make a 0-d array 1-d)
            array = values if values.flags.c_contiguous else np.array(values, order="C")
            head = onnx.TensorProto(
                name=constant.name,
                data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype),
                dims=array.shape,
            )
            return cls(head.SerializeToString(), array.nbytes, lambda: (byte_view(array),))
        whole = _tensor_proto(constant, base_dir).SerializeToString()
        return cls(whole, None, tuple)


def byte_view(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous ``array``, not copied (``memoryview.cast`` refuses arrays
    with a zero-length axis, which ONNX allows)."""
    return memoryview(array.reshape(-1).view(np.uint8))


def _raw_is_native(dtype: np.dtype) -> bool:
    """Whether an array's own bytes are its ONNX raw_data: a plain number type, stored
    little-endian (or one byte wide), as ONNX writes it."""
    little = dtype.byteorder in ("<", "|") or (dtype.byteorder == "=" and sys.byteorder == "little")
    return little and dtype.newbyteorder("=") in _NATIVE_DTYPES


_NATIVE_DTYPES = frozenset(
    np.dtype(t)
    for t in (np.float16, np.float32, np.float64, np.bool_)
    + (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
)


def _head(tensor: onnx.TensorProto, name: str) -> bytes:
    """``tensor`` serialized without its data and data placement, named ``name``."""
    head = onnx.TensorProto()
    for descriptor in tensor.DESCRIPTOR.fields:
        name_of_field = descriptor.name
        if name_of_field in _PLACEMENT_FIELDS:
            continue
        value = getattr(tensor, name_of_field)
        if hasattr(value, "extend") and not isinstance(value, str | bytes):  # repeated
            if len(value):
                getattr(head, name_of_field).extend(value)
        elif tensor.HasField(name_of_field):
            if isinstance(value, Message):
                getattr(head, name_of_field).CopyFrom(value)
            else:
                setattr(head, name_of_field, value)
    head.name = name
    return head.SerializeToString()


def _source_proto(constant: gs.Constant) -> onnx.TensorProto:
    """The constant's TensorProto as loaded (external data still a reference), or built."""
    values = constant._values
    if isinstance(values, DerivedValues):
        whole = values.proto()
        whole.name = constant.name
        return whole
    if isinstance(values, LazyValues):
        values.tensor.name = constant.name
        return values.tensor
    return numpy_helper.from_array(np.asarray(values), constant.name)


def _nested_nbytes(tensor: onnx.TensorProto) -> int:
    if external_data_helper.uses_external_data(tensor):
        return _external_entries(tensor)[2] or expected_nbytes(tensor) or 0
    raw = _raw_bytes(tensor)
    return len(raw) if raw is not None else 0
