"""The registry of sparse kernels: name -> implementation, backends, XLA safety.

A *sparse kernel* computes, for a batch `x` of shape `(batch, n)` and the sparse
part `S` of a DCTpS layer given by its `values` at `(rows, cols)` of an
`(n, units)` matrix (sorted column-major),

- `matmul(x, values, rows, cols, units)`: `x @ S`, and
- `offset_matmul(x, alpha, values, rows, cols, units)`: `alpha * D x + x @ S`
  with the DCT offset `D`, as one op (a kernel may fuse the two, e.g. one XLA
  cluster, or the DCT block folded into a dense kernel).

Each implementation registers itself here (`register_kernel`) with the Keras
backends it runs on and whether XLA can compile it; each backend registers how its
arguments are converted and how `"auto"` picks a kernel (`register_backend`):

- `keras_dctsparse.ops.sparse_matmul` (TensorFlow): `"csr"` (no XLA kernel),
  `"gather"`, `"materialized"`, `"native"` (the compiled ops of
  `keras_dctsparse.native`; no XLA kernel); `"auto"` is `kernel_choice.choose_kernel`.
- `keras_dctsparse.ops.keras_ops` (JAX, PyTorch and the other backends): `"gather"`
  (on PyTorch its own `torch.sparse.mm`), `"materialized"`.

The layers name a kernel (their `sparse_kernel` argument) and ask this registry
for it (`matmul`, `check_kernel_name`, `is_xla_safe`, `get_kernel`): no layer
compares kernel names. The module is pure Python; a backend's kernels are
registered when that backend is first asked for (its provider module is imported).

Example:

>>> get_kernel("gather", "tensorflow").xla_safe
True
>>> get_kernel("csr", "tensorflow").xla_safe
False
"""

import dataclasses
import importlib
from typing import Callable
from typing import Optional

__all__ = [
    "AUTO",
    "GENERIC_BACKENDS",
    "KERAS_OPS",
    "SparseKernel",
    "register_kernel",
    "register_backend",
    "kernel_names",
    "get_kernel",
    "check_kernel_name",
    "resolve",
    "is_xla_safe",
    "matmul",
    "dense_matmul",
]

#: The kernel name that asks the backend's cost rule to choose.
AUTO = "auto"

# Modules whose import registers a backend's kernels (every backend not listed
# uses the generic `keras.ops` provider).
_PROVIDERS = {"tensorflow": "keras_dctsparse.ops.sparse_matmul"}
_GENERIC_PROVIDER = "keras_dctsparse.ops.keras_ops"
# Every backend besides TensorFlow that the generic provider serves (all of Keras 3's).
GENERIC_BACKENDS = ("jax", "torch", "numpy", "openvino")
#: Pseudo-backend of the generic `keras.ops` kernels on whatever backend Keras runs
#: (`keras_dctsparse.ops.keras_ops` uses it under TensorFlow, e.g. in tests).
KERAS_OPS = "keras"
_DISPLAY_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}

_KERNELS = {}  # (backend, name) -> SparseKernel, in registration order
_BACKENDS = {}  # backend -> _Backend


@dataclasses.dataclass(frozen=True)
class SparseKernel:
    """One sparse kernel: its name, where it runs and its implementation.

    Attributes:
        name: The name layers use (`sparse_kernel=`).
        backends: Tuple of the Keras backends this implementation runs on.
        xla_safe: Whether XLA can compile it (a layer using a kernel that is not
            must set `supports_jit=False`).
        matmul: `(x, values, rows, cols, units) -> x @ S`.
        offset_matmul: `(x, alpha, values, rows, cols, units) -> alpha * D x + x @ S`.
        shape_allowed: None (any shape), or `(input_dim, units) -> bool`: whether
            the kernel may run a layer of that shape.
        shape_limit: What `shape_allowed` checks, for error messages.
        description: One line for documentation.
        takes_positions: Whether `matmul` and `offset_matmul` also accept the keyword
            `positions`, the `(2, nnz)` int32 tensor of rows then columns as the layers
            store it (read without the copy that splitting it can cost; TensorFlow splits
            a tensor along its first axis without copying only when the split is 64-byte
            aligned). Given `positions`, they get `values` unconverted and `rows`/`cols`
            None, and convert what they use.

    Example:

    >>> kernel = SparseKernel("toy", ("numpy",), True, matmul=None, offset_matmul=None,
    ...                       shape_allowed=lambda n, m: n * m <= 4, shape_limit="n * m <= 4")
    >>> kernel.allows(2, 2), kernel.allows(3, 2)
    (True, False)
    """

    name: str
    backends: tuple
    xla_safe: bool
    matmul: Callable
    offset_matmul: Callable
    shape_allowed: Optional[Callable] = None
    shape_limit: str = ""
    description: str = ""
    takes_positions: bool = False

    def allows(self, input_dim, units):
        """Whether this kernel may run an `(input_dim, units)` layer."""
        return self.shape_allowed is None or bool(self.shape_allowed(input_dim, units))

    def check_shape(self, input_dim, units, argument="kernel", layer_name=None):
        """Raises ValueError if this kernel may not run an `(input_dim, units)` layer.

        Args:
            input_dim: Number of inputs `n`.
            units: Number of outputs `m`.
            argument: The argument that named the kernel, for the message.
            layer_name: None, or the layer whose build asks, for the message.
        """
        if self.allows(input_dim, units):
            return
        where = f"Layer '{layer_name}': " if layer_name else ""
        others = tuple(
            name for name in (AUTO,) + kernel_names(self.backends[0]) if name != self.name
        )
        raise ValueError(
            f"{where}{argument}={self.name!r} would build a {input_dim} x {units} kernel "
            f"({int(input_dim) * int(units)} entries) in every step, above the limit "
            f"{self.shape_limit}; use {argument}= one of {others} for this layer."
        )


