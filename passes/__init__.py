"""Built-in rewrites, installed as ``onnxslim.passes``.

Each module registers its passes with :func:`onnxslim.register_pass` when imported; this file
imports them all so that the registry sees every built-in pass.
"""

from onnxslim.passes import (  # noqa: F401
    cleanup,
    cse,
    eliminate,
    fold_constants,
    fuse_linear,
    fuse_patterns,
    infer_shapes,
    simplify_shapes,
)
