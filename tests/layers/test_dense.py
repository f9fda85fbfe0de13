import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_dctsparse
from keras_dctsparse import DCTSparseDense
from numpy_reference import assert_sum_close
from numpy_reference import dct_block
from training import assert_mirrored_matches_single


def numpy_sparse(layer):
    """S^T as a dense numpy (n, m) array, read from the layer's weights (not its views)."""
    n, m = layer.sparse_weight.kernel_shape
    dense = np.zeros((n, m))
    if layer.sparse_format == "values":
        rows, cols = layer.sparse_weight.indices.numpy()
        dense[rows, cols] = layer.sparse_weight.values.numpy()
    else:
        dense = layer.sparse_weight.masked_kernel.numpy() * layer.sparse_weight.mask.numpy()
    return dense


def reference_output(layer, x):
    n, m = layer.sparse_weight.kernel_shape
    kernel = numpy_sparse(layer)
    if layer.offset == "dct":
        kernel = kernel + float(layer.alpha.numpy()) * dct_block(m, n).T
    y = x.astype(np.float64) @ kernel
    if layer.use_bias:
        y = y + layer.bias.numpy()
    return y


def assert_close(actual, expected, rtol=1e-5):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize(
    "n, m", [(20, 7), (7, 20), (16, 16), (1, 9), (9, 1), (1, 1), (300, 100)]
)
@pytest.mark.parametrize("sparse_format", ["values", "masked"])
def test_output_matches_scipy_reference(n, m, sparse_format):
    layer = DCTSparseDense(
        m,
        density=0.3,
        sparse_format=sparse_format,
        sparse_initializer="random_normal",
        bias_initializer="random_normal",
        alpha=0.7,
    )
    x = np.random.default_rng().standard_normal((6, n)).astype(np.float32)
    assert_close(layer(x).numpy(), reference_output(layer, x))


@pytest.mark.parametrize("shape", [(5, 3, 12), (2, 3, 4, 12), (12,)])
@pytest.mark.parametrize("sparse_kernel", ["auto", "csr", "gather", "materialized"])
def test_higher_rank_inputs(shape, sparse_kernel):
    layer = DCTSparseDense(
        8, density=0.5, sparse_initializer="random_normal", sparse_kernel=sparse_kernel
    )
    if len(shape) == 1:
        with pytest.raises(ValueError, match="min_ndim=2"):
            layer(np.ones(shape, np.float32))
        return
    x = np.random.default_rng().standard_normal(shape).astype(np.float32)
    y = layer(x).numpy()
    assert y.shape == shape[:-1] + (8,)
    expected = reference_output(layer, x.reshape(-1, 12)).reshape(shape[:-1] + (8,))
    assert_close(y, expected)


def test_zero_initialized_layer_is_the_pure_dct():
    layer = DCTSparseDense(50, density=0.1, use_bias=False)
    x = np.random.default_rng().standard_normal((4, 80)).astype(np.float32)
    assert_close(layer(x).numpy(), x @ dct_block(50, 80).T)
    assert np.all(layer.sparse_weight.values.numpy() == 0)
    assert float(layer.alpha.numpy()) == 1.0


@pytest.mark.parametrize("sparse_kernel", ["auto", "csr", "gather", "materialized"])
@pytest.mark.parametrize("sparse_format", ["values", "masked"])
def test_matches_reference_after_training(sparse_kernel, sparse_format):
    rng = np.random.default_rng()
    x = rng.standard_normal((64, 30)).astype(np.float32)
    y = rng.standard_normal((64, 12)).astype(np.float32)
    layer = DCTSparseDense(
        12, density=0.2, sparse_kernel=sparse_kernel, sparse_format=sparse_format
    )
    model = keras.Sequential([keras.Input((30,)), layer])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, y, epochs=3, batch_size=16, verbose=0,
              callbacks=[keras_dctsparse.EnforceSparsity()])
    assert np.abs(numpy_sparse(layer)).max() > 0.01, "training must move the values"
    assert float(layer.alpha.numpy()) != 1.0
    assert_close(model.predict(x, verbose=0), reference_output(layer, x))