@dataclasses.dataclass(frozen=True)
class _Backend:
    prepare: Callable
    choose: Callable
    dense_matmul: Callable
    auto_xla_safe: bool


def register_kernel(kernel):
    """Registers `kernel` for each of its backends (replacing one of the same name there).

    Args:
        kernel: A `SparseKernel`.

    Returns:
        `kernel`.

    Raises:
        ValueError: If `kernel` is not a `SparseKernel`, is named `"auto"`, or has no backend.
    """
    if not isinstance(kernel, SparseKernel):
        raise ValueError(
            f"Argument `kernel` must be a SparseKernel; received kernel={kernel!r}."
        )
    if kernel.name == AUTO or not kernel.backends:
        raise ValueError(
            f"A SparseKernel needs a name other than {AUTO!r} and at least one backend; "
            f"received name={kernel.name!r}, backends={kernel.backends!r}."
        )
    for backend in kernel.backends:
        _KERNELS[(backend, kernel.name)] = kernel
    return kernel


def register_backend(backends, prepare, choose, dense_matmul, auto_xla_safe=True):
    """Registers how a backend converts kernel arguments and chooses for `"auto"`.

    Args:
        backends: Tuple of Keras backend names.
        prepare: `(x, values, rows, cols) -> (values, rows, cols)` converted to the
            types the kernels take (values in the dtype of `x`, int32 positions).
        choose: `(x, input_dim, units, nnz) -> name`, the kernel `"auto"` runs.
        dense_matmul: `(x, matrix, units, alpha) -> x @ matrix (+ alpha * D x)` for a
            dense `(n, units)` kernel (the masked storage format); `alpha` may be None.
        auto_xla_safe: Whether `choose` never picks a kernel XLA cannot compile
            while an XLA compilation traces it.
    """
    for backend in backends:
        _BACKENDS[backend] = _Backend(prepare, choose, dense_matmul, bool(auto_xla_safe))


def _current_backend(backend):
    if backend is not None:
        return backend
    import keras

    return keras.backend.backend()


def _ensure(backend):
    """Imports the provider of `backend`'s kernels (which registers them)."""
    if backend not in _BACKENDS:
        importlib.import_module(_PROVIDERS.get(backend, _GENERIC_PROVIDER))
    if backend not in _BACKENDS:
        raise ValueError(f"No sparse kernels are registered for the {backend!r} backend.")
    return _BACKENDS[backend]


def kernel_names(backend=None):
    """The names of the kernels registered for `backend` (default: Keras's), in order.

    Example:

    >>> kernel_names("tensorflow")
    ('csr', 'gather', 'materialized', 'native')
    """
    backend = _current_backend(backend)
    _ensure(backend)
    return tuple(name for (owner, name) in _KERNELS if owner == backend)


def _elsewhere(name, backend):
    """The backends other than `backend` that have a kernel `name` (their providers loaded)."""
    found = []
    for other in ("tensorflow",) + GENERIC_BACKENDS:
        if other == backend:
            continue
        try:
            _ensure(other)
        except ImportError:  # e.g. TensorFlow not installed
            continue
        if (other, name) in _KERNELS:
            found.append(other)
    return found


def _unknown(name, backend, argument):
    allowed = (AUTO,) + kernel_names(backend)
    where = "of keras.ops" if backend == KERAS_OPS else f"under the {backend!r} backend"
    message = (
        f"Argument `{argument}` must be one of {allowed} {where}; "
        f"received {argument}={name!r}."
    )
    others = _elsewhere(name, backend) if isinstance(name, str) else []
    if others and backend != KERAS_OPS:
        needed = " or ".join(_DISPLAY_NAMES.get(b, b) for b in others)
        message += f" {argument}={name!r} needs the {needed} backend; KERAS_BACKEND is {backend!r}."
    return ValueError(message)


