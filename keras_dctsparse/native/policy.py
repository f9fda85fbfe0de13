"""Where the native kernels may run: `set_native_kernels` and `native_kernels`.

The native kernels are TensorFlow ops of a library compiled on this machine. A
graph that holds them runs only where that library is loaded, so they must not
reach the graphs that are saved for serving (`model.export`, `tf.saved_model.save`,
the TFLite converter), which must hold stock TensorFlow ops only. The mode says
where a layer's `sparse_kernel="auto"` (and `"native"`) may use them:

- `"auto"` (default): in eager calls, and in graphs traced inside a
  `tf.distribute` replica context (`strategy.run`), which is where Keras's
  `fit`, `evaluate` and `predict` steps (and `train_on_batch` ...) run, with or
  without a distribution strategy. Every other graph (`model.export`, a plain
  `tf.function`, `tf.saved_model.save`, TFLite conversion) gets stock ops, and
  so does everything when a GPU is visible (the native kernels are CPU-only).
- `"always"`: in every graph (except under XLA, which cannot compile them). A
  SavedModel traced then needs `import keras_dctsparse` (and this machine's
  library) to load.
- `"never"`: nowhere; the library is never built or loaded.

The initial mode comes from `$KERAS_DCTSPARSE_NATIVE_KERNELS` (default
`"auto"`). The mode is read when a layer's call is traced: a `tf.function`
traced under one mode keeps its kernels.
"""

import contextlib
import os

__all__ = [
    "MODES",
    "set_native_kernels",
    "get_native_kernels",
    "native_kernels",
    "allowed_here",
]

#: The modes of `set_native_kernels`.
MODES = ("auto", "always", "never")


def _check_mode(mode, argument="mode"):
    normalized = mode.lower() if isinstance(mode, str) else mode
    if normalized not in MODES:
        raise ValueError(
            f"Argument `{argument}` must be one of {MODES}; received {argument}={mode!r}."
        )
    return normalized


_mode = _check_mode(
    os.environ.get("KERAS_DCTSPARSE_NATIVE_KERNELS", "auto"), "KERAS_DCTSPARSE_NATIVE_KERNELS"
)


def set_native_kernels(mode):
    """Sets where the native kernels may run (see the module docstring).

    Args:
        mode: `"auto"`, `"always"` or `"never"`.

    Returns:
        The previous mode.

    Raises:
        ValueError: For any other `mode`.

    Example:

    >>> previous = set_native_kernels("never")
    >>> get_native_kernels()
    'never'
    >>> _ = set_native_kernels(previous)
    """
    global _mode
    previous, _mode = _mode, _check_mode(mode)
    return previous


def get_native_kernels():
    """The current mode (`"auto"`, `"always"` or `"never"`)."""
    return _mode


@contextlib.contextmanager
def native_kernels(mode):
    """A context in which `set_native_kernels(mode)` holds (restored on exit).

    Example:

    >>> with native_kernels("never"):
    ...     get_native_kernels()
    'never'
    """
    previous = set_native_kernels(mode)
    try:
        yield
    finally:
        set_native_kernels(previous)


def _gpu_visible():
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def _in_replica_step():
    """Whether the current graph is traced inside `strategy.run` (not the default context)."""
    import tensorflow as tf
    # No public API tells the default replica context from one entered by `strategy.run`.
    from tensorflow.python.distribute import distribute_lib

    context = tf.distribute.get_replica_context()
    return context is not None and not isinstance(context, distribute_lib._DefaultReplicaContext)


def _in_xla():
    import tensorflow as tf
    # No public API tells whether the current graph is being compiled by XLA.
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def allowed_here():
    """Whether an op created now may be a native kernel, by the mode and the context.

    Does not build the library; callers also check `library.available()`.
    """
    if _mode == "never" or _in_xla():
        return False
    if _mode == "always":
        return True
    import tensorflow as tf

    if _gpu_visible():
        return False
    return tf.executing_eagerly() or _in_replica_step()
