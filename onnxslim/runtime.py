"""onnxruntime sessions on an execution provider that is really the one asked for.

onnxruntime is optional (the extras ``cpu``, ``gpu`` or ``train``), so it is imported only
when a session is needed. Two of its habits are turned into errors here, because both make a
numerics check quietly meaningless: onnxruntime-gpu falls back to the CPU when the CUDA
libraries cannot be loaded, and the CUDA provider computes float32 matmuls and convolutions in
TF32 on Ampere and newer GPUs unless told not to.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from onnxslim.errors import (
    InputDataError,
    InvalidModelError,
    ModelLoadError,
    ProviderUnavailableError,
    RuntimeMissingError,
)

__all__ = [
    "PROVIDERS",
    "require_onnxruntime",
    "provider_name",
    "check_provider",
    "available_providers",
    "create_session",
    "open_session",
    "run",
    "install_advice",
]

# Short names that onnxslim accepts, and the onnxruntime providers they stand for.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_SHORT_NAMES = {full: short for short, full in PROVIDERS.items()}
_DISPLAY_NAMES = {"cpu": "CPU", "cuda": "CUDA", "tensorrt": "TensorRT"}


def install_advice(extra: str) -> str:
    """How to install this project's ``extra``: from its checkout, since the name
    ``onnxslim`` on PyPI belongs to another project, without these extras."""
    return f"pip install -e '.[{extra}]' in your onnxslim checkout"


_MISSING_MESSAGE = (
    f"onnxruntime is not installed: {install_advice('cpu')} "
    "('.[gpu]' for CUDA, '.[train]' for distillation)"
)
# onnxruntime logs warnings (initializers that are also inputs) and the errors it also raises
# on stderr; onnxslim reports what matters itself, so only fatal messages get through.
_LOG_FATAL_ONLY = 4
# Where a model given as bytes finds its external data (onnxruntime 1.20 and newer).
_EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
_EXTERNAL_DATA_FOLDER_SINCE = (1, 20)
_DISABLE_PREPACKING = "session.disable_prepacking"
# Below this a model goes to onnxruntime as bytes; above it, through a file (protobuf's 2 GiB
# limit, less room for the graph itself).
_BYTES_LIMIT = 2**31 - 1 - 64 * 2**20
# Weights held in memory (or computed when read) go to onnxruntime in a proto only below
# this: a proto holds them once more, its serialization again, and onnxruntime a third time;
# from a file written with external data onnxruntime holds the only other copy.
_COPY_LIMIT = 256 * 2**20


def require_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or RuntimeMissingError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeMissingError(_MISSING_MESSAGE) from exc
    return onnxruntime


def provider_name(name: str) -> str:
    """The onnxruntime name (``CUDAExecutionProvider``) for a short or full provider name."""
    key = name.strip()
    if key.lower() in PROVIDERS:
        return PROVIDERS[key.lower()]
    if key in _SHORT_NAMES:
        return key
    raise ProviderUnavailableError(
        f"unknown execution provider '{name}': choose one of {', '.join(PROVIDERS)}"
    )


def available_providers() -> list[str]:
    """Short names of the providers that the installed onnxruntime offers and onnxslim knows."""
    ort = require_onnxruntime()
    return [_SHORT_NAMES[p] for p in ort.get_available_providers() if p in _SHORT_NAMES]


def check_provider(name: str) -> str:
    """The onnxruntime name of ``name`` if the installed build offers it, else
    ProviderUnavailableError listing the providers it does offer."""
    full_name = provider_name(name)
    available = require_onnxruntime().get_available_providers()
    if full_name not in available:
        offered = [_SHORT_NAMES[p] for p in available if p in _SHORT_NAMES]
        raise ProviderUnavailableError(
            f"execution provider '{_SHORT_NAMES[full_name]}' is not available in this "
            f"onnxruntime build (available: {', '.join(offered)}); "
            f"for CUDA: {install_advice('gpu')}"
        )
    return full_name


def _provider_list(full_name: str, available: list[str], tf32: bool) -> list[Any]:
    cuda = ("CUDAExecutionProvider", {"use_tf32": "1" if tf32 else "0"})
    if full_name == "CUDAExecutionProvider":
        return [cuda]
    if full_name == "TensorrtExecutionProvider":
        # Nodes that TensorRT cannot take run on CUDA rather than dropping to the CPU.
        return ["TensorrtExecutionProvider"] + ([cuda] if cuda[0] in available else [])
    return [full_name]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def create_session(
    model: str | os.PathLike | bytes,
    provider: str = "cpu",
    *,
    tf32: bool = False,
    optimize: bool = True,
    threads: int | None = None,
    external_data_dir: Path | None = None,
    memory_pattern: bool = True,
    prepack: bool = True,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``model`` running on ``provider``.

    Give a path when you can: onnxruntime then reads external data beside the model, which
    models over 2 GiB need. ``tf32`` allows TF32 math on CUDA (off by default so that CUDA
    results stay comparable with the CPU's). ``optimize=False`` turns onnxruntime's graph
    optimizations off (to evaluate nodes exactly as written), ``threads`` caps its intra-op
    threads, and ``external_data_dir`` is where a model given as bytes finds its external data.
    ``prepack=False`` leaves weights as the file has them instead of repacking them for the
    kernels: a session run a few times to check a float model then loads in a fraction of
    the time, and external weights stay mapped from their file instead of copied (GPT-2-large:
    0.4 s instead of 8.8 s; the mapped pages still count in RSS once a run reads them). Not
    for sessions whose numbers must be those of a deployed quantized model: MatMulNBits
    quantizes its activations to int8 only once prepacked. Raises ProviderUnavailableError
    when the provider
    is unknown, not in this onnxruntime build, or fails to initialise, and InvalidModelError
    when onnxruntime cannot load the model.
    """
    ort = require_onnxruntime()
    full_name = check_provider(provider)
    available = list(ort.get_available_providers())
    if not isinstance(model, bytes | bytearray):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file")
        model = str(path)

    options = ort.SessionOptions()
    options.log_severity_level = _LOG_FATAL_ONLY
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.enable_mem_pattern = memory_pattern
    if not prepack:
        options.add_session_config_entry(_DISABLE_PREPACKING, "1")
    if external_data_dir is not None:
        options.add_session_config_entry(_EXTERNAL_DATA_FOLDER, str(external_data_dir))
    try:
        session = ort.InferenceSession(
            model, sess_options=options, providers=_provider_list(full_name, available, tf32)
        )
    except Exception as exc:  # onnxruntime's pybind errors share no base class but Exception
        raise InvalidModelError(f"onnxruntime cannot load the model: {_first_line(exc)}") from exc

    active = session.get_providers()
    if not active or active[0] != full_name:
        display = _DISPLAY_NAMES[_SHORT_NAMES[full_name]]
        fallback = ", ".join(active) or "nothing"
        raise ProviderUnavailableError(
            f"{display} execution provider failed to initialise "
            f"(onnxruntime fell back to {fallback}): "
            "check that a GPU is visible and that the CUDA, cuDNN (and TensorRT) libraries "
            "this onnxruntime build needs are installed"
        )
    return session


