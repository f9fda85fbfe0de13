"""`DCTSparseLayer`: what the dense and conv DCTpS layers share.

Every DCTpS layer computes `activation(alpha * D(x) + S(x) + bias)` where `D`
is a fixed orthonormal DCT-II operator applied by a fast transform (never
stored), `S` a trainable sparse operator (`SparseWeight`) and `alpha` one
trainable scalar. Subclasses say what `D(x)` and `S(x)` are for their
operation (matmul, convolution) and the shape of their kernel.

Each layer type has one backend dispatch, in its `call`: on TensorFlow
(`sparse_weight.TENSORFLOW`) the TF kernels of `keras_dctsparse.ops` (CSR, XLA
clusters, sparse conv, factored offsets); on every other backend `keras.ops`
through `keras_dctsparse.ops.keras_ops`. Weights are identical on all backends.
"""

import keras
from keras import ops

from keras_dctsparse.layers import validation
from keras_dctsparse.layers.sparse_weight import TENSORFLOW
from keras_dctsparse.layers.sparse_weight import SparseWeight
from keras_dctsparse.ops import kernel_choice
from keras_dctsparse.ops import keras_ops

if TENSORFLOW:
    import tensorflow as tf

    from keras_dctsparse.ops.sparse_matmul import XLA_KERNELS

#: `sparse_kernel` values of the dense layers (`"csr"` needs the TensorFlow backend).
SPARSE_KERNELS = ("auto",) + kernel_choice.KERNELS