def test_gradients_reach_only_values_alpha_and_bias():
    layer = DCTSparseDense(10, density=0.2, sparse_initializer="random_normal")
    x = tf.constant(np.random.default_rng().standard_normal((5, 25)), tf.float32)
    layer.build(x.shape)
    names = sorted(w.path.split("/")[-1] for w in layer.trainable_weights)
    assert names == ["alpha", "bias", "sparse_values"]
    assert [w.path.split("/")[-1] for w in layer.non_trainable_weights] == [
        "sparse_indices"
    ]
    dy = np.random.default_rng().standard_normal((5, 10))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * dy)
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    # Input gradient through the effective kernel alpha * D^T + S^T.
    kernel = numpy_sparse(layer) + float(layer.alpha.numpy()) * dct_block(10, 25).T
    assert_close(grads[0].numpy(), dy @ kernel.T)
    by_name = {w.path.split("/")[-1]: g for w, g in zip(layer.trainable_weights, grads[1:])}
    rows, cols = layer.sparse_weight.indices.numpy()
    xn = x.numpy().astype(np.float64)
    assert_close(by_name["sparse_values"].numpy(), (xn.T @ dy)[rows, cols])
    # alpha's gradient is one sum of 50 products that may cancel to far below its terms.
    assert_sum_close(by_name["alpha"].numpy(), (xn @ dct_block(10, 25).T) * dy, rtol=1e-5)
    assert_close(by_name["bias"].numpy(), dy.sum(0))


def test_no_weight_or_optimizer_slot_of_dense_size():
    model = keras.Sequential([keras.Input((512,)), DCTSparseDense(512, density=0.001)])
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.ones((4, 512)), np.ones((4, 512)), verbose=0)
    sizes = [int(np.prod(v.shape)) for v in model.variables + model.optimizer.variables]
    assert max(sizes) <= 2 * model.layers[0].nnz
    assert model.layers[0].nnz == 262


def test_views():
    layer = DCTSparseDense(6, density=0.25, sparse_initializer="ones", alpha=2.0, seed=4)
    layer.build((None, 8))
    assert layer.nnz == 12
    sparse = layer.sparse_kernel
    assert isinstance(sparse, tf.SparseTensor)
    assert tuple(sparse.dense_shape.numpy()) == (8, 6)
    flat = sparse.indices.numpy() @ np.array([6, 1])
    assert np.all(np.diff(flat) > 0), "canonical (row-major) order"
    np.testing.assert_allclose(tf.sparse.to_dense(sparse).numpy(), numpy_sparse(layer))
    np.testing.assert_allclose(
        layer.kernel.numpy(), 2.0 * dct_block(6, 8).T + numpy_sparse(layer), atol=1e-6
    )
    unbuilt = DCTSparseDense(3)
    with pytest.raises(AttributeError, match="before it is built"):
        unbuilt.sparse_kernel


def test_plain_sparse_baseline_has_no_offset_and_he_normal_values():
    layer = DCTSparseDense(400, density=0.05, offset=None, use_bias=False, seed=0)
    layer.build((None, 1000))
    assert layer.alpha is None
    values = layer.sparse_weight.values.numpy()
    # He-normal with the dense fan-in (1000): std sqrt(2/1000) (truncated normal).
    assert abs(values.std() - np.sqrt(2 / 1000)) < 0.1 * np.sqrt(2 / 1000)
    x = np.random.default_rng().standard_normal((3, 1000)).astype(np.float32)
    assert_close(layer(x).numpy(), x @ numpy_sparse(layer))


def test_same_seed_same_support():
    first = DCTSparseDense(30, density=0.1, seed=5)
    second = DCTSparseDense(30, density=0.1, seed=5)
    first.build((None, 40))
    second.build((None, 40))
    np.testing.assert_array_equal(
        first.sparse_weight.indices.numpy(), second.sparse_weight.indices.numpy()
    )


def test_huge_layer_builds_trains_and_exports(tmp_path):
    # Dense form: 10^10 weights (40 GB). Sparse form: 10,000 values.
    layer = DCTSparseDense(100_000, density=1e-6, seed=0)
    model = keras.Sequential([keras.Input((100_000,)), layer])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    x = np.random.default_rng().standard_normal((2, 100_000)).astype(np.float32)
    model.fit(x, x, epochs=1, verbose=0)
    assert layer.nnz == 10_000
    assert np.abs(layer.sparse_weight.values.numpy()).max() > 0
    model.export(str(tmp_path / "huge"), verbose=False)
    total = sum(f.stat().st_size for f in (tmp_path / "huge").rglob("*") if f.is_file())
    assert total < 5_000_000
    restored = tf.saved_model.load(str(tmp_path / "huge"))
    assert_close(restored.serve(x).numpy(), model.predict(x, verbose=0), rtol=1e-4)


