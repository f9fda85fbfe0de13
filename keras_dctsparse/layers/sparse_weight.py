"""The trainable sparse part `S` every DCTpS layer shares.

`S` has the shape of the layer's Keras kernel (`(n, m)` for a dense layer,
`(kh, kw, c_in / groups, c_out)` for a conv). Its positions are chosen once, in
`build`, uniformly at random from a seed over the kernel viewed as a
`(prod(shape[:-1]), shape[-1])` matrix, and never change.

Two storage formats:

- `"values"`: a trainable vector of the `nnz` values and a non-trainable int32
  `(2, nnz)` weight of their (row, column) positions, sorted column-major. No
  weight, optimizer slot or checkpoint entry has the kernel's size.
- `"masked"`: a trainable dense kernel and a non-trainable 0/1 mask of the same
  shape (the usual way to emulate sparsity; `EnforceSparsity` keeps the pruned
  entries at exactly zero during training).

`SparseWeight` holds the storage of `S` and its views (positions, dense kernel,
`tf.SparseTensor`); it knows nothing of the DCT offset `D`. Products with `S`
(and `alpha * D x + x @ S`) are the kernels of `keras_dctsparse.ops.kernel_registry`
(`DCTSparseLayer.matrix_product`).
"""

import math

import keras
import numpy as np
from keras import ops
from keras.initializers import VarianceScaling

from keras_dctsparse.allocation import check_density
from keras_dctsparse.allocation import check_nnz
from keras_dctsparse.ops import keras_ops
from keras_dctsparse.ops.keras_ops import compute_fans
from keras_dctsparse.ops.support import num_nonzeros
from keras_dctsparse.ops.support import sample_support

__all__ = [
    "TENSORFLOW",
    "matrix_shape",
    "sparse_values_initializer",
    "SparseWeight",
]

#: Whether the layers run on the TensorFlow kernels (`KERAS_BACKEND="tensorflow"`). Every
#: other backend runs the `keras.ops` implementation of `keras_dctsparse.ops.keras_ops`.
TENSORFLOW = keras.backend.backend() == "tensorflow"
if TENSORFLOW:
    import tensorflow as tf

    from keras_dctsparse.ops.sparse_conv import scatter_kernel


def matrix_shape(kernel_shape):
    """The `(rows, cols)` matrix view of a kernel shape: all but the last axis are rows."""
    return (math.prod(kernel_shape[:-1]), kernel_shape[-1])


def sparse_values_initializer(initializer, kernel_shape, nnz):
    """An initializer for the `(nnz,)` values that matches `initializer` on the dense kernel.

    Variance-scaling initializers (He, Glorot, LeCun, ...) take their fans from
    the dense kernel shape, as if the dense kernel were initialized and then
    masked (the authors' convention), not from the length of the values vector.
    Other initializers are called with shape `(nnz,)`.

    Args:
        initializer: A Keras initializer or its identifier.
        kernel_shape: Shape of the dense-equivalent kernel.
        nnz: Number of values.

    Returns:
        A callable `(shape, dtype) -> tensor` for the values weight.

    Example:

    >>> init = sparse_values_initializer("he_normal", (784, 300), nnz=2352)
    >>> init((2352,), "float32").shape
    TensorShape([2352])
    """
    initializer = keras.initializers.get(initializer)
    if not isinstance(initializer, VarianceScaling):
        return initializer
    fan_in, fan_out = compute_fans(tuple(kernel_shape))
    fan = {
        "fan_in": fan_in,
        "fan_out": fan_out,
        "fan_avg": (fan_in + fan_out) / 2.0,
    }[initializer.mode]
    # Called with shape (nnz, 1) and mode "fan_in" the variance is scale / nnz.
    rescaled = VarianceScaling(
        scale=initializer.scale * nnz / max(1.0, fan),
        mode="fan_in",
        distribution=initializer.distribution,
        seed=initializer.seed,
    )

    def initialize(shape, dtype=None):
        return keras.ops.reshape(rescaled((nnz, 1), dtype=dtype), shape)

    return initialize