class DCTSparseLayer(keras.layers.Layer):
    """Base class of the DCT-plus-sparse layers (not used directly).

    Args:
        density: Fraction of the kernel's entries that `S` keeps, in (0, 1].
        offset: `"dct"` for the DCT offset (DCTpS), or `None` for a plain
            random-sparse layer (the paper's baseline).
        activation: Activation function, as for `keras.layers.Dense`.
        use_bias: Whether the layer has a bias vector.
        alpha: Initial value of the offset's scale `alpha`.
        alpha_trainable: Whether `alpha` is trained.
        sparse_initializer: Initializer of the kept values of `S`. Defaults to
            `"zeros"` with the DCT offset (the network starts as the pure DCT
            network) and to `"he_normal"` (fans of the dense kernel) without.
        bias_initializer: Initializer of the bias.
        sparse_regularizer: Regularizer applied to the values of `S`.
        bias_regularizer: Regularizer applied to the bias.
        activity_regularizer: Regularizer applied to the output.
        sparse_constraint: Constraint applied to the values of `S` (as a vector
            for `sparse_format="values"`).
        bias_constraint: Constraint applied to the bias.
        seed: Seed of the sparse positions (None: fresh entropy). The positions
            are saved with the weights either way.
        sparse_format: `"values"` (nnz values at fixed positions; storage and
            optimizer state scale with nnz) or `"masked"` (a dense kernel with
            a fixed 0/1 mask; use with the `EnforceSparsity` callback).
        sparse_kernel: The sparse matmul kernel, one of `"auto"` (cheapest by
            `keras_dctsparse.ops.kernel_choice`, chosen when the call is
            traced), `"csr"`, `"gather"` or `"materialized"` (dense matmul
            with `S` scattered into an `n x m` tensor in every step; refused
            above `kernel_choice.MAX_MATERIALIZED_ELEMENTS` = 2**24 entries).
            See `keras_dctsparse.ops.sparse_matmul`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    def __init__(
        self,
        density=0.01,
        offset="dct",
        activation=None,
        use_bias=True,
        alpha=1.0,
        alpha_trainable=True,
        sparse_initializer=None,
        bias_initializer="zeros",
        sparse_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        sparse_constraint=None,
        bias_constraint=None,
        seed=None,
        sparse_format="values",
        sparse_kernel="auto",
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.density = validation.check_density(density)
        self.offset = validation.check_choice("offset", offset, validation.OFFSETS)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.initial_alpha = validation.check_finite_float("alpha", alpha)
        self.alpha_trainable = bool(alpha_trainable)
        if sparse_initializer is None:
            sparse_initializer = "zeros" if self.offset == "dct" else "he_normal"
        self.sparse_initializer = keras.initializers.get(sparse_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.sparse_regularizer = keras.regularizers.get(sparse_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.sparse_constraint = keras.constraints.get(sparse_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.seed = validation.check_seed(seed)
        self.sparse_format = validation.check_choice(
            "sparse_format", sparse_format, validation.SPARSE_FORMATS
        )
        self.sparse_kernel_name = validation.check_choice(
            "sparse_kernel", sparse_kernel, SPARSE_KERNELS
        )
        if TENSORFLOW:
            # The CSR kernels have no XLA implementation: a model using them must not
            # be compiled whole by XLA (Keras checks this for jit_compile="auto").
            # "auto" never picks CSR inside an XLA compilation.
            self.supports_jit = (
                self.sparse_format == "masked" or self.sparse_kernel_name in XLA_KERNELS
            )
        elif self.sparse_kernel_name not in ("auto",) + keras_ops.GENERIC_KERNELS:
            raise ValueError(
                f"sparse_kernel={self.sparse_kernel_name!r} needs the TensorFlow backend; "
                f"KERAS_BACKEND is {keras.backend.backend()!r}, where sparse_kernel may be "
                f"one of {('auto',) + keras_ops.GENERIC_KERNELS}."
            )
        self.sparse_weight = None
        self._alpha = None
        self.bias = None

    def build_sparse_part(self, kernel_shape, bias_size):
        """Creates `S`, `alpha` and the bias. Called by the subclasses' `build`."""
        self.sparse_weight = SparseWeight(
            kernel_shape,
            self.density,
            self.sparse_format,
            self.sparse_initializer,
            self.sparse_regularizer,
            self.sparse_constraint,
            self.seed,
            kernel=self.sparse_kernel_name,
        )
        self.sparse_weight.build(self)
        if self.offset == "dct":
            self._alpha = self.add_weight(
                name="alpha",
                shape=(),
                initializer=keras.initializers.Constant(self.initial_alpha),
                trainable=self.alpha_trainable,
                autocast=False,
            )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(bias_size,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )

    @property
    def alpha(self):
        """The offset's scale `alpha` (a variable), or None without an offset."""
        return self._alpha

    @property
    def nnz(self):
        """Number of kept (trainable) entries of `S`."""
        self._check_built("nnz")
        return self.sparse_weight.nnz

    @property
    def sparse_kernel(self):
        """`S` as a `tf.SparseTensor` with the shape of the Keras kernel."""
        self._check_built("sparse_kernel")
        return self.sparse_weight.sparse_tensor()

    def _check_built(self, attribute):
        if self.sparse_weight is None:
            raise AttributeError(
                f"Layer '{self.name}' has no `{attribute}` before it is built; call "
                "it on an input or call `layer.build(input_shape)` first."
            )

    def transform_dtype(self):
        """dtype in which the transform and the sparse kernels run (float32 or float64).

        A `tf.DType` on the TensorFlow backend, else the dtype's name.
        """
        name = "float64" if self.compute_dtype == "float64" else "float32"
        return tf.as_dtype(name) if TENSORFLOW else name

    def alpha_as(self, dtype):
        """`alpha` as a tensor of `dtype` (`keras.ops`)."""
        return ops.cast(ops.convert_to_tensor(self._alpha), dtype)

    def linear_sum(self, offset_output, sparse_output):
        """`alpha * offset + sparse` (the offset may be None)."""
        outputs = sparse_output
        if offset_output is not None:
            outputs = outputs + self.alpha_as(outputs.dtype) * offset_output
        return outputs

    def combine(self, offset_output, sparse_output):
        """`alpha * offset + sparse`, then `finish` (cast, bias, activation)."""
        return self.finish(self.linear_sum(offset_output, sparse_output))

    # -- dense-gradient probe (used by `keras_dctsparse.dynamic_sparsity`) ----------------------

    #: None, or a function `(layer, inputs, outputs, context) -> outputs` that the layer
    #: calls on its linear output `W x` (before bias and activation). Set only while
    #: `DynamicSparsity` traces its gradient step; normal calls pay nothing.
    linear_output_probe = None

    def observe_linear_output(self, inputs, outputs, **context):
        """Passes the linear output through `linear_output_probe` when one is set.

        Args:
            inputs: The input of the linear map, in the form `kernel_gradient` takes.
            outputs: The linear output `W x` (bias and activation not yet applied).
            **context: What `kernel_gradient` needs besides the tensors (e.g. padding).

        Returns:
            `outputs` (unchanged, or as the probe returns it).
        """
        if self.linear_output_probe is None:
            return outputs
        return self.linear_output_probe(self, inputs, outputs, context)

    def kernel_gradient(self, inputs, output_gradient, context, first_col, last_col):
        """The loss gradient w.r.t. columns `[first_col, last_col)` of the dense kernel.

        The kernel is seen as its `(rows, cols)` matrix view (all axes but the last are
        rows). This is the gradient of every position, held or not: what RigL ranks.

        Args:
            inputs: The linear map's input, as passed to `observe_linear_output`.
            output_gradient: The loss gradient w.r.t. the linear output.
            context: The context passed to `observe_linear_output`.
            first_col: First column of the block.
            last_col: One past the last column of the block.

        Returns:
            A `(rows, last_col - first_col)` tensor.
        """
        raise NotImplementedError

    def kernel_gradient_blocks(self, max_elements):
        """Column blocks `[(first, last), ...]` for `kernel_gradient` of at most `max_elements`.

        A single column wider than `max_elements` still makes a block of one column.
        """
        rows, cols = self.sparse_weight.matrix_shape
        width = max(1, max_elements // rows)
        return [(first, min(cols, first + width)) for first in range(0, cols, width)]

    def finish(self, outputs):
        """Casts to the compute dtype, adds the bias and applies the activation."""
        outputs = ops.cast(outputs, self.compute_dtype)
        if self.bias is not None:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "density": self.density,
                "offset": self.offset,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "alpha": self.initial_alpha,
                "alpha_trainable": self.alpha_trainable,
                "sparse_initializer": keras.initializers.serialize(
                    self.sparse_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "sparse_regularizer": keras.regularizers.serialize(
                    self.sparse_regularizer
                ),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "sparse_constraint": keras.constraints.serialize(
                    self.sparse_constraint
                ),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
                "seed": self.seed,
                "sparse_format": self.sparse_format,
                "sparse_kernel": self.sparse_kernel_name,
            }
        )
        return config