def test_get_config_round_trip():
    layer = DCTSparseDense(
        7,
        density=0.2,
        offset=None,
        activation="relu",
        use_bias=False,
        alpha=0.5,
        alpha_trainable=False,
        sparse_initializer="glorot_uniform",
        sparse_regularizer="l2",
        seed=3,
        sparse_format="masked",
        sparse_kernel="gather",
        name="dcts",
    )
    config = layer.get_config()
    clone = DCTSparseDense.from_config(config)
    assert clone.get_config() == config
    assert config["units"] == 7 and config["density"] == 0.2 and config["offset"] is None
    clone_via_keras = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone_via_keras, DCTSparseDense)


def test_alpha_not_trainable():
    layer = DCTSparseDense(4, alpha=3.0, alpha_trainable=False)
    layer.build((None, 4))
    assert all(w is not layer.alpha for w in layer.trainable_weights)
    assert any(w is layer.alpha for w in layer.non_trainable_weights)
    assert float(layer.alpha.numpy()) == 3.0


def make_model(sparse_format="values", sparse_kernel="auto"):
    return keras.Sequential(
        [
            keras.Input((64,)),
            DCTSparseDense(48, density=0.1, activation="relu", seed=1,
                           sparse_format=sparse_format, sparse_kernel=sparse_kernel),
            DCTSparseDense(10, density=0.2, seed=2, sparse_format=sparse_format,
                           sparse_kernel=sparse_kernel),
        ]
    )


@pytest.mark.parametrize(
    "sparse_format, sparse_kernel",
    [("values", "auto"), ("values", "csr"), ("values", "gather"),
     ("values", "materialized"), ("masked", "auto")],
)
def test_keras_file_round_trip(tmp_path, sparse_format, sparse_kernel):
    rng = np.random.default_rng()
    x = rng.standard_normal((32, 64)).astype(np.float32)
    model = make_model(sparse_format, sparse_kernel)
    model.compile("adam", "mse")
    model.fit(x, rng.standard_normal((32, 10)), epochs=2, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[0].sparse_kernel_name == sparse_kernel
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for original, restored in zip(model.layers, loaded.layers):
        np.testing.assert_array_equal(
            original.sparse_kernel.indices.numpy(), restored.sparse_kernel.indices.numpy()
        )


@pytest.mark.parametrize("sparse_kernel", ["auto", "csr", "gather", "materialized"])
def test_savedmodel_export_serves_same_outputs(tmp_path, sparse_kernel):
    x = np.random.default_rng().standard_normal((9, 64)).astype(np.float32)
    model = make_model(sparse_kernel=sparse_kernel)
    model.layers[0].sparse_weight.values.assign(
        np.random.default_rng().standard_normal(model.layers[0].nnz)
    )
    model.export(str(tmp_path / "export"), verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "export"))
    served = restored.serve(x).numpy()
    assert_close(served, model.predict(x, verbose=0))


@pytest.mark.parametrize("sparse_kernel", ["materialized", "csr"])
def test_export_does_not_store_the_dct_block(tmp_path, sparse_kernel):
    # 1024 x 1024 float32 is 4 MiB: the materialized kernel generates the DCT
    # block in-graph (folded at run time), it must not be saved as a constant.
    model = keras.Sequential(
        [keras.Input((1024,)),
         DCTSparseDense(1024, density=0.001, sparse_kernel=sparse_kernel)]
    )
    x = np.random.default_rng().standard_normal((4, 1024)).astype(np.float32)
    model.layers[0].sparse_weight.values.assign(
        np.random.default_rng().standard_normal(model.layers[0].nnz)
    )
    model.export(str(tmp_path / "export"), verbose=False)
    total = sum(f.stat().st_size for f in (tmp_path / "export").rglob("*") if f.is_file())
    assert total < 1_000_000, total
    restored = tf.saved_model.load(str(tmp_path / "export"))
    assert_close(restored.serve(x).numpy(), reference_output(model.layers[0], x), rtol=1e-4)


def test_materialized_refused_for_huge_layers():
    layer = DCTSparseDense(100_000, density=1e-6, sparse_kernel="materialized")
    with pytest.raises(ValueError, match="sparse_kernel='materialized'"):
        layer.build((None, 100_000))


def test_keras_file_size_scales_with_nnz(tmp_path):
    sparse = keras.Sequential([keras.Input((4096,)), DCTSparseDense(4096, density=0.001)])
    dense = keras.Sequential([keras.Input((4096,)), keras.layers.Dense(4096)])
    sparse.save(tmp_path / "sparse.keras")
    dense.save(tmp_path / "dense.keras")
    ratio = os.path.getsize(tmp_path / "sparse.keras") / os.path.getsize(tmp_path / "dense.keras")
    assert ratio < 0.01, ratio


