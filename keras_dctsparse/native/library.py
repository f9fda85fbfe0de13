"""Loading the native op library (building it first if needed).

`load()` returns the loaded TensorFlow op module; `available()` says whether it
can be loaded here, without raising. Setting `KERAS_DCTSPARSE_NATIVE_KERNELS=never`
(or `set_native_kernels("never")`) keeps the library from being built or loaded.
When it cannot be built, the reason is logged once as a warning and the stock
TensorFlow kernels run instead (`unavailable_reason()` returns it).
"""

import ctypes
import logging
import threading

from keras_dctsparse.native import build as build_module

__all__ = [
    "load",
    "available",
    "unavailable_reason",
    "vector_bytes",
    "lane_count",
    "NativeKernelsUnavailable",
]

_LOGGER = logging.getLogger("keras_dctsparse")
_lock = threading.Lock()
_module = None
_path = None  # the file `_module` was loaded from
_error = None
_vector_bytes = None


class NativeKernelsUnavailable(RuntimeError):
    """The native kernels cannot be built or loaded on this machine."""


def load():
    """The native op module (`tf.load_op_library`), built on first use.

    Returns:
        The module whose functions are the ops (`dct_sparse_matmul`, ...).

    Raises:
        NativeKernelsUnavailable: naming why (no compiler, compile error, load error).
    """
    global _module, _path, _error
    with _lock:
        if _module is not None:
            return _module
        if _error is not None:
            raise NativeKernelsUnavailable(_error)
        try:
            import tensorflow as tf

            path = build_module.library_path()
            if not build_module.os.path.exists(path):
                _LOGGER.warning(
                    "keras_dctsparse: compiling the native CPU kernels (once per machine, "
                    "about 30 s) into %s", path,
                )
            built = build_module.build()
            _module = tf.load_op_library(built)
            _path = built
        except Exception as error:  # compiler missing, compile or load failure
            _error = (
                f"{type(error).__name__}: {error}. The layers use the stock TensorFlow "
                "kernels instead (slower; README, section Speed)."
            )
            _LOGGER.warning("keras_dctsparse: native kernels unavailable: %s", _error)
            raise NativeKernelsUnavailable(_error) from error
        return _module


def available():
    """Whether the native kernels can be loaded here (builds them on first call)."""
    try:
        load()
    except NativeKernelsUnavailable:
        return False
    return True


def unavailable_reason():
    """Why the native kernels are unavailable, or None (after a failed `load`)."""
    return _error


def vector_bytes():
    """Bytes of the native kernels' lane vectors, as compiled for this CPU.

    64 with AVX-512, 32 with AVX/AVX2, 16 otherwise (SSE, NEON): one vector register.
    The kernels cut a batch into tiles of `vector_bytes() // itemsize` rows (conv ops:
    output pixels), one per lane.

    Raises:
        NativeKernelsUnavailable: If the library cannot be loaded.

    Example:

    >>> vector_bytes() in (16, 32, 64)
    True
    """
    global _vector_bytes
    load()
    with _lock:
        if _vector_bytes is None:
            # The file loaded, not `library_path()` again: that names the build of the
            # sources as they are now, which may have changed since (a checkout).
            _vector_bytes = int(ctypes.CDLL(_path).DctSparseVectorBytes())
        return _vector_bytes


def lane_count(dtype):
    """Rows per tile of the native kernels for `dtype` (float32 or float64).

    Example:

    >>> lane_count("float32") == 2 * lane_count("float64")
    True
    """
    import numpy as np

    return vector_bytes() // np.dtype(dtype).itemsize
