"""Shared checks of one RigL / SET update (`keras_dctsparse.dynamic_sparsity`), any backend.

Used by `tests/test_dynamic_sparsity.py` (TensorFlow-only features: `tf.data`,
`MirroredStrategy`, huge layers) and `tests/backends/test_dynamic_sparsity_backends.py`
(the numpy-reference checks, run under every backend).
"""

import keras
import numpy as np

from keras_dctsparse import DCTSparseDense
from keras_dctsparse import DynamicSparsity
from keras_dctsparse.dynamic_sparsity import optimizer_slots
from numpy_reference import dct_block


def column_major_keys(layer):
    """The layer's positions as column-major flat indices of its matrix view."""
    rows, cols = keras.ops.convert_to_numpy(layer.sparse_weight.indices).astype(np.int64)
    return cols * layer.sparse_weight.matrix_shape[0] + rows


def by_key(layer, variable):
    """`{column-major key: entry}` for a variable aligned with the layer's values."""
    values = keras.ops.convert_to_numpy(variable)
    return dict(zip(column_major_keys(layer).tolist(), values.tolist()))


def slots_by_key(model, layer):
    """The optimizer slots of the layer's values, each as `by_key`."""
    slots = optimizer_slots(model.optimizer, layer.sparse_weight.values)
    return {slot.name: by_key(layer, slot) for slot in slots}


def trained_one_step(model, x, y):
    """Compiles `model` with Adam and MSE and trains one full-batch step (slots nonzero)."""
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)


def trained_dense_case():
    """A `DCTSparseDense` with the offset, trained one step, and its numpy references.

    Returns:
        `(model, layer, x, y, dense_gradient, reference_output)`: the two functions
        compute, from the layer's current weights with numpy, the MSE loss gradient
        w.r.t. the whole `(n, m)` kernel on `(x, y)` and the layer's output on `x`.
    """
    rng = np.random.default_rng()
    n, m, batch = 24, 10, 16
    x = rng.normal(size=(batch, n)).astype("float32")
    y = rng.normal(size=(batch, m)).astype("float32")
    layer = DCTSparseDense(m, density=0.2, sparse_initializer="random_normal", seed=3)
    model = keras.Sequential([keras.Input((n,)), layer])
    trained_one_step(model, x, y)

    def reference_output():
        rows, cols = keras.ops.convert_to_numpy(layer.sparse_weight.indices)
        kernel = float(keras.ops.convert_to_numpy(layer.alpha)) * dct_block(m, n).T
        kernel[rows, cols] += keras.ops.convert_to_numpy(layer.sparse_weight.values)
        return x.astype(np.float64) @ kernel + keras.ops.convert_to_numpy(layer.bias)

    def dense_gradient():
        residual = reference_output() - y
        return 2.0 / residual.size * x.T.astype(np.float64) @ residual

    return model, layer, x, y, dense_gradient, reference_output


def check_update(model, layer, x, y, dense_gradient, method="rigl", data=None,
                 fraction=0.25):
    """Runs one update on batch (x, y) and checks it.

    Checks: nnz kept, positions unique and sorted column-major, the dropped entries
    the smallest, (RigL) the grown positions the largest free entries of
    `dense_gradient()` (a numpy `(rows, cols)` array, computed before the update),
    grown values and optimizer slots zero, kept ones carried over.

    Args:
        model: A compiled, trained model holding `layer`.
        layer: The DCTpS layer to check.
        x, y: The batch RigL scores on.
        dense_gradient: Callable returning the numpy reference gradient (RigL only).
        method: `"rigl"` or `"set"`.
        data: The callback's data (default: the list `[(x, y)]`).
        fraction: Drop fraction of the update.

    Returns:
        The callback.
    """
    keys_before = column_major_keys(layer)
    values_before = by_key(layer, layer.sparse_weight.values)
    slots_before = slots_by_key(model, layer)
    assert len(slots_before) == 2  # Adam: momentum and velocity
    assert any(v != 0 for slot in slots_before.values() for v in slot.values())
    gradient = dense_gradient() if method == "rigl" else None
    data = [(x, y)] if data is None else data
    callback = DynamicSparsity(method, data=data if method == "rigl" else None, seed=1)
    callback.set_model(model)
    callback.update(step=1, fraction=fraction)
    count = int(fraction * layer.nnz)

    keys_after = column_major_keys(layer)
    assert keys_after.size == keys_before.size == layer.nnz
    assert np.all(np.diff(keys_after) > 0)  # unique, sorted column-major
    dropped = sorted(set(keys_before.tolist()) - set(keys_after.tolist()))
    grown = sorted(set(keys_after.tolist()) - set(keys_before.tolist()))
    assert len(dropped) == len(grown) == count
    magnitudes = np.abs([values_before[k] for k in keys_before.tolist()])
    assert np.abs([values_before[k] for k in dropped]).max() <= np.sort(magnitudes)[count]
    if method == "rigl":
        scores = np.abs(gradient.reshape(-1, order="F"))  # column-major keys
        scores[keys_before] = -1.0
        expected = np.sort(np.argsort(-scores, kind="stable")[:count])
        np.testing.assert_array_equal(grown, expected)
    values_after = by_key(layer, layer.sparse_weight.values)
    kept = set(keys_after.tolist()) & set(keys_before.tolist())
    assert all(values_after[k] == 0.0 for k in grown)
    assert all(values_after[k] == values_before[k] for k in kept)
    for name, slot in slots_by_key(model, layer).items():
        assert all(slot[k] == 0.0 for k in grown)
        assert all(slot[k] == slots_before[name][k] for k in kept)
    return callback
