"""`sparsify`: turn a dense Keras model into a DCT-plus-sparse one.

Every layer whose exact class is one a registered DCTpS layer type replaces
(`DCTSparseLayer.layer_types()`: `keras.layers.Dense`, `Conv1D`, `Conv2D`,
`DepthwiseConv2D`, `EinsumDense`) is replaced by that type, configured by its
`config_from` hook; the densities come from `allocate_densities` over the kernel
shapes of the replaced layers, and each new layer gets its nonzero count
(`nnz=`) from the allocation, exactly. All other layers are cloned from their config
and get the original weights (BatchNorm statistics, ...).
"""

import keras

from keras_dctsparse.allocation import METHODS
from keras_dctsparse.allocation import check_density
from keras_dctsparse.allocation import allocate_densities
from keras_dctsparse.layers import DCTSparseLayer
from keras_dctsparse.report import ordered_layers

__all__ = ["sparsify"]


def _excluded(layer, exclude):
    names = {e for e in exclude if isinstance(e, str)}
    classes = tuple(e for e in exclude if isinstance(e, type))
    return layer.name in names or (bool(classes) and isinstance(layer, classes))


def _sparse_config(layer, nnz, seed, offset, sparse_format, layer_kwargs):
    config = DCTSparseLayer.replacement_for(layer).config_from(layer)
    config.update(nnz=nnz, offset=offset, seed=seed, sparse_format=sparse_format)
    config.update(layer_kwargs)
    return config


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
    """Returns a new model whose Dense, Conv and EinsumDense layers are DCT-plus-sparse.

    Every layer whose class is exactly `keras.layers.Dense`, `Conv1D`, `Conv2D`,
    `DepthwiseConv2D` or `EinsumDense` (subclasses are left alone; the list is
    `DCTSparseLayer.layer_types()`, each type's `replaces`) is replaced by
    `DCTSparseDense`, `DCTSparseConv1D`, `DCTSparseConv2D`,
    `DCTSparseDepthwiseConv2D` or `DCTSparseEinsumDense` with the same
    configuration (units / filters, kernel size, strides, padding, data format,
    dilation, groups, depth multiplier, equation, output shape, bias axes,
    activation, `use_bias`, bias initializer / regularizer /
    constraint, activity regularizer, name, dtype, trainable); the kernel
    regularizer becomes the sparse regularizer. The kernel initializer and
    constraint are not carried over: the sparse part is initialized as the
    DCTpS layers do (zeros with the offset, He-normal without) unless
    `sparse_initializer` is given in `layer_kwargs`. The original kernels are
    not copied: the new layers start from the DCT offset.

    The global `density` is spread over the replaced layers by
    `allocate_densities(kernel_shapes, density, distribution)`: layer `i` (in
    model order, nested models expanded) gets `nnz=allocation.nnz[i]` nonzeros
    (exactly; its config holds that `nnz`, not a density) and seed `seed + i`. The new
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
    density = check_density(density)
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
            DCTSparseLayer.replacement_for(layer) is not None
            and not _excluded(layer, exclude)
            and all(layer is not t for t in targets)
        ):
            targets.append(layer)
    plan = {}
    if targets:
        allocation = allocate_densities(
            [
                DCTSparseLayer.replacement_for(layer).kernel_shape_of(layer)
                for layer in targets
            ],
            density,
            distribution.lower(),
        )
        for index, layer in enumerate(targets):
            layer_seed = None if seed is None else int(seed) + index
            plan[id(layer)] = (allocation.nnz[index], layer_seed)

    copies = []

    def clone_function(layer):
        if id(layer) in plan:
            layer_nnz, layer_seed = plan[id(layer)]
            config = _sparse_config(
                layer, layer_nnz, layer_seed, offset, sparse_format, layer_kwargs
            )
            return DCTSparseLayer.replacement_for(layer)(**config)
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
