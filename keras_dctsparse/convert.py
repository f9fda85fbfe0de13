"""`sparsify`: turn a dense Keras model into a DCT-plus-sparse one.

Every `keras.layers.Dense`, `Conv1D`, `Conv2D` and `DepthwiseConv2D` (those
exact classes) is replaced by the matching DCTpS layer with the same
configuration; the densities come from `allocate_densities` over the kernel
shapes of the replaced layers. All other layers are cloned from their config
and get the original weights (BatchNorm statistics, ...).
"""

import keras

from keras_dctsparse.allocation import METHODS
from keras_dctsparse.allocation import _check_density
from keras_dctsparse.allocation import allocate_densities
from keras_dctsparse.layers.conv import DCTSparseConv1D
from keras_dctsparse.layers.conv import DCTSparseConv2D
from keras_dctsparse.layers.conv import DCTSparseDepthwiseConv2D
from keras_dctsparse.layers.dense import DCTSparseDense
from keras_dctsparse.report import ordered_layers

__all__ = ["sparsify"]

_REPLACEMENTS = {
    keras.layers.Dense: DCTSparseDense,
    keras.layers.Conv1D: DCTSparseConv1D,
    keras.layers.Conv2D: DCTSparseConv2D,
    keras.layers.DepthwiseConv2D: DCTSparseDepthwiseConv2D,
}