class SparseWeight:
    """The sparse part `S` of one layer: positions, values and the ways to use them.

    It is owned by a layer and creates its weights through that layer's
    `add_weight` in `build`, so they are tracked, saved and distributed like any
    Keras weight.

    Args:
        kernel_shape: Shape of the dense-equivalent Keras kernel.
        density: Fraction of kept entries in (0, 1]; `nnz = round(density * size)`,
            at least 1. None when `nnz` is given.
        sparse_format: `"values"` or `"masked"`.
        initializer: Initializer of the kept values.
        regularizer: Regularizer applied to the values (or masked kernel).
        constraint: Constraint applied to the values (or masked kernel).
        seed: Seed of the positions (None: drawn from Keras's global random state).
        nnz: None, or the number of kept entries, an int in `[1, size]` (instead
            of `density`).
        layer_name: Name of the owning layer, for error messages.

    Example:

    >>> sparse = SparseWeight((784, 300), 0.01, "values", "zeros", None, None, seed=0)
    >>> sparse.nnz
    2352
    """

    def __init__(
        self,
        kernel_shape,
        density,
        sparse_format,
        initializer,
        regularizer,
        constraint,
        seed,
        nnz=None,
        layer_name=None,
    ):
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.matrix_shape = matrix_shape(self.kernel_shape)
        size = math.prod(self.kernel_shape)
        if (density is None) == (nnz is None):
            raise ValueError(
                "Give exactly one of `density` and `nnz`; received "
                f"density={density!r}, nnz={nnz!r}."
            )
        if nnz is None:
            self.nnz = num_nonzeros(size, check_density(density))
        else:
            where = f" for layer '{layer_name}'" if layer_name else ""
            self.nnz = check_nnz(nnz, size, where=f"{where} (kernel shape {self.kernel_shape})")
        self.sparse_format = sparse_format
        self.initializer = initializer
        self.regularizer = regularizer
        self.constraint = constraint
        self.seed = seed
        self.values = None
        self.indices = None
        self.masked_kernel = None
        self.mask = None

    def build(self, layer):
        """Samples the positions and creates the weights on `layer`."""
        seed = self.seed
        if seed is None:
            # From Keras's global random state: keras.utils.set_random_seed makes it
            # reproducible, and keras.distribution.initialize makes it equal in every
            # process (multi-process training needs the same positions everywhere).
            seed = int(keras.ops.convert_to_numpy(keras.random.randint((), 0, 2**31 - 1)))
        rows, cols = sample_support(self.matrix_shape, self.nnz, seed)
        if self.sparse_format == "values":
            positions = np.stack([rows, cols]).astype(np.int32)
            self.values = layer.add_weight(
                name="sparse_values",
                shape=(self.nnz,),
                initializer=sparse_values_initializer(
                    self.initializer, self.kernel_shape, self.nnz
                ),
                regularizer=self.regularizer,
                constraint=self.constraint,
                autocast=False,
            )
            self.indices = layer.add_weight(
                name="sparse_indices",
                shape=positions.shape,
                dtype="int32",
                initializer=lambda shape, dtype=None: positions,
                trainable=False,
                autocast=False,
            )
        else:
            mask = np.zeros(self.matrix_shape, dtype=np.float32)
            mask[rows, cols] = 1.0
            mask = mask.reshape(self.kernel_shape)
            dense_initializer = keras.initializers.get(self.initializer)
            self.mask = layer.add_weight(
                name="mask",
                shape=self.kernel_shape,
                initializer=lambda shape, dtype=None: mask,
                trainable=False,
                autocast=False,
            )
            self.masked_kernel = layer.add_weight(
                name="masked_kernel",
                shape=self.kernel_shape,
                initializer=lambda shape, dtype=None: (
                    dense_initializer(shape, dtype=dtype) * mask
                ),
                regularizer=self.regularizer,
                constraint=self.constraint,
                autocast=False,
            )

    def positions_tensor(self):
        """The int32 `(2, nnz)` positions (rows, then columns) as one tensor (`"values"` format)."""
        return ops.convert_to_tensor(self.indices)

    def positions(self):
        """`(rows, cols)`: the int32 positions of the values in the `(n, m)` matrix view."""
        if not TENSORFLOW:
            indices = ops.convert_to_tensor(self.indices)
            return indices[0], indices[1]
        # One unstack op rather than two strided slices per call.
        rows, cols = tf.unstack(tf.convert_to_tensor(self.indices), num=2)
        return rows, cols

    def _masked_dense_kernel(self):
        """The masked kernel with its pruned entries zero (`keras.ops`)."""
        # A select, not a product: a non-finite pruned entry must not leak.
        kernel = ops.convert_to_tensor(self.masked_kernel)
        return ops.where(ops.convert_to_tensor(self.mask) > 0, kernel, ops.zeros_like(kernel))

    def dense_kernel(self, dtype=None, base=None):
        """`base + S` as a dense tensor of the kernel shape (a temporary, never a weight).

        Used by the fused conv path (`base = alpha * Kd`) and for inspection. The
        values format scatters with `ops.sparse_conv.scatter_kernel`
        (`SparseToDense`; TF's `scatter_nd` is several times slower).

        Args:
            dtype: None (the weights' dtype) or the dtype of the result.
            base: None, or a tensor of the kernel shape (in `dtype`) added to `S`.

        Returns:
            A tensor of the kernel shape.
        """
        if not TENSORFLOW:
            if self.sparse_format == "masked":
                kernel = self._masked_dense_kernel()
                kernel = kernel if dtype is None else ops.cast(kernel, dtype)
                return kernel if base is None else kernel + base
            rows, cols = self.positions()
            values = ops.convert_to_tensor(self.values)
            values = values if dtype is None else ops.cast(values, dtype)
            return keras_ops.scatter_kernel(values, rows, cols, self.kernel_shape, base)
        if self.sparse_format == "masked":
            # tf.where, not a product: a non-finite pruned entry must not leak.
            kernel = tf.convert_to_tensor(self.masked_kernel)
            kernel = tf.where(tf.convert_to_tensor(self.mask) > 0, kernel, tf.zeros_like(kernel))
            kernel = kernel if dtype is None else tf.cast(kernel, dtype)
            return kernel if base is None else kernel + base
        rows, cols = self.positions()
        values = tf.convert_to_tensor(self.values)
        values = values if dtype is None else tf.cast(values, dtype)
        return scatter_kernel(values, rows, cols, self.kernel_shape, base, column_major=True)

    def sparse_tensor(self):
        """`S` as a `tf.SparseTensor` of the kernel shape, in canonical order (TensorFlow only)."""
        if not TENSORFLOW:
            raise NotImplementedError(
                "SparseWeight.sparse_tensor() returns a tf.SparseTensor and needs the "
                f"TensorFlow backend; KERAS_BACKEND is {keras.backend.backend()!r}. Use "
                "`dense_kernel()`, or `values` and `indices`, instead."
            )
        if self.sparse_format == "masked":
            # From the mask, so kept entries that are currently zero stay listed.
            indices = tf.where(tf.convert_to_tensor(self.mask) > 0)
            values = tf.gather_nd(tf.convert_to_tensor(self.masked_kernel), indices)
            return tf.SparseTensor(indices, values, self.kernel_shape)
        rows, cols = self.positions()
        flat = tf.cast(rows, tf.int64) * self.matrix_shape[1] + tf.cast(cols, tf.int64)
        order = tf.argsort(flat)
        indices = tf.unravel_index(
            tf.gather(flat, order), tf.constant(self.kernel_shape, tf.int64)
        )
        return tf.SparseTensor(
            tf.transpose(indices),
            tf.gather(tf.convert_to_tensor(self.values), order),
            self.kernel_shape,
        )

    def enforce_mask(self):
        """Sets the pruned entries of a masked kernel to exactly zero.

        Returns:
            True if there was a masked kernel to enforce, False for the values
            format (which cannot hold pruned entries).
        """
        if self.sparse_format != "masked":
            return False
        self.masked_kernel.assign(self.dense_kernel())
        return True
