"""The ``onnxslim`` command: a thin shell over the Python API.

Each command parses its options, calls the API and renders the result. Errors that onnxslim
raises on purpose become one red line and their exit code (see :mod:`onnxslim.errors`: 1
quality bar missed, 2 bad input, 3 internal error, 4 nothing to do); a traceback appears only
with ``--debug``.

Every module in this package registers its commands on the shared typer app when imported, so
a new command is a new module here, nothing else; a command that runs one pass is a row of
:data:`onnxslim.cli.compress.COMMANDS`, its options derived from the pass.
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
