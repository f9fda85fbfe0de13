"""Callbacks for training DCTpS models with `model.fit`."""

import keras

from keras_dctsparse.layers.base import DCTSparseLayer

__all__ = ["EnforceSparsity", "sparse_layers"]


def sparse_layers(model):
    """All DCTpS layers of `model`, nested models and layers included, in order.

    Args:
        model: A Keras model or layer.

    Returns:
        List of `DCTSparseLayer` instances.

    Example:

    >>> model = keras.Sequential([keras.Input((8,)), DCTSparseDense(4)])
    >>> len(sparse_layers(model))
    1
    """
    return [
        layer for layer in model._flatten_layers() if isinstance(layer, DCTSparseLayer)
    ]


class EnforceSparsity(keras.callbacks.Callback):
    """Keeps the pruned entries of every masked DCTpS layer exactly zero during `fit`.

    Layers built with `sparse_format="masked"` hold a dense kernel and a fixed
    mask. Their forward pass multiplies by the mask, so pruned entries get no
    gradient, but optimizers with momentum or weight decay still move them.
    This callback writes `kernel * mask` back after every training batch and at
    the end of training, so saved weights are exactly sparse.

    Layers with `sparse_format="values"` store only their kept entries and have
    nothing to enforce: with no masked layer in the model the callback does no
    work after `on_train_begin`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((16,)),
    ...     DCTSparseDense(4, density=0.25, sparse_format="masked"),
    ... ])
    >>> model.compile("adam", "mse")
    >>> history = model.fit(np.ones((8, 16)), np.ones((8, 4)), epochs=1, verbose=0,
    ...                     callbacks=[EnforceSparsity()])
    >>> weight = model.layers[0].sparse_weight
    >>> kernel, mask = np.asarray(weight.masked_kernel), np.asarray(weight.mask)
    >>> bool(np.all(kernel[mask == 0] == 0))  # pruned entries are exactly zero
    True
    """

    def __init__(self):
        super().__init__()
        self._masked_layers = []

    def on_train_begin(self, logs=None):
        self._masked_layers = [
            layer
            for layer in sparse_layers(self.model)
            if layer.sparse_format == "masked"
        ]
        self._enforce()

    def on_train_batch_end(self, batch, logs=None):
        if self._masked_layers:
            self._enforce()

    def on_train_end(self, logs=None):
        self._enforce()

    def _enforce(self):
        if not self._masked_layers:
            return
        # On JAX `fit` keeps the state outside the variables between epochs; reading
        # `self.model` writes it back (Keras's `Callback.model` syncs it) before the
        # assignment, and the next step then reads the enforced values.
        self.model  # noqa: B018 (the property's side effect)
        for layer in self._masked_layers:
            layer.sparse_weight.enforce_mask()