def get_kernel(name, backend=None, argument="kernel"):
    """The kernel `name` of `backend` (default: Keras's backend).

    Args:
        name: A registered kernel name (not `"auto"`: see `resolve`).
        backend: A Keras backend name, or None for `keras.backend.backend()`.
        argument: The argument that named the kernel, for the error message.

    Returns:
        The `SparseKernel`.

    Raises:
        ValueError: naming `argument`, `name` and the names allowed on `backend`
            (and the backend `name` needs, if another one has it).

    Example:

    >>> kernel = get_kernel("materialized", "jax")
    >>> kernel.name, "torch" in kernel.backends, kernel.xla_safe
    ('materialized', True, True)
    """
    backend = _current_backend(backend)
    _ensure(backend)
    kernel = _KERNELS.get((backend, name)) if isinstance(name, str) else None
    if kernel is None:
        raise _unknown(name, backend, argument)
    return kernel


def check_kernel_name(name, backend=None, argument="kernel"):
    """Returns `name` (lower-cased) if it is `"auto"` or a kernel of `backend`, else raises.

    Example:

    >>> check_kernel_name("Gather", "jax", "sparse_kernel")
    'gather'
    """
    normalized = name.lower() if isinstance(name, str) else name
    if normalized == AUTO:
        return AUTO
    get_kernel(normalized, backend, argument)
    return normalized


def is_xla_safe(name, backend=None):
    """Whether the kernel `name` (or `"auto"`) of `backend` can run inside XLA.

    Example:

    >>> is_xla_safe("auto", "tensorflow"), is_xla_safe("csr", "tensorflow")
    (True, False)
    """
    backend = _current_backend(backend)
    if name == AUTO:
        return _ensure(backend).auto_xla_safe
    return get_kernel(name, backend).xla_safe


def resolve(name, x, input_dim, units, nnz, backend=None):
    """The kernel a call on `x` runs: `name`'s, or the backend's choice for `"auto"`.

    Args:
        name: `"auto"` or a kernel name of `backend`.
        x: The input, shape `(batch, input_dim)` (the choice reads its batch and dtype).
        input_dim: Number of inputs `n`.
        units: Number of outputs `m`.
        nnz: Number of nonzeros of `S`.
        backend: A Keras backend name, or None for Keras's.

    Returns:
        A `SparseKernel`.
    """
    backend = _current_backend(backend)
    if name == AUTO:
        name = _ensure(backend).choose(x, input_dim, units, nnz)
    return get_kernel(name, backend)


def matmul(x, values, rows, cols, units, kernel=AUTO, alpha=None, backend=None,
           positions=None):
    """`x @ S`, or `alpha * D x + x @ S` when `alpha` is given, by one registered kernel.

    Args:
        x: Float tensor of shape `(batch, n)`, static `n`.
        values: `(nnz,)` values of `S` (converted to the dtype of `x`).
        rows: `(nnz,)` int rows of the nonzeros (None if `positions` is given).
        cols: `(nnz,)` int columns; pairs sorted by column, then row (None with `positions`).
        units: Number of outputs `m` (Python int).
        kernel: `"auto"` or a kernel name of `backend`.
        alpha: None, or the scalar offset scale (a tensor of the dtype of `x`).
        backend: A Keras backend name, or None for Keras's.
        positions: None, or the `(2, nnz)` int32 positions (rows, then columns) as one
            tensor, for kernels that take it whole (`SparseKernel.takes_positions`);
            the others get it split into `rows` and `cols`.

    Returns:
        Tensor of shape `(batch, units)`.

    Example:

    >>> import numpy as np
    >>> y = matmul(np.ones((1, 3), "float32"), np.ones(2, "float32"), np.array([0, 2]),
    ...            np.array([1, 1]), 2, kernel="gather", backend="tensorflow")
    >>> y.numpy().tolist()
    [[0.0, 2.0]]
    """
    backend = _current_backend(backend)
    entry = _ensure(backend)
    if positions is not None and (rows is None or cols is None):
        nnz = int(positions.shape[1])
    else:
        nnz = int(values.shape[0]) if hasattr(values, "shape") else len(values)
    chosen = resolve(kernel, x, int(x.shape[1]), int(units), nnz, backend)
    if chosen.takes_positions and positions is not None:
        # Such a kernel converts `values` and `positions` itself (rows and cols unused).
        extra = {"positions": positions}
    else:
        if rows is None or cols is None:
            rows, cols = positions[0], positions[1]
        values, rows, cols = entry.prepare(x, values, rows, cols)
        extra = {}
    if alpha is None:
        return chosen.matmul(x, values, rows, cols, units, **extra)
    return chosen.offset_matmul(x, alpha, values, rows, cols, units, **extra)


def dense_matmul(x, matrix, units, alpha=None, backend=None):
    """`x @ matrix`, plus `alpha * D x` when `alpha` is given (dense `S`: the masked format).

    Args:
        x: Float tensor of shape `(batch, n)`.
        matrix: Dense `(n, units)` tensor of the dtype of `x`.
        units: Number of outputs `m`.
        alpha: None, or the scalar offset scale.
        backend: A Keras backend name, or None for Keras's.

    Returns:
        Tensor of shape `(batch, units)`.
    """
    return _ensure(_current_backend(backend)).dense_matmul(x, matrix, units, alpha)
