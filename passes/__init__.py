"""Built-in rewrites, installed as ``onnxslim.passes``.

Each module registers its passes with :func:`onnxslim.register_pass` when imported; importing
this package imports every module and subpackage in it, so a new pass is a new module here,
nothing else. A family of passes with helpers of its own is a subpackage whose ``__init__``
imports its passes (``quantize/``, ``prune/``, ``weights/``).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
