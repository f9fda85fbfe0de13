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
The matrix product `alpha * D x + x @ S` of the dense-like layers is one op of
`keras_dctsparse.ops.kernel_registry` (`DCTSparseLayer.matrix_product`), chosen by
the layer's `sparse_kernel` for the backend.
"""

import math

import keras
from keras import ops

from keras_dctsparse.layers import validation
from keras_dctsparse.layers.sparse_weight import TENSORFLOW
from keras_dctsparse.layers.sparse_weight import SparseWeight
from keras_dctsparse.ops import kernel_choice
from keras_dctsparse.ops import kernel_registry

__all__ = [
    "SPARSE_KERNELS",
    "DCT_MACS_PER_LOG",
    "COMMON_CONFIG_KEYS",
    "dct_matmul_macs",
    "spatial_positions",
    "DCTSparseLayer",
]

if TENSORFLOW:
    import tensorflow as tf

#: `sparse_kernel` values of the dense layers (`"csr"` needs the TensorFlow backend); the
#: kernels of each backend are those of `keras_dctsparse.ops.kernel_registry`.
SPARSE_KERNELS = ("auto",) + kernel_choice.KERNELS

#: Real multiply-adds per point and per `log2(2N)` stage of a fast DCT-II of length N.
DCT_MACS_PER_LOG = 2.5

# Config keys every replaced Keras layer carries over unchanged (when present), see
# `DCTSparseLayer.config_from`.
COMMON_CONFIG_KEYS = (
    "name",
    "trainable",
    "dtype",
    "activation",
    "use_bias",
    "bias_initializer",
    "bias_regularizer",
    "bias_constraint",
    "activity_regularizer",
)


def spatial_positions(config, output_shape):
    """Output positions per example of a conv-like layer: every axis but batch and channels.

    Args:
        config: The layer's config (its `data_format` says where the channels are).
        output_shape: The layer's output shape, batch first.

    Returns:
        The product of the spatial output dimensions.

    Raises:
        ValueError: If a spatial dimension is not static.
    """
    channels_first = config.get("data_format") == "channels_first"
    dims = output_shape[2:] if channels_first else output_shape[1:-1]
    if any(d is None for d in dims):
        raise ValueError(
            f"Layer '{config.get('name')}' needs static spatial dimensions to count its "
            f"output pixels; its output shape is {tuple(output_shape)}."
        )
    return math.prod(int(d) for d in dims)


def dct_matmul_macs(n, m):
    """Multiply-adds of `D x` for one length-`n` row and an `(m x n)` DCT block `D`.

    A fast DCT-II of length `N = max(n, m)` (a real FFT of length `2N`):
    `DCT_MACS_PER_LOG * N * log2(2N)`, capped at the dense `n * m`.

    Example:

    >>> dct_matmul_macs(64, 64)
    1120.0
    """
    big_n = max(n, m)
    return min(n * m, DCT_MACS_PER_LOG * big_n * math.log2(2 * big_n))


def _kernel_variable(layer):
    """The kernel variable of a built Keras layer (Dense, Conv, EinsumDense, ...), or None."""
    for attribute in ("_kernel", "kernel", "depthwise_kernel"):
        try:
            kernel = getattr(layer, attribute, None)
        except Exception:  # a property of an unbuilt layer
            kernel = None
        if isinstance(kernel, keras.Variable):
            return kernel
    return None


def _input_shape_of(layer):
    """The static input shape of `layer` in its model, or a clear ValueError."""
    try:
        return tuple(layer.input.shape)
    except (AttributeError, ValueError):
        raise ValueError(
            f"Cannot find the kernel shape of layer '{layer.name}': it is not built and "
            "has no known input. Build the model first (e.g. with a `keras.Input`)."
        ) from None


class DCTSparseLayer(keras.layers.Layer):
    """Base class of the DCT-plus-sparse layers (not used directly).

    Each layer type describes itself through class attributes and hooks, which
    `sparsify`, `sparsity_report` and `export_tflite` use instead of type checks:

    - `replaces`: the Keras layer class it stands in for (e.g.
      `keras.layers.Dense`); a subclass that sets it in its class body is
      registered (`DCTSparseLayer.layer_types()`, `replacement_for(layer)`).
    - `config_from(layer)`: the config of the replacement of a Keras layer
      (`carried_keys` plus the common ones; the kernel regularizer becomes
      `sparse_regularizer`).
    - `kernel_shape_of(layer)`: the shape of the sparse kernel `S` a replacement of
      a Keras layer gets (what `allocate_densities` spreads the density over).
    - `positions_for(config, output_shape)`: how often per example the kernel's
      matrix view multiplies a vector (output positions), for a layer of that type
      or of the type it replaces; `offset_macs()` the multiply-adds of the offset
      per position; `macs(output_shape)` puts them together.
    - `export_kind`: how `keras_dctsparse.export.tflite` exports it: `"matrix"`
      (a matrix product between `matrix_input` and `matrix_output`), `"conv"` (one
      convolution with a kernel built by the exporter) or None (not exportable).

    Adding a layer type is one module: a subclass that sets these.

    Args:
        density: Fraction of the kernel's entries that `S` keeps, in (0, 1]
            (`nnz = round(density * size)`, at least 1). Default 0.01 when
            `nnz` is not given.
        nnz: The number of entries `S` keeps, an int in `[1, size]` (checked
            in `build`), instead of `density` (give one of the two). This is
            what `sparsify` passes: each layer's count from the allocation.
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
        seed: Seed of the sparse positions (None: drawn from Keras's global random
            state, set by `keras.utils.set_random_seed`). The positions
            are saved with the weights either way.
        sparse_format: `"values"` (nnz values at fixed positions; storage and
            optimizer state scale with nnz) or `"masked"` (a dense kernel with
            a fixed 0/1 mask; use with the `EnforceSparsity` callback).
        sparse_kernel: The sparse matmul kernel, one of `"auto"` (cheapest by
            `keras_dctsparse.ops.kernel_choice`, chosen when the call is
            traced), `"csr"`, `"gather"` or `"materialized"` (dense matmul
            with `S` scattered into an `n x m` tensor in every step; refused
            above `kernel_choice.MAX_MATERIALIZED_ELEMENTS` = 2**24 entries).
            See `keras_dctsparse.ops.sparse_matmul`; the kernels each backend
            has are `keras_dctsparse.ops.kernel_registry.kernel_names()`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).
    """

    #: The Keras layer class this type replaces in `sparsify` (exact class), or None.
    replaces = None
    #: Config keys of the replaced Keras layer carried over by `config_from`, besides
    #: `COMMON_CONFIG_KEYS`.
    carried_keys = ()
    #: Config key of the replaced layer's kernel regularizer (-> `sparse_regularizer`).
    kernel_regularizer_key = "kernel_regularizer"
    #: How `keras_dctsparse.export.tflite` exports the layer: "matrix", "conv" or None.
    export_kind = None

    # Keras layer class -> registered DCTpS class (filled by `__init_subclass__`).
    _registry = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("replaces") is not None:
            DCTSparseLayer._registry[cls.replaces] = cls

    @classmethod
    def layer_types(cls):
        """The registered DCTpS layer classes (those that set `replaces`), in definition order."""
        return tuple(DCTSparseLayer._registry.values())

    @classmethod
    def replacement_for(cls, layer):
        """The registered DCTpS class replacing `layer` (its exact class), or None.

        Example:

        >>> DCTSparseLayer.replacement_for(keras.layers.Dense(3)).__name__
        'DCTSparseDense'
        """
        return DCTSparseLayer._registry.get(type(layer))

    @classmethod
    def config_from(cls, layer):
        """The config of this type's replacement of the Keras layer `layer`.

        Carries `COMMON_CONFIG_KEYS` and `carried_keys` over unchanged (when
        present); the kernel regularizer becomes `sparse_regularizer`. The
        density, seed, offset and storage format are left to the caller.

        Args:
            layer: An instance of `cls.replaces`.

        Returns:
            A dict of keyword arguments of `cls`.
        """
        config = layer.get_config()
        keys = COMMON_CONFIG_KEYS + tuple(cls.carried_keys)
        new_config = {key: config[key] for key in keys if key in config}
        regularizer = config.get(cls.kernel_regularizer_key)
        if regularizer is not None:
            new_config["sparse_regularizer"] = regularizer
        return new_config

    @classmethod
    def kernel_shape_of(cls, layer):
        """Shape of the sparse kernel `S` that this type's replacement of `layer` gets.

        Read from the built Keras layer's kernel, else from its config and its
        input shape (`kernel_shape_for`).

        Args:
            layer: An instance of `cls.replaces`.

        Returns:
            A tuple of ints.

        Raises:
            ValueError: If `layer` is not built and has no known input.
        """
        kernel = _kernel_variable(layer)
        if kernel is not None:
            return tuple(int(d) for d in kernel.shape)
        return tuple(cls.kernel_shape_for(layer.get_config(), _input_shape_of(layer)))

    @classmethod
    def kernel_shape_for(cls, config, input_shape):
        """Shape of the sparse kernel of a layer of this type (or the type it replaces).

        Args:
            config: The layer's config (ours or the replaced Keras layer's).
            input_shape: The layer's input shape (batch first).
        """
        raise NotImplementedError

    @classmethod
    def positions_for(cls, config, output_shape):
        """Products of the kernel's matrix view with a vector per example.

        Args:
            config: The layer's config (ours or the replaced Keras layer's).
            output_shape: The layer's static output shape (batch first).

        Returns:
            An int: e.g. the output pixels of a conv, the leading output
            positions of a dense layer.
        """
        raise NotImplementedError

    def offset_macs(self):
        """Multiply-adds of `alpha * D` per output position (0 without an offset).

        The default is a fast DCT over the kernel's `(n, m)` matrix view
        (`dct_matmul_macs`).
        """
        if self.offset != "dct":
            return 0
        return dct_matmul_macs(*self.sparse_weight.matrix_shape)

    def macs(self, output_shape):
        """`(macs, dense_macs)`: forward multiply-adds per example, sparse and dense.

        `macs = min(nnz + offset_macs(), n * m) * positions` (a DCTpS product
        can always be applied densely), `dense_macs = n * m * positions`.

        Args:
            output_shape: The layer's static output shape (batch first).
        """
        self._check_built("macs")
        dense = math.prod(self.sparse_weight.kernel_shape)
        positions = self.positions_for(self.get_config(), output_shape)
        macs = int(round(min(self.nnz + self.offset_macs(), dense) * positions))
        return macs, dense * positions

    def matrix_input(self, x):
        """Export hook of `export_kind="matrix"`: the input as `(rows, n)` for `x @ W`.

        Args:
            x: The layer's input (float32 tensor).
        """
        raise NotImplementedError

    def matrix_output(self, y, x):
        """Export hook of `export_kind="matrix"`: `(rows, m)` products in the output layout.

        Args:
            y: `matrix_input(x) @ W`.
            x: The layer's input, as given to `matrix_input`.

        Returns:
            The linear output in the layer's output shape (bias not yet added).
        """
        raise NotImplementedError

    #: Density of the layers given neither `density` nor `nnz`.
    DEFAULT_DENSITY = 0.01

    def __init__(
        self,
        density=None,
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
        nnz=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if density is not None and nnz is not None:
            raise ValueError(
                "Give one of `density` and `nnz`, not both; received "
                f"density={density!r}, nnz={nnz!r}."
            )
        if nnz is None:
            self.density = validation.check_density(
                self.DEFAULT_DENSITY if density is None else density
            )
            self.requested_nnz = None
        else:
            self.density = None
            self.requested_nnz = validation.check_nnz(nnz)
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
        self.sparse_kernel_name = kernel_registry.check_kernel_name(
            sparse_kernel, argument="sparse_kernel"
        )
        # A kernel XLA cannot compile (CSR) forbids compiling the model whole (Keras
        # checks this for jit_compile="auto"); "auto" never picks one inside XLA.
        self.supports_jit = self.sparse_format == "masked" or kernel_registry.is_xla_safe(
            self.sparse_kernel_name
        )
        self.sparse_weight = None
        self._alpha = None
        self.bias = None

    def build_sparse_part(self, kernel_shape, bias_size):
        """Creates `S`, `alpha` and the bias. Called by the subclasses' `build`.

        Args:
            kernel_shape: Shape of the sparse kernel `S`.
            bias_size: Length of the bias vector, or the bias shape as a tuple.

        Raises:
            ValueError: If `nnz` exceeds the kernel's size, or the layer's
                `sparse_kernel` cannot run a kernel of this shape.
        """
        self.sparse_weight = SparseWeight(
            kernel_shape,
            self.density,
            self.sparse_format,
            self.sparse_initializer,
            self.sparse_regularizer,
            self.sparse_constraint,
            self.seed,
            nnz=self.requested_nnz,
            layer_name=self.name,
        )
        if self.sparse_format == "values" and self.sparse_kernel_name != kernel_registry.AUTO:
            kernel_registry.get_kernel(self.sparse_kernel_name).check_shape(
                *self.sparse_weight.matrix_shape, argument="sparse_kernel", layer_name=self.name
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
                shape=tuple(bias_size) if isinstance(bias_size, (tuple, list)) else (bias_size,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )

    def matrix_product(self, x, alpha=None):
        """`alpha * D x + x @ S` over the kernel's `(n, m)` matrix view, as one op.

        The op is the layer's `sparse_kernel` (or the backend's choice for
        `"auto"`) from `keras_dctsparse.ops.kernel_registry`; with the masked
        format, the registry's dense product of the masked kernel.

        Args:
            x: Float tensor of shape `(batch, n)`.
            alpha: None (no offset: `x @ S`), or the scalar `alpha` in the dtype of `x`.

        Returns:
            Tensor of shape `(batch, m)`, the dtype of `x`.
        """
        weight = self.sparse_weight
        units = weight.matrix_shape[1]
        if weight.sparse_format == "masked":
            matrix = ops.reshape(weight.dense_kernel(dtype=x.dtype), weight.matrix_shape)
            return kernel_registry.dense_matmul(x, matrix, units, alpha=alpha)
        # The (2, nnz) positions whole: a kernel that takes them (native) reads them without
        # the copy that splitting them can cost; the registry splits them for the others.
        values = ops.convert_to_tensor(weight.values)
        return kernel_registry.matmul(
            x, values, None, None, units, kernel=self.sparse_kernel_name, alpha=alpha,
            positions=weight.positions_tensor(),
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
    #: Whether the probed linear map is the matrix product `inputs @ kernel` of 2-D
    #: `inputs` (dense-like layers). Then one kernel entry's gradient is the sampled dot
    #: product `sum_b inputs[b, row] * output_gradient[b, col]`, which RigL uses to score
    #: sampled candidates of kernels too large to score whole; otherwise (convolutions)
    #: RigL scores whole blocks of `kernel_gradient` only.
    linear_map_is_matmul = False

    def observe_linear_output(self, inputs, outputs, **context):
        """Passes the linear output through `linear_output_probe` when one is set.

        Args:
            inputs: The input of the linear map, in the form `kernel_gradient` takes.
            outputs: The linear output `W x` (activation not yet applied; the bias not
                yet added, except by the native conv path, which adds it in the same op:
                probes only differentiate w.r.t. `outputs` or add to it, which the
                bias does not change).
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
        For layers whose linear map is `inputs @ kernel` (`linear_map_is_matmul`) it is
        `inputs^T output_gradient`; other layer types override it.

        Args:
            inputs: The linear map's input, as passed to `observe_linear_output`.
            output_gradient: The loss gradient w.r.t. the linear output.
            context: The context passed to `observe_linear_output`.
            first_col: First column of the block.
            last_col: One past the last column of the block.

        Returns:
            A `(rows, last_col - first_col)` tensor.
        """
        if not self.linear_map_is_matmul:
            raise NotImplementedError
        return ops.matmul(ops.transpose(inputs), output_gradient[:, first_col:last_col])

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
                "nnz": self.requested_nnz,
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
