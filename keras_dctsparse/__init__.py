"""keras_dctsparse: dense for the price of sparse (Price & Tanner, ICML 2021).

Every weight matrix is ``W = alpha * D + S``: a fixed orthonormal DCT-II block
``D`` applied by a fast transform, plus a trainable sparse matrix ``S``.
"""

import importlib
import os
import sys

__version__ = "0.1.0"

# Public name -> module defining it.
_PUBLIC = {
    "DCTSparseDense": "keras_dctsparse.layers",
    "DCTSparseConv1D": "keras_dctsparse.layers",
    "DCTSparseConv2D": "keras_dctsparse.layers",
    "DCTSparseDepthwiseConv2D": "keras_dctsparse.layers",
    "DCTSparseEinsumDense": "keras_dctsparse.layers",
    "EnforceSparsity": "keras_dctsparse.callbacks",
    "DynamicSparsity": "keras_dctsparse.dynamic_sparsity",
    "RigL": "keras_dctsparse.dynamic_sparsity",
    "SET": "keras_dctsparse.dynamic_sparsity",
    "Allocation": "keras_dctsparse.allocation",
    "allocate_densities": "keras_dctsparse.allocation",
    "builtin_ops_mode": "keras_dctsparse.export",
    "export_tflite": "keras_dctsparse.export",
    "sparsify": "keras_dctsparse.convert",
    "sparsity_report": "keras_dctsparse.report",
    "fit_multi_worker": "keras_dctsparse.training",
    "models": "keras_dctsparse.models",
    "set_native_kernels": "keras_dctsparse.native",
    "use_bfc_cpu_allocator": "keras_dctsparse.cpu_allocator",
    "native_kernels": "keras_dctsparse.native",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'keras_dctsparse' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC))


def _started_as_command_line():
    """Whether this import is the `dctsparse` command starting up.

    The command line parses its arguments before importing TensorFlow (so
    `--help` and argument errors answer at once); everywhere else the package
    imports its layers eagerly, which registers them with Keras for loading.
    """
    program = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv else ""))[0]
    if program == "dctsparse":
        return True
    # `python -m keras_dctsparse ...` (sys.orig_argv: Python 3.10+).
    original = list(getattr(sys, "orig_argv", []))
    if "-m" in original[:-1]:
        return original[original.index("-m") + 1].split(".")[0] == "keras_dctsparse"
    return False


def _import_public_api():
    """Imports every public name (and so registers the layers with Keras)."""
    for name in _PUBLIC:
        __getattr__(name)


if not _started_as_command_line():
    _import_public_api()