@contextlib.contextmanager
def open_session(
    model: Any,
    provider: str = "cpu",
    *,
    expose: Iterable[str] = (),
    optimize: bool = True,
    threads: int | None = None,
    tf32: bool = False,
    memory_pattern: bool = True,
    prepack: bool = True,
) -> Iterator[Any]:
    """An onnxruntime session for ``model``, whatever its size, for the length of a block.

    ``model`` is an onnxslim ``Model``, a ``ModelProto``, serialized bytes or a path. The
    tensors named in ``expose`` become extra outputs (intermediate values for calibration,
    guards and importance scores); the model itself is not changed. Models that hold
    under 256 MiB of weights in memory go to onnxruntime as a proto, with untouched external
    weights read from their own folder; others are written with external data to a temporary
    folder that is removed when the block ends (a proto would copy those weights twice
    more). ``optimize``, ``threads``, ``tf32``, ``memory_pattern`` and ``prepack`` are
    :func:`create_session`'s. This is the one way passes build sessions::

        with open_session(model, expose=["conv1_out"], optimize=False) as session:
            values = run(session, feeds)
    """
    exposed = list(dict.fromkeys(expose))
    with contextlib.ExitStack() as cleanup:
        source, folder = _session_source(model, exposed, cleanup)
        session = create_session(
            source,
            provider,
            tf32=tf32,
            optimize=optimize,
            threads=threads,
            external_data_dir=folder,
            memory_pattern=memory_pattern,
            prepack=prepack,
        )
        # onnxruntime keeps the serialized model for the session's lifetime (to rebuild it on
        # another provider after a failure); a CPU session never does, and the bytes are the
        # size of every weight again.
        if isinstance(source, bytes) and session.get_providers()[0] == "CPUExecutionProvider":
            session._model_bytes = None
        del source
        yield session


