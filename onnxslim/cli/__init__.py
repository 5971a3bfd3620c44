"""The ``onnxslim`` command: a thin shell over the Python API.

Each command parses its options, calls the API and renders the result. Errors that onnxslim
raises on purpose become one red line and exit code 2; a failed numerics check exits 1; a
traceback appears only with ``--debug``.

Every module in this package registers its commands on the shared typer app when imported, so
a new command is a new module here, nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from onnxslim.cli.shell import app

__all__ = ["app", "main"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def main() -> None:
    app(prog_name="onnxslim")
