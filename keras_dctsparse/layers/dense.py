"""`DCTSparseDense`: a dense layer whose weight is `alpha * D + S`."""

import math

import keras
from keras import ops

from keras_dctsparse.layers import validation
from keras_dctsparse.layers.base import DCTSparseLayer
from keras_dctsparse.layers.sparse_weight import TENSORFLOW
from keras_dctsparse.ops import keras_ops

__all__ = [
    "DCTSparseDense",
]

if TENSORFLOW:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_dctsparse")
class DCTSparseDense(DCTSparseLayer):
    """A densely-connected layer at the price of a sparse one (DCT plus sparse).

    Computes `output = activation(alpha * D x + S x + bias)` on the last axis
    of the input, where, for `n` inputs and `m = units` outputs, `D x` is the
    first `m` coefficients of the orthonormal DCT-II of `x` zero-padded to
    `N = max(n, m)` (a fixed operator whose singular values are all 1, applied
    by a real FFT and never stored), `S` is a sparse `(m x n)` matrix with
    `round(density * n * m)` trainable entries at random positions chosen from
    `seed`, and `alpha` is one trainable scalar (Price & Tanner, ICML 2021).
    In Keras kernel terms the effective kernel is `alpha * D^T + S^T`.

    Like `keras.layers.Dense`, inputs of any rank `(..., n)` are accepted and
    the output has shape `(..., units)`.

    Backends: on TensorFlow the kernels of `keras_dctsparse.ops.sparse_matmul`
    (CSR, gather, materialized, XLA clusters); on JAX and PyTorch the
    `keras.ops` implementation of `keras_dctsparse.ops.keras_ops` (`"gather"`
    and `"materialized"`; `"csr"` is refused there). The weights, and so the
    `.keras` files, are the same on every backend.

    Args:
        units: Positive integer, dimensionality of the output space.
        density: Fraction of the `n * units` entries of `S` that are kept and
            trained, in (0, 1]. At least one entry is kept. Default 0.01 unless
            `nnz` is given.
        nnz: Instead of `density`, the number of kept entries, an int in
            `[1, n * units]` (what `sparsify` passes).
        offset: `"dct"` (default) for the DCT offset, or `None` for the plain
            random-sparse layer (He-normal values on the kept positions).
        activation: Activation function to use (default: none).
        use_bias: Whether the layer uses a bias vector.
        alpha: Initial value of the offset scale `alpha` (default 1.0).
        alpha_trainable: Whether `alpha` is trained (default True).
        sparse_initializer: Initializer of the kept entries of `S`; defaults to
            `"zeros"` with the offset and `"he_normal"` without. Variance-scaling
            initializers use the fans of the dense `(n, units)` kernel.
        bias_initializer: Initializer for the bias vector.
        sparse_regularizer: Regularizer function applied to the kept entries of `S`.
        bias_regularizer: Regularizer function applied to the bias vector.
        activity_regularizer: Regularizer function applied to the output.
        sparse_constraint: Constraint function applied to the kept entries of `S`.
        bias_constraint: Constraint function applied to the bias vector.
        seed: Integer seed of the sparse positions, or None.
        sparse_format: `"values"` (default): `S` is stored as its `nnz` values
            and int32 positions, so weights, optimizer state and saved files
            scale with `nnz`. `"masked"`: a dense kernel times a fixed mask.
        sparse_kernel: How `alpha * D x + S x` is computed: `"auto"` (default:
            the cheapest by the cost rule `keras_dctsparse.ops.kernel_choice.
            choose_kernel` for the shape, nnz, batch and dtype, decided when
            the call is traced), `"csr"`, `"gather"` or `"materialized"` (a
            dense matmul with `S` scattered into an `n x units` tensor in
            every step, never stored; refused when `n * units` exceeds
            `kernel_choice.MAX_MATERIALIZED_ELEMENTS` = 2**24, and never
            chosen by `"auto"` there). See `keras_dctsparse.ops.sparse_matmul`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        N-D tensor with shape `(batch_size, ..., n)`, `n` defined.

    Output shape:
        N-D tensor with shape `(batch_size, ..., units)`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((784,)),
    ...     DCTSparseDense(300, density=0.01, activation="relu"),
    ...     DCTSparseDense(10, density=0.01, activation="softmax"),
    ... ])
    >>> model.layers[0].nnz
    2352
    """

    replaces = keras.layers.Dense
    linear_map_is_matmul = True
    carried_keys = ("units",)
    export_kind = "matrix"

    def __init__(self, units, density=None, offset="dct", **kwargs):
        super().__init__(density=density, offset=offset, **kwargs)
        self.units = validation.check_positive_int("units", units)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        input_dim = validation.check_last_dim(self.name, input_shape)
        self.build_sparse_part((input_dim, self.units), bias_size=self.units)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    @property
    def kernel(self):
        """The effective dense `(n, units)` kernel `alpha * D^T + S^T` (for inspection).

        This materializes `n * units` numbers: do not use it on huge layers.
        """
        self._check_built("kernel")
        input_dim = self.sparse_weight.kernel_shape[0]
        dtype = self.transform_dtype()
        kernel = ops.cast(self.sparse_weight.dense_kernel(), dtype)
        if self.offset == "dct":
            offset_kernel = ops.transpose(keras_ops.dct_block(self.units, input_dim, dtype))
            kernel += self.alpha_as(dtype) * offset_kernel
        return kernel

    def call(self, inputs):
        if not TENSORFLOW:
            return self._generic_call(inputs)
        input_dim = self.sparse_weight.kernel_shape[0]
        x = tf.cast(inputs, self.transform_dtype())
        flatten = x.shape.rank != 2
        if flatten:
            leading_shape = tf.shape(x)[:-1]
            x = tf.reshape(x, [-1, input_dim])
        alpha = None
        if self.offset == "dct":
            alpha = tf.cast(tf.convert_to_tensor(self._alpha), x.dtype)
        linear = self.matrix_product(x, alpha)
        outputs = self.finish(self.observe_linear_output(x, linear))
        if flatten:
            outputs = tf.reshape(outputs, tf.concat([leading_shape, [self.units]], 0))
        return outputs

    def _generic_call(self, inputs):
        """`call` in `keras.ops` (`keras_dctsparse.ops.keras_ops`), for the non-TF backends."""
        input_dim = self.sparse_weight.kernel_shape[0]
        x = ops.cast(inputs, self.transform_dtype())
        leading = ops.shape(x)[:-1]
        x = ops.reshape(x, (-1, input_dim))
        alpha = self.alpha_as(x.dtype) if self.offset == "dct" else None
        linear = self.matrix_product(x, alpha)
        outputs = self.finish(self.observe_linear_output(x, linear))
        return ops.reshape(outputs, (*leading, self.units))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    # -- hooks of `DCTSparseLayer` (sparsify, report, export) ----------------------------------

    @classmethod
    def kernel_shape_for(cls, config, input_shape):
        return (int(input_shape[-1]), int(config["units"]))

    @classmethod
    def positions_for(cls, config, output_shape):
        return math.prod(int(d) for d in output_shape[1:-1])

    def matrix_input(self, x):
        if len(x.shape) == 2:
            return x
        return ops.reshape(x, (-1, self.sparse_weight.kernel_shape[0]))

    def matrix_output(self, y, x):
        if len(x.shape) == 2:
            return y
        return ops.reshape(y, (*ops.shape(x)[:-1], self.units))

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        return config
