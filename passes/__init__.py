"""Built-in rewrites, installed as ``onnxslim.passes``.

Each module registers its passes with :func:`onnxslim.register_pass` when imported; this file
imports them all so that the registry sees every built-in pass.
"""

from onnxslim.passes import cleanup, fold_constants, infer_shapes  # noqa: F401
