"""Built-in rewrites, installed as ``onnxslim.passes``.

Each module registers its passes with :func:`onnxslim.register_pass` when imported; importing
this package imports every module in it, so a new pass is a new module here, nothing else.
Modules whose names start with an underscore are shared helpers of several passes.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
