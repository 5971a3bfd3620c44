"""The work that ``vs_peers.py`` measures, one function per tool: load, optimize, save.

Each runs in a fresh child process, ours and the floor under this project's Python and the peers
under the peers' environment's (the PyPI ``onnxslim`` shares our import name). So this module
imports nothing at the top beyond the standard library: whatever it imported would count in
every tool's memory, and the peers' environment has neither rich nor this project. Each
function returns the version of the tool it ran.
"""

from __future__ import annotations

__all__ = ["floor", "ours", "onnxslim_pypi", "onnxsim_pypi"]


def floor(source: str, destination: str) -> str:
    """What any tool pays to read the model and write it again: ``onnx.load`` + ``onnx.save``."""
    import onnx

    onnx.save(onnx.load(source), destination)
    return onnx.__version__


def ours(source: str, destination: str, passes: str | None) -> str:
    """This project: ``onnxslim.optimize`` (default pipeline unless ``passes``) + save."""
    import onnxslim

    model, _ = onnxslim.optimize(source, passes)
    onnxslim.save(model, destination)
    return onnxslim.__version__


def onnxslim_pypi(source: str, destination: str) -> str:
    """OnnxSlim from PyPI with its defaults, as ``onnxslim.slim(input, output)``."""
    import onnxslim

    onnxslim.slim(source, destination)
    return onnxslim.__version__


def onnxsim_pypi(source: str, destination: str) -> str:
    """onnx-simplifier with its defaults (no output check), as its README shows it."""
    import onnx
    import onnxsim

    simplified, _ = onnxsim.simplify(onnx.load(source))
    onnx.save(simplified, destination)
    return onnxsim.__version__