@pytest.mark.parametrize(
    "sparse_kernel,density",
    [("gather", 0.3), ("materialized", 0.3), ("csr", 0.3), ("auto", 0.3), ("auto", 0.01)],
)
def test_fit_with_and_without_xla(sparse_kernel, density):
    # "auto" is XLA-safe: inside an XLA compilation it never picks CSR (at
    # density 0.01 with 200x60 it would pick CSR outside XLA at batch 256).
    rng = np.random.default_rng()
    x = rng.standard_normal((256, 200)).astype(np.float32)
    model = keras.Sequential(
        [keras.Input((200,)), DCTSparseDense(60, density=density, sparse_kernel=sparse_kernel)]
    )
    jit = sparse_kernel != "csr"
    assert model.layers[0].supports_jit == jit
    model.compile("adam", "mse", jit_compile=jit if jit else "auto")
    history = model.fit(x, rng.standard_normal((256, 60)), batch_size=256, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    x = np.random.default_rng().standard_normal((8, 40)).astype(np.float32)
    reference = DCTSparseDense(24, density=0.2, sparse_initializer="random_normal", seed=1)
    expected = reference(x).numpy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = DCTSparseDense(24, density=0.2, sparse_initializer="random_normal", seed=1)
        layer.build((None, 40))
        for target, source in zip(layer.weights, reference.weights):
            target.assign(source)
        assert layer.sparse_weight.values.dtype == "float32"
        y = layer(x)
        assert y.dtype == policy.split("_")[1]
        np.testing.assert_allclose(
            np.asarray(y, np.float32), expected, atol=0.05 * np.abs(expected).max()
        )
        model = keras.Sequential([keras.Input((40,)), layer])
        model.compile("adam", "mse")
        history = model.fit(x, np.ones((8, 24)), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("sparse_kernel", ["auto", "csr", "gather", "materialized"])
@pytest.mark.parametrize("density", [0.02, 0.5, 1.0])
def test_float64_layer(sparse_kernel, density):
    layer = DCTSparseDense(
        5, density=density, dtype="float64", sparse_initializer="random_normal",
        sparse_kernel=sparse_kernel,
    )
    x = np.random.default_rng().standard_normal((3, 11))
    y = layer(x)
    assert y.dtype == "float64"
    np.testing.assert_allclose(y.numpy(), reference_output(layer, x), atol=1e-12)


@pytest.mark.parametrize("sparse_kernel", ["auto", "csr", "gather", "materialized"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_shape", [(6,), (2, 3)])
def test_layer_gradients_match_numpy(sparse_kernel, dtype, batch_shape):
    # Gradients of x, values, alpha and bias against the dense numpy kernel,
    # rank 2 and rank 3 inputs.
    n, m = 14, 9
    layer = DCTSparseDense(
        m, density=0.3, dtype=dtype, alpha=0.8, sparse_initializer="random_normal",
        bias_initializer="random_normal", sparse_kernel=sparse_kernel,
    )
    layer.build((None, n))
    rng = np.random.default_rng()
    x = rng.standard_normal(batch_shape + (n,))
    dy = rng.standard_normal(batch_shape + (m,))
    x_tensor = tf.constant(x, dtype)
    with tf.GradientTape() as tape:
        tape.watch(x_tensor)
        loss = tf.reduce_sum(layer(x_tensor) * tf.constant(dy, dtype))
    weights = [layer.sparse_weight.values, layer.alpha, layer.bias]
    dx, dvalues, dalpha, dbias = tape.gradient(loss, [x_tensor] + weights)
    offset = dct_block(m, n)
    kernel = numpy_sparse(layer) + float(layer.alpha.numpy()) * offset.T
    flat_x, flat_dy = x.reshape(-1, n), dy.reshape(-1, m)
    rows, cols = layer.sparse_weight.indices.numpy()
    tolerance = 1e-5 if dtype == "float32" else 1e-12
    assert_close(dx.numpy(), dy @ kernel.T, rtol=tolerance)
    assert_close(dvalues.numpy(), (flat_x.T @ flat_dy)[rows, cols], rtol=tolerance)
    assert_sum_close(dalpha.numpy(), (flat_x @ offset.T) * flat_dy, rtol=tolerance)
    assert_close(dbias.numpy(), flat_dy.sum(axis=0), rtol=tolerance)


MIRRORED_SETUP = """
from keras_dctsparse import DCTSparseDense

rng = np.random.default_rng(0)
x = rng.standard_normal((64, 30)).astype("float32")
y = rng.standard_normal((64, 5)).astype("float32")

def build():
    model = keras.Sequential([
        keras.Input((30,)),
        DCTSparseDense(20, density=0.2, activation="tanh", seed=1,
                       sparse_initializer="random_normal"),
        DCTSparseDense(5, density=0.3, seed=2)])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    return model
"""


def test_mirrored_strategy_matches_single_device():
    assert_mirrored_matches_single(
        MIRRORED_SETUP, batch_size=16, loss_rtol=1e-5, weight_rtol=1e-4, weight_atol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"units": 0}, "units=0"),
        ({"units": 2.5}, "units=2.5"),
        ({"units": 4, "density": 0.0}, "density=0.0"),
        ({"units": 4, "density": 1.5}, "density=1.5"),
        ({"units": 4, "density": float("nan")}, "density=nan"),
        ({"units": 4, "density": True}, "density=True"),
        ({"units": 4, "offset": "fft"}, "offset='fft'"),
        ({"units": 4, "sparse_format": "csr"}, "sparse_format='csr'"),
        ({"units": 4, "sparse_kernel": "dense"}, "sparse_kernel='dense'"),
        ({"units": 4, "alpha": float("inf")}, "alpha=inf"),
        ({"units": 4, "seed": -1}, "seed=-1"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        DCTSparseDense(**kwargs)


def test_undefined_last_dimension_is_a_clear_error():
    with pytest.raises(ValueError, match="last dimension"):
        DCTSparseDense(4).build((None, None))


def test_mismatched_input_is_a_clear_error():
    layer = DCTSparseDense(4)
    layer(np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match="incompatible"):
        layer(np.ones((2, 9), np.float32))


# -- nnz instead of density ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer_type, build_shape",
    [("dense", (None, 13)), ("conv", (None, 6, 6, 3)), ("depthwise", (None, 6, 6, 3)),
     ("einsum", (None, 13))],
)
def test_nnz_instead_of_density(layer_type, build_shape):
    from keras_dctsparse import DCTSparseConv2D
    from keras_dctsparse import DCTSparseDepthwiseConv2D
    from keras_dctsparse import DCTSparseEinsumDense

    make = {
        "dense": lambda **kw: DCTSparseDense(7, **kw),
        "conv": lambda **kw: DCTSparseConv2D(4, 3, **kw),
        "depthwise": lambda **kw: DCTSparseDepthwiseConv2D(3, depth_multiplier=2, **kw),
        "einsum": lambda **kw: DCTSparseEinsumDense("ab,bc->ac", output_shape=7, **kw),
    }[layer_type]
    layer = make(nnz=17, seed=0)
    layer.build(build_shape)
    assert layer.nnz == 17 and layer.sparse_weight.values.shape == (17,)
    config = layer.get_config()
    assert (config["nnz"], config["density"]) == (17, None)
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone.build(build_shape)
    np.testing.assert_array_equal(clone.sparse_weight.indices.numpy(),
                                  layer.sparse_weight.indices.numpy())
    # A config written before `nnz` existed (density only) still loads.
    old = dict(make(density=0.25, seed=0).get_config())
    del old["nnz"]
    layer = type(layer).from_config(old)
    assert layer.density == 0.25 and layer.requested_nnz is None
    # Neither given: the default density.
    assert make().density == 0.01


def test_nnz_errors_are_clear():
    with pytest.raises(ValueError, match="one of `density` and `nnz`, not both; received "
                                         "density=0.1, nnz=5"):
        DCTSparseDense(4, density=0.1, nnz=5)
    for bad in (0, -3, 2.5, True, "7"):
        with pytest.raises(ValueError, match=r"Argument `nnz` must be an integer >= 1"):
            DCTSparseDense(4, nnz=bad)
    layer = DCTSparseDense(4, nnz=41, name="too_many")
    with pytest.raises(ValueError, match=r"`nnz` for layer 'too_many' \(kernel shape \(10, 4\)\)"
                                         r" must be an integer >= 1, at most the kernel size "
                                         r"40; received nnz=41"):
        layer.build((None, 10))
    # The largest count is the dense kernel.
    full = DCTSparseDense(4, nnz=40, seed=1)
    full.build((None, 10))
    assert full.nnz == 40


def test_nnz_layer_matches_numpy():
    layer = DCTSparseDense(5, nnz=9, sparse_initializer="random_normal", seed=2)
    x = np.random.default_rng().standard_normal((3, 8)).astype(np.float32)
    y = layer(x).numpy()
    rows, cols = layer.sparse_weight.indices.numpy()
    dense = np.zeros((8, 5))
    dense[rows, cols] = layer.sparse_weight.values.numpy()
    expected = x @ (dense + float(layer.alpha.numpy()) * dct_block(5, 8).T)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
