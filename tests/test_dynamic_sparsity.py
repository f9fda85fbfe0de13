"""RigL and SET with TensorFlow-only features: `tf.data` input, gradient blocks, SET's
randomness, resuming from a save, MirroredStrategy and a layer too big to score densely.

The numpy-reference checks of one update (dense, conv and depthwise layers) run under
every backend in `tests/backends/test_dynamic_sparsity_backends.py`.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse import RigL
from keras_dctsparse import SET
from keras_dctsparse import DynamicSparsity
from dynamic_sparsity_checks import check_update
from dynamic_sparsity_checks import column_major_keys
from dynamic_sparsity_checks import trained_dense_case
from dynamic_sparsity_checks import trained_one_step


def test_rigl_with_tf_data_matches_numpy():
    model, layer, x, y, dense_gradient, _ = trained_dense_case()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
    check_update(model, layer, x, y, dense_gradient, data=data)


def test_rigl_gradient_blocks_choose_as_one_block():
    rng = np.random.default_rng()
    n, m = 40, 30
    x = rng.normal(size=(8, n)).astype("float32")
    y = rng.normal(size=(8, m)).astype("float32")
    layer = DCTSparseDense(m, density=0.05, sparse_initializer="random_normal")
    model = keras.Sequential([keras.Input((n,)), layer])
    trained_one_step(model, x, y)

    def dense_gradient():
        residual = model.predict(x, verbose=0).astype(np.float64) - y
        return 2.0 / residual.size * x.T.astype(np.float64) @ residual

    # Blocks of 3 columns (120 entries) give the same choice as one block.
    gradient = dense_gradient()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    before = column_major_keys(layer)
    callback = RigL(data, block_elements=120, seed=0)
    callback.set_model(model)
    callback.update(step=1, fraction=0.5)
    grown = np.setdiff1d(column_major_keys(layer), before)
    scores = np.abs(gradient.reshape(-1, order="F"))
    scores[before] = -1
    np.testing.assert_array_equal(grown, np.sort(np.argsort(-scores)[: grown.size]))


def test_set_grows_at_random_free_positions():
    rng = np.random.default_rng()
    x = rng.normal(size=(8, 20)).astype("float32")
    y = rng.normal(size=(8, 12)).astype("float32")
    layer = DCTSparseDense(12, density=0.1, sparse_initializer="random_normal")
    model = keras.Sequential([keras.Input((20,)), layer])
    trained_one_step(model, x, y)
    check_update(model, layer, x, y, dense_gradient=lambda: None, method="set", fraction=0.5)
    # Different seeds grow at different positions.
    grown = []
    for seed in (0, 1):
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        trained_one_step(clone, x, y)
        before = column_major_keys(clone.layers[0])
        callback = SET(seed=seed)
        callback.set_model(clone)
        callback.update(step=5, fraction=0.5)
        grown.append(np.setdiff1d(column_major_keys(clone.layers[0]), before).tolist())
    assert grown[0] != grown[1]


def small_model():
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            DCTSparseConv2D(4, 3, density=0.2, activation="relu", seed=0),
            keras.layers.Flatten(),
            DCTSparseDense(12, density=0.1, activation="relu", seed=1),
            DCTSparseDense(3, density=0.3, seed=2),
        ]
    )


def small_data(batch=16):
    rng = np.random.default_rng(0)
    x = rng.random((64, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, 64)
    return x, y, tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_fit_moves_positions_and_keeps_nnz(method):
    x, y, data = small_data()
    model = small_model()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    before = [column_major_keys(layer) for layer in model.layers if hasattr(layer, "nnz")]
    callback = DynamicSparsity(method, data=data, update_every=2, drop_fraction=0.5, end_step=12)
    history = model.fit(data, epochs=4, verbose=0, callbacks=[callback])
    assert np.all(np.isfinite(history.history["loss"]))
    assert {u["step"] for u in callback.updates} == {2, 4, 6, 8, 10}
    sparse = [layer for layer in model.layers if hasattr(layer, "nnz")]
    for layer, keys in zip(sparse, before):
        after = column_major_keys(layer)
        assert after.size == keys.size and np.all(np.diff(after) > 0)
    assert any(not np.array_equal(column_major_keys(l), k) for l, k in zip(sparse, before))


def test_saved_mid_training_reloads_moved_positions(tmp_path):
    x, y, data = small_data()
    model = small_model()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    before = column_major_keys(model.layers[2])
    model.fit(data, epochs=2, verbose=0,
              callbacks=[RigL(data, update_every=2, drop_fraction=0.5, end_step=100)])
    moved = column_major_keys(model.layers[2])
    assert not np.array_equal(moved, before)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(column_major_keys(restored.layers[2]), moved)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    # Training resumes with the moved positions and the restored optimizer state.
    restored.fit(data, epochs=1, verbose=0,
                 callbacks=[RigL(data, update_every=2, drop_fraction=0.5, end_step=100)])


def test_argument_errors():
    _, _, data = small_data()
    with pytest.raises(ValueError, match="`method` must be one of"):
        DynamicSparsity("prune")
    with pytest.raises(ValueError, match="`data` is required for method='rigl'"):
        DynamicSparsity("rigl")
    with pytest.raises(ValueError, match="update_every=0"):
        SET(update_every=0)
    with pytest.raises(ValueError, match="drop_fraction=1.5"):
        SET(drop_fraction=1.5)
    with pytest.raises(ValueError, match="end_step=-3"):
        SET(end_step=-3)
    model = keras.Sequential(
        [keras.Input((8,)), DCTSparseDense(4, density=0.5, sparse_format="masked")]
    )
    model.compile("adam", "mse")
    with pytest.raises(ValueError, match="needs sparse_format='values'"):
        model.fit(np.ones((4, 8)), np.ones((4, 4)), verbose=0, callbacks=[SET()])


def test_oversized_conv_kernel_is_refused():
    x, y, data = small_data()
    model = small_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(data, epochs=1, verbose=0)
    callback = RigL(data, max_scored_elements=50)
    callback.set_model(model)
    with pytest.raises(ValueError, match="Raise max_scored_elements"):
        callback.update(step=1, fraction=0.3)


MIRRORED_SCRIPT = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from keras_dctsparse import DCTSparseDense, RigL
rng = np.random.default_rng(0)
x = rng.random((128, 20)).astype("float32"); y = rng.integers(0, 3, 128)
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)

def run(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((20,)),
            DCTSparseDense(16, density=0.1, activation="relu", seed=0),
            DCTSparseDense(3, density=0.3, seed=1)])
        model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    callback = RigL(data, update_every=2, drop_fraction=0.5, end_step=100)
    losses = model.fit(data, epochs=3, verbose=0, callbacks=[callback]).history["loss"]
    return model, losses, callback

single, losses_single, _ = run(tf.distribute.get_strategy())
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
mirrored, losses_mirrored, callback = run(strategy)
assert len(callback.updates) == 2 * 6
for a, b in zip(single.layers, mirrored.layers):
    replicas = [v.numpy() for v in b.sparse_weight.indices.value.values]
    assert len(replicas) == 2
    np.testing.assert_array_equal(replicas[0], replicas[1])
    values = [v.numpy() for v in b.sparse_weight.values.value.values]
    np.testing.assert_array_equal(values[0], values[1])
    np.testing.assert_array_equal(replicas[0], a.sparse_weight.indices.numpy())
np.testing.assert_allclose(losses_mirrored, losses_single, rtol=1e-4)
print("MIRRORED OK")
"""


def test_mirrored_replicas_hold_the_same_positions():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, env=env,
        timeout=600,
    )
    assert "MIRRORED OK" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]


def test_rigl_on_a_layer_too_big_to_score_densely():
    # 100,000 x 100,000 (1e10 entries) at density 1e-6: RigL scores sampled free
    # candidates; nothing of size n * m is allocated.
    rng = np.random.default_rng()
    x = rng.standard_normal((4, 100_000)).astype("float32")
    y = rng.standard_normal((4, 100_000)).astype("float32")
    layer = DCTSparseDense(100_000, density=1e-6, seed=0, sparse_initializer="random_normal")
    model = keras.Sequential([keras.Input((100_000,)), layer])
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    model.fit(data, epochs=1, verbose=0)
    before = column_major_keys(layer)
    callback = RigL(data, candidates=4, seed=0)
    callback.set_model(model)
    callback.update(step=1, fraction=0.5)
    after = column_major_keys(layer)
    assert after.size == before.size == 10_000 and np.all(np.diff(after) > 0)
    assert np.setdiff1d(after, before).size == 5_000
    assert after.max() < 100_000 * 100_000
