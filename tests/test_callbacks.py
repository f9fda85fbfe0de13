import keras
import numpy as np
import pytest

from keras_dctsparse import DCTSparseDense
from keras_dctsparse import EnforceSparsity
from keras_dctsparse.callbacks import sparse_layers


def masked_model():
    return keras.Sequential(
        [
            keras.Input((32,)),
            DCTSparseDense(24, density=0.1, sparse_format="masked", activation="relu"),
            keras.layers.Dense(8),
            DCTSparseDense(4, density=0.2, sparse_format="masked", offset=None),
        ]
    )


def pruned_entries(layer):
    weight = layer.sparse_weight
    return weight.masked_kernel.numpy()[weight.mask.numpy() == 0]


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.01, momentum=0.9, weight_decay=0.01),
        lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
    ],
)
def test_pruned_entries_stay_exactly_zero(optimizer):
    rng = np.random.default_rng()
    model = masked_model()
    model.compile(optimizer(), "mse")
    layers = sparse_layers(model)
    assert len(layers) == 2

    seen_during_fit = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen_during_fit.append(max(np.abs(pruned_entries(l)).max() for l in layers))

    # Make the pruned entries nonzero first: the callback must clean them up.
    for layer in layers:
        layer.sparse_weight.masked_kernel.assign(
            0.1 * rng.standard_normal(layer.sparse_weight.kernel_shape)
        )
    x = rng.standard_normal((64, 32)).astype(np.float32)
    model.fit(x, rng.standard_normal((64, 4)), epochs=2, batch_size=8, verbose=0,
              callbacks=[EnforceSparsity(), Probe()])
    assert max(seen_during_fit) == 0.0
    for layer in layers:
        assert np.all(pruned_entries(layer) == 0.0)
        kept = layer.sparse_weight.masked_kernel.numpy()[layer.sparse_weight.mask.numpy() == 1]
        assert np.count_nonzero(kept) > 0 and np.all(np.isfinite(kept))


def test_without_callback_weight_decay_moves_pruned_entries():
    # The failure EnforceSparsity exists for: momentum/decay act on pruned entries.
    rng = np.random.default_rng()
    model = masked_model()
    model.compile(keras.optimizers.AdamW(0.01, weight_decay=0.1), "mse")
    layer = sparse_layers(model)[0]
    layer.sparse_weight.masked_kernel.assign(np.ones(layer.sparse_weight.kernel_shape))
    model.fit(rng.standard_normal((16, 32)), rng.standard_normal((16, 4)), verbose=0)
    assert np.abs(pruned_entries(layer)).max() > 0


def test_values_layers_have_nothing_to_enforce():
    model = keras.Sequential([keras.Input((8,)), DCTSparseDense(4, density=0.5)])
    model.compile("adam", "mse")
    callback = EnforceSparsity()
    model.fit(np.ones((4, 8)), np.ones((4, 4)), verbose=0, callbacks=[callback])
    assert callback._masked_layers == []
    assert model.layers[0].sparse_weight.enforce_mask() is False


def test_sparse_layers_finds_nested_models():
    inner = keras.Sequential([keras.Input((8,)), DCTSparseDense(4)])
    outer = keras.Sequential([keras.Input((8,)), inner, DCTSparseDense(2)])
    assert len(sparse_layers(outer)) == 2


def test_enforce_mask_clears_non_finite_pruned_entries():
    model = masked_model()
    layer = sparse_layers(model)[0]
    layer.sparse_weight.masked_kernel.assign(
        np.full(layer.sparse_weight.kernel_shape, np.inf, np.float32)
    )
    assert layer.sparse_weight.enforce_mask()
    assert np.all(pruned_entries(layer) == 0.0)