# Config keys carried over unchanged (when present) to the DCTpS layer.
_COMMON_KEYS = (
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
_CONV_KEYS = ("kernel_size", "strides", "padding", "data_format", "dilation_rate")
_KEYS = {
    keras.layers.Dense: ("units",),
    keras.layers.Conv1D: _CONV_KEYS + ("filters", "groups"),
    keras.layers.Conv2D: _CONV_KEYS + ("filters", "groups"),
    keras.layers.DepthwiseConv2D: _CONV_KEYS + ("depth_multiplier",),
}
_REGULARIZER_KEY = {
    keras.layers.Dense: "kernel_regularizer",
    keras.layers.Conv1D: "kernel_regularizer",
    keras.layers.Conv2D: "kernel_regularizer",
    keras.layers.DepthwiseConv2D: "depthwise_regularizer",
}


def _kernel_shape(layer):
    """Shape of the layer's kernel, read from the built layer or from its config."""
    for attribute in ("_kernel", "kernel", "depthwise_kernel"):
        try:
            kernel = getattr(layer, attribute, None)
        except Exception:  # a property of an unbuilt layer
            kernel = None
        if isinstance(kernel, keras.Variable):
            return tuple(int(d) for d in kernel.shape)
    try:
        input_shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):
        raise ValueError(
            f"sparsify cannot find the kernel shape of layer '{layer.name}': it is not "
            "built and has no known input. Build the model first (e.g. with a "
            "`keras.Input`)."
        ) from None
    config = layer.get_config()
    if type(layer) is keras.layers.Dense:
        return (int(input_shape[-1]), config["units"])
    axis = 1 if config.get("data_format") == "channels_first" else -1
    in_channels = int(input_shape[axis])
    kernel_size = tuple(config["kernel_size"])
    if type(layer) is keras.layers.DepthwiseConv2D:
        return (*kernel_size, in_channels, config["depth_multiplier"])
    return (*kernel_size, in_channels // config.get("groups", 1), config["filters"])


def _excluded(layer, exclude):
    names = {e for e in exclude if isinstance(e, str)}
    classes = tuple(e for e in exclude if isinstance(e, type))
    return layer.name in names or (bool(classes) and isinstance(layer, classes))


def _sparse_config(layer, density, seed, offset, sparse_format, layer_kwargs):
    config = layer.get_config()
    keys = _COMMON_KEYS + _KEYS[type(layer)]
    new_config = {key: config[key] for key in keys if key in config}
    regularizer = config.get(_REGULARIZER_KEY[type(layer)])
    if regularizer is not None:
        new_config["sparse_regularizer"] = regularizer
    new_config.update(
        density=density, offset=offset, seed=seed, sparse_format=sparse_format
    )
    new_config.update(layer_kwargs)
    return new_config


def _is_functional(model):
    """Whether `model` is a Functional `keras.Model` (built from inputs and outputs).

    Keras has no public name for its Functional class; it is the model class that
    is also a `keras.Function` (a graph of operations from inputs to outputs).
    """
    return isinstance(model, keras.Model) and isinstance(model, keras.Function)


def sparsify(
    model,
    density,
    distribution="erk",
    offset="dct",
    seed=None,
    exclude=(),
    sparse_format="values",
    **layer_kwargs,
):
    """Returns a new model whose Dense and Conv layers are DCT-plus-sparse.

    Every layer whose class is exactly `keras.layers.Dense`, `Conv1D`, `Conv2D`
    or `DepthwiseConv2D` (subclasses are left alone) is replaced by
    `DCTSparseDense`, `DCTSparseConv1D`, `DCTSparseConv2D` or
    `DCTSparseDepthwiseConv2D` with the same configuration (units / filters,
    kernel size, strides, padding, data format, dilation, groups, depth
    multiplier, activation, `use_bias`, bias initializer / regularizer /
    constraint, activity regularizer, name, dtype, trainable); the kernel
    regularizer becomes the sparse regularizer. The kernel initializer and
    constraint are not carried over: the sparse part is initialized as the
    DCTpS layers do (zeros with the offset, He-normal without) unless
    `sparse_initializer` is given in `layer_kwargs`. The original kernels are
    not copied: the new layers start from the DCT offset.

    The global `density` is spread over the replaced layers by
    `allocate_densities(kernel_shapes, density, distribution)`, and layer `i`
    (in model order, nested models expanded) gets seed `seed + i`. The new
    layers only ever create their `nnz` values and positions, never a dense
    kernel. Every other layer (BatchNorm, pooling, activations, `Add`, nested
    layers, excluded layers) is cloned from its config and receives a copy of
    the original weights. Nested Sequential/Functional models are converted
    recursively.

    With `density=1` and `offset=None` the result has the dense architecture
    (every kernel entry trainable, no offset).

    Args:
        model: A built `keras.Sequential` or Functional `keras.Model`.
        density: Global density in (0, 1] of the replaced layers' kernels.
        distribution: How the density is spread: `"erk"` (default), `"epl"`,
            `"epf"` or `"uniform"` (see `allocate_densities`).
        offset: `"dct"` (default) for DCTpS, or None for plain random-sparse
            layers.
        seed: None (fresh positions), or an int: layer `i` gets `seed + i`.
        exclude: Layer names (str) and/or layer classes to keep as they are
            (cloned with their weights).
        sparse_format: `"values"` (default) or `"masked"`.
        **layer_kwargs: Extra arguments for every new DCTpS layer (e.g.
            `alpha`, `sparse_initializer`, `sparse_kernel`, `offset_method`).

    Returns:
        A new, built Keras model with the same inputs and output shapes.

    Raises:
        ValueError: If `model` is not Sequential or Functional (subclassed
            models are not supported), `density` is outside (0, 1],
            `distribution` is unknown, or a layer's kernel shape cannot be
            found.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((784,)),
    ...     keras.layers.Dense(300, activation="relu"),
    ...     keras.layers.Dense(10, activation="softmax"),
    ... ])
    >>> sparse = sparsify(model, density=0.01, seed=0)
    >>> [type(layer).__name__ for layer in sparse.layers]
    ['DCTSparseDense', 'DCTSparseDense']
    >>> sum(layer.nnz for layer in sparse.layers)
    2382
    """
    if not (isinstance(model, keras.Sequential) or _is_functional(model)):
        raise ValueError(
            "sparsify supports only Sequential and Functional Keras models; received "
            f"a {type(model).__name__}. Subclassed models cannot be cloned layer by "
            "layer: build the model with the Functional API, or use the DCTpS layers "
            "directly in its code."
        )
    density = _check_density(density)
    if not isinstance(distribution, str) or distribution.lower() not in METHODS:
        raise ValueError(
            f"Argument `distribution` must be one of {METHODS}; received "
            f"distribution={distribution!r}."
        )
    if isinstance(exclude, (str, type)):
        exclude = (exclude,)
    exclude = tuple(exclude)

    targets = []
    for layer in ordered_layers(model):
        if (
            type(layer) in _REPLACEMENTS
            and not _excluded(layer, exclude)
            and all(layer is not t for t in targets)
        ):
            targets.append(layer)
    plan = {}
    if targets:
        allocation = allocate_densities(
            [_kernel_shape(layer) for layer in targets], density, distribution.lower()
        )
        for index, layer in enumerate(targets):
            layer_seed = None if seed is None else int(seed) + index
            plan[id(layer)] = (allocation.densities[index], layer_seed)

    copies = []

    def clone_function(layer):
        if id(layer) in plan:
            layer_density, layer_seed = plan[id(layer)]
            config = _sparse_config(
                layer, layer_density, layer_seed, offset, sparse_format, layer_kwargs
            )
            return _REPLACEMENTS[type(layer)](**config)
        clone = layer.__class__.from_config(layer.get_config())
        copies.append((layer, clone))
        return clone

    input_tensors = None
    if _is_functional(model):
        # New inputs with the original input layers' names (clone_model would
        # name them after the symbolic tensors).
        input_tensors = keras.tree.map_structure(
            lambda x: keras.Input(
                batch_shape=x.shape,
                dtype=x.dtype,
                name=x._keras_history.operation.name,
            ),
            model.input,
        )
    new_model = keras.models.clone_model(
        model,
        input_tensors=input_tensors,
        clone_function=clone_function,
        recursive=True,
    )
    for old, new in copies:
        if old.weights:
            new.set_weights(old.get_weights())
    return new_model