def _session_source(
    model: Any, exposed: list[str], cleanup: contextlib.ExitStack
) -> tuple[bytes | Path, Path | None]:
    """What ``create_session`` reads for ``model``: bytes (and the folder of their external
    data), or the path of a file."""
    from onnxslim.model import Model, copied_bytes, load, save, to_proto

    if isinstance(model, bytes | bytearray):
        if not exposed:
            return bytes(model), None
        model = onnx.load_model_from_string(bytes(model))
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if not exposed:
            return path, None
        model = load(path)
    if isinstance(model, onnx.ModelProto):
        if model.ByteSize() < _BYTES_LIMIT:
            return _with_outputs(model, exposed), None
        model = load(model)
    if not isinstance(model, Model):
        raise TypeError(f"cannot open a session for a {type(model).__name__}")

    folder = model.base_dir if _reads_external_folder() else None
    if copied_bytes(model, keep_external=folder is not None) < _COPY_LIMIT:
        proto = to_proto(model, keep_external=folder is not None)
        if proto.ByteSize() < _BYTES_LIMIT:
            return _with_outputs(proto, exposed), folder
        del proto
    workdir = Path(cleanup.enter_context(_temporary_folder()))
    path = save(model, workdir / "model.onnx", external_data=True)
    if exposed:
        skeleton = onnx.load(str(path), load_external_data=False)
        path.write_bytes(_with_outputs(skeleton, exposed))
    return path, None


def _with_outputs(proto: onnx.ModelProto, names: list[str]) -> bytes:
    """``proto`` serialized with the tensors ``names`` added as outputs; ``proto`` itself is
    left as it was (outputs are appended, serialized, then removed: no copy of the weights)."""
    present = {o.name for o in proto.graph.output} | {i.name for i in proto.graph.input}
    added = [name for name in names if name not in present]
    if not added:
        return proto.SerializeToString()
    count = len(proto.graph.output)
    # Untyped outputs keep whatever type the tensor has.
    proto.graph.output.extend(onnx.ValueInfoProto(name=name) for name in added)
    try:
        return proto.SerializeToString()
    finally:
        del proto.graph.output[count:]


def _reads_external_folder() -> bool:
    version = require_onnxruntime().__version__.split(".")
    return tuple(int(part) for part in version[:2] if part.isdigit()) >= _EXTERNAL_DATA_FOLDER_SINCE


@contextlib.contextmanager
def _temporary_folder() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="onnxslim-session-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(session: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``session`` on ``feeds``; the outputs keyed by output name.

    Feeds that do not fit the model (names, types, shapes) raise InputDataError; a failure
    inside a kernel raises InvalidModelError. Both carry onnxruntime's first line.
    """
    ort = require_onnxruntime()
    names = [output.name for output in session.get_outputs()]
    try:
        values = session.run(names, dict(feeds))
    except (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ValueError, TypeError) as exc:
        raise InputDataError(f"onnxruntime rejected the inputs: {_first_line(exc)}") from exc
    except Exception as exc:  # a kernel failed: the model cannot run on these inputs
        raise InvalidModelError(f"onnxruntime failed to run the model: {_first_line(exc)}") from exc
    return dict(zip(names, values, strict=True))
