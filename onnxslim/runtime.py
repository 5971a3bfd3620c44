"""onnxruntime sessions on an execution provider that is really the one asked for.

onnxruntime is optional (``onnxslim[cpu]``, ``[gpu]`` or ``[train]``), so it is imported only
when a session is needed. Two of its habits are turned into errors here, because both make a
numerics check quietly meaningless: onnxruntime-gpu falls back to the CPU when the CUDA
libraries cannot be loaded, and the CUDA provider computes float32 matmuls and convolutions in
TF32 on Ampere and newer GPUs unless told not to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

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
    "run",
]

# Short names that onnxslim accepts, and the onnxruntime providers they stand for.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_SHORT_NAMES = {full: short for short, full in PROVIDERS.items()}
_DISPLAY_NAMES = {"cpu": "CPU", "cuda": "CUDA", "tensorrt": "TensorRT"}

_MISSING_MESSAGE = (
    "onnxruntime is not installed: pip install 'onnxslim[cpu]' "
    "(or 'onnxslim[gpu]' for CUDA, 'onnxslim[train]' for distillation)"
)
# onnxruntime logs warnings (initializers that are also inputs) and the errors it also raises
# on stderr; onnxslim reports what matters itself, so only fatal messages get through.
_LOG_FATAL_ONLY = 4


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
            "for CUDA install 'onnxslim[gpu]'"
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
    model: str | os.PathLike | bytes, provider: str = "cpu", *, tf32: bool = False
) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``model`` running on ``provider``.

    Give a path when you can: onnxruntime then reads external data beside the model, which
    models over 2 GiB need. ``tf32`` allows TF32 math on CUDA (off by default so that CUDA
    results stay comparable with the CPU's). Raises ProviderUnavailableError when the provider
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
