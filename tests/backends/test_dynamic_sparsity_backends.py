"""RigL and SET (`keras_dctsparse.dynamic_sparsity`) on whichever Keras backend is active.

Written with `keras.ops` and numpy only (no `tf.data`: the batches are a list of numpy
tuples), so the same tests run under TensorFlow (default run) and, through
`tests/test_backends.py`, under JAX and PyTorch. One update is checked against a numpy
reference of the dense kernel gradient (grown positions are its largest free entries),
the support invariants (nnz, sorted unique positions, smallest dropped), the values and
Adam slots of grown (zero) and kept (carried) entries, and the layer's output with the
new positions; `model.fit` with RigL and SET moves positions of dense and conv layers,
trains the grown entries and saves the moved positions.
"""

import keras
import numpy as np
import pytest

from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse import DCTSparseDepthwiseConv2D
from keras_dctsparse import DynamicSparsity
from keras_dctsparse import RigL
from dynamic_sparsity_checks import by_key
from dynamic_sparsity_checks import check_update
from dynamic_sparsity_checks import column_major_keys
from dynamic_sparsity_checks import trained_dense_case
from dynamic_sparsity_checks import trained_one_step
from layer_reference import conv_reference
from layer_reference import numpy_sparse
from numpy_reference import im2col


def test_rigl_dense_layer_with_offset_matches_numpy():
    model, layer, x, y, dense_gradient, reference_output = trained_dense_case()
    check_update(model, layer, x, y, dense_gradient)
    np.testing.assert_allclose(model.predict(x, verbose=0), reference_output(), rtol=1e-4,
                               atol=1e-5)


def test_rigl_conv_layer_with_offset_matches_numpy():
    rng = np.random.default_rng()
    x = rng.normal(size=(4, 7, 7, 3)).astype("float32")
    y = rng.normal(size=(4, 7, 7, 5)).astype("float32")
    layer = DCTSparseConv2D(5, 3, padding="same", density=0.2, seed=4,
                            sparse_initializer="random_normal")
    model = keras.Sequential([keras.Input((7, 7, 3)), layer])
    trained_one_step(model, x, y)
    patches = im2col(x.astype(np.float64), (3, 3), (1, 1), "same", (1, 1)).reshape(-1, 27)

    def dense_gradient():
        residual = conv_reference(layer, x)[0] - y
        return 2.0 / residual.size * patches.T @ residual.reshape(-1, 5)

    check_update(model, layer, x, y, dense_gradient)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), conv_reference(layer, x)[0], rtol=1e-4, atol=1e-5
    )


def test_rigl_depthwise_conv_matches_numpy():
    rng = np.random.default_rng()
    x = rng.normal(size=(3, 6, 6, 4)).astype("float32")
    y = rng.normal(size=(3, 6, 6, 8)).astype("float32")
    layer = DCTSparseDepthwiseConv2D(3, depth_multiplier=2, padding="same", density=0.3,
                                     offset=None, use_bias=False, seed=5)
    model = keras.Sequential([keras.Input((6, 6, 4)), layer])
    trained_one_step(model, x, y)
    # (batch, h, w, taps, channel) patches; output channel c * 2 + m.
    patches = im2col(x.astype(np.float64), (3, 3), (1, 1), "same", (1, 1))
    patches = patches.reshape(*patches.shape[:-1], 9, 4)

    def predict():
        kernel = numpy_sparse(layer).reshape(9, 4, 2)
        return np.einsum("bhwtc,tcm->bhwcm", patches, kernel).reshape(3, 6, 6, 8)

    def dense_gradient():
        residual = (predict() - y).reshape(3, 6, 6, 4, 2)
        gradient = np.einsum("bhwtc,bhwcm->tcm", patches, residual) * 2.0 / y.size
        return gradient.reshape(36, 2)

    check_update(model, layer, x, y, dense_gradient)
    np.testing.assert_allclose(model.predict(x, verbose=0), predict(), rtol=1e-4, atol=1e-5)


def test_sampled_candidates_keep_the_support_valid():
    # Above max_scored_elements RigL scores sampled free candidates (gathered products).
    rng = np.random.default_rng()
    x = rng.normal(size=(8, 40)).astype("float32")
    y = rng.normal(size=(8, 30)).astype("float32")
    layer = DCTSparseDense(30, density=0.05, sparse_initializer="random_normal")
    model = keras.Sequential([keras.Input((40,)), layer])
    trained_one_step(model, x, y)
    before = column_major_keys(layer)
    callback = RigL([(x, y)], max_scored_elements=100, candidates=3, seed=0)
    callback.set_model(model)
    callback.update(step=2, fraction=0.5)
    after = column_major_keys(layer)
    assert after.size == before.size and np.all(np.diff(after) > 0)
    assert np.setdiff1d(after, before).size == int(0.5 * layer.nnz)


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_fit_moves_positions_of_dense_and_conv_layers(method, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((64, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, 64)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            DCTSparseConv2D(4, 3, density=0.2, activation="relu", seed=0),
            keras.layers.Flatten(),
            DCTSparseDense(12, density=0.1, activation="relu", seed=1),
            DCTSparseDense(3, density=0.3, seed=2),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sparse = [layer for layer in model.layers if hasattr(layer, "nnz")]
    before = [column_major_keys(layer) for layer in sparse]
    callback = DynamicSparsity(method, data=batches if method == "rigl" else None,
                               update_every=2, drop_fraction=0.5, end_step=12)
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0, shuffle=False,
                        callbacks=[callback])
    assert np.all(np.isfinite(history.history["loss"]))
    assert {u["step"] for u in callback.updates} == {2, 4, 6, 8, 10}
    for layer, keys in zip(sparse, before):
        after = column_major_keys(layer)
        assert after.size == keys.size == layer.nnz and np.all(np.diff(after) > 0)
        assert not np.array_equal(after, keys), layer.name  # every layer moved
    # fit trained on with the moved positions: each layer's last grown entries are still
    # held (fit's own state did not restore older positions) and have left zero.
    last = {u["layer"]: u["grown"] for u in callback.updates}  # the latest per layer
    for layer in sparse:
        values = by_key(layer, layer.sparse_weight.values)
        assert set(last[layer.name].tolist()) <= set(values)
        assert any(values[k] != 0.0 for k in last[layer.name].tolist()), layer.name
    # A model saved after the moves reloads with the moved positions and outputs.
    path = str(tmp_path / "moved.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    for layer, copy in zip(sparse, [l for l in restored.layers if hasattr(l, "nnz")]):
        np.testing.assert_array_equal(column_major_keys(copy), column_major_keys(layer))
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
