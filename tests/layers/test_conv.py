"""Tests for the DCT-plus-sparse conv layers against an independent numpy/scipy reference."""

import os

import keras
import numpy as np
import pytest
import scipy.fft
import tensorflow as tf

import keras_dctsparse
import keras_dctsparse.experiments.data
from keras_dctsparse import DCTSparseConv1D
from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse import DCTSparseDepthwiseConv2D
from conv_cases import CONV_CASES
from numpy_reference import assert_sum_close
from numpy_reference import col2im
from numpy_reference import im2col
from training import assert_mirrored_matches_single

from keras_dctsparse.native import policy as native_policy

MNIST_DIR = os.environ.get(
    "DCTSPARSE_MNIST_DIR",
    os.path.abspath(
        os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "mnist")
    ),
)


# ----------------------------------------------------------------------------------------------
# Independent reference: im2col (channel-fastest patches), scipy ortho DCT-II of each
# zero-padded patch truncated to c_out, plus the patch times S read from the raw weights.
# ----------------------------------------------------------------------------------------------


def numpy_sparse(layer):
    """S in Keras kernel layout, from the layer's raw weights (indices/values or mask)."""
    weight = layer.sparse_weight
    shape = weight.kernel_shape
    if layer.sparse_format == "values":
        rows, cols = weight.indices.numpy()
        matrix = np.zeros((int(np.prod(shape[:-1])), shape[-1]))
        matrix[rows, cols] = weight.values.numpy()
        return matrix.reshape(shape)
    return weight.masked_kernel.numpy().astype(np.float64) * weight.mask.numpy()


def reference_output(layer, x):
    """Float64 output of a built conv layer on channels_last `x` (no activation)."""
    x = np.asarray(x, np.float64)
    rank = x.ndim - 2
    padding = layer.padding
    if padding == "causal":
        left = (layer.kernel_size[0] - 1) * layer.dilation_rate[0]
        x = np.pad(x, [(0, 0), (left, 0), (0, 0)])
        padding = "valid"
    sparse = numpy_sparse(layer)
    c_in = x.shape[-1]
    if isinstance(layer, DCTSparseDepthwiseConv2D):
        # Depthwise = grouped with one group per channel, multiplier outputs each.
        groups, dm = c_in, layer.depth_multiplier
        sparse = sparse.reshape(*sparse.shape[:rank], 1, c_in * dm)
    else:
        groups = layer.groups
    c_in_g = c_in // groups
    c_out_g = sparse.shape[-1] // groups
    alpha = float(layer.alpha.numpy()) if layer.offset == "dct" else 0.0
    outputs = []
    for g in range(groups):
        patches = im2col(x[..., g * c_in_g:(g + 1) * c_in_g], layer.kernel_size,
                         layer.strides, padding, layer.dilation_rate)
        # The authors' grouped construction: N counts all output channels and output
        # channel o applies row o of C_N to its group's patch.
        n = max(patches.shape[-1], sparse.shape[-1])
        offset = scipy.fft.dct(patches, type=2, n=n, norm="ortho", axis=-1)[
            ..., g * c_out_g:(g + 1) * c_out_g
        ]
        s_g = sparse[..., g * c_out_g:(g + 1) * c_out_g].reshape(-1, c_out_g)
        outputs.append(alpha * offset + patches @ s_g)
    y = np.concatenate(outputs, axis=-1)
    if layer.use_bias:
        y = y + layer.bias.numpy()
    return y


def assert_close(actual, expected, rtol=2e-5):
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30)
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def randomize(layer, seed=0):
    """Nonzero S values and bias, alpha != 1 (as after training)."""
    rng = np.random.default_rng(seed)
    weight = layer.sparse_weight
    variable = weight.values if weight.values is not None else weight.masked_kernel
    variable.assign(rng.standard_normal(variable.shape) * 0.3)
    if layer.bias is not None:
        layer.bias.assign(rng.standard_normal(layer.bias.shape))
    if layer.alpha is not None:
        layer.alpha.assign(0.7)


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _methods(cls, kwargs):
    if cls is DCTSparseDepthwiseConv2D:
        return ["auto", "direct"]
    if kwargs.get("groups", 1) > 1:
        return ["auto", "direct"]
    return ["auto", "direct", "matmul", "fft"]


PARAMS = [
    (name, method)
    for name, (cls, kwargs, _) in CONV_CASES.items()
    for method in _methods(cls, kwargs)
]


@pytest.mark.parametrize("name, method", PARAMS)
def test_output_matches_reference(name, method):
    cls, kwargs, shape = CONV_CASES[name]
    layer = cls(**kwargs, density=0.3, offset_method=method, seed=3)
    x = _x(shape)
    layer.build(x.shape)
    randomize(layer)
    assert_close(layer(x), reference_output(layer, x))
    assert layer.compute_output_shape(x.shape) == tuple(layer(x).shape)


@pytest.mark.parametrize("sparse_format", ["values", "masked"])
def test_zero_initialized_is_pure_dct_and_masked_format_matches(sparse_format):
    layer = DCTSparseConv2D(8, 3, density=0.2, sparse_format=sparse_format, use_bias=False)
    x = _x((2, 6, 6, 3))
    y = layer(x)
    assert np.all(numpy_sparse(layer) == 0)
    assert_close(y, reference_output(layer, x))
    randomize(layer)
    assert_close(layer(x), reference_output(layer, x))


@pytest.mark.parametrize(
    "cls, kwargs, shape, sparse_format",
    [
        (DCTSparseConv2D, dict(filters=6, kernel_size=3, padding="same"), (16, 6, 6, 3),
         "values"),
        (DCTSparseConv2D, dict(filters=6, kernel_size=3, groups=3), (16, 6, 6, 3), "masked"),
        (DCTSparseConv2D, dict(filters=4, kernel_size=3, groups=2, offset_method="direct"),
         (16, 6, 6, 4), "values"),
        (DCTSparseConv2D, dict(filters=6, kernel_size=3, offset_method="matmul"),
         (16, 6, 6, 3), "values"),
        (DCTSparseDepthwiseConv2D, dict(kernel_size=3, depth_multiplier=2), (16, 6, 6, 3),
         "values"),
        (DCTSparseConv1D, dict(filters=5, kernel_size=3, padding="causal"), (16, 8, 3),
         "values"),
    ],
)
def test_matches_reference_after_training(cls, kwargs, shape, sparse_format):
    x = _x(shape)
    layer = cls(**kwargs, density=0.3, sparse_format=sparse_format, seed=1)
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    target = _x((shape[0],) + model.output_shape[1:], seed=2)
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, target, epochs=3, batch_size=8, verbose=0,
              callbacks=[keras_dctsparse.EnforceSparsity()])
    assert np.abs(numpy_sparse(layer)).max() > 0.01, "training must move the values"
    assert float(layer.alpha.numpy()) != 1.0
    assert_close(model.predict(x, verbose=0), reference_output(layer, x))


@pytest.mark.parametrize("method", ["fused", "matmul"])
def test_gradients_reach_only_values_alpha_and_bias(method):
    layer = DCTSparseConv2D(6, 3, density=0.3, padding="same", offset_method=method,
                            sparse_initializer="random_normal")
    x = tf.constant(_x((2, 5, 5, 4)))
    layer.build(x.shape)
    names = sorted(w.path.split("/")[-1] for w in layer.trainable_weights)
    assert names == ["alpha", "bias", "sparse_values"]
    assert [w.path.split("/")[-1] for w in layer.non_trainable_weights] == ["sparse_indices"]
    dy = tf.constant(_x((2, 5, 5, 6), seed=5))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * dy)
    grads = tape.gradient(loss, layer.trainable_weights)
    by_name = {w.path.split("/")[-1]: g for w, g in zip(layer.trainable_weights, grads)}
    # Reference gradients: patches^T dy at the kept positions, <DCT(patches), dy>, sum dy.
    patches = im2col(x.numpy().astype(np.float64), (3, 3), (1, 1), "same", (1, 1))
    patches = patches.reshape(-1, patches.shape[-1])
    dyn = dy.numpy().reshape(-1, 6).astype(np.float64)
    rows, cols = layer.sparse_weight.indices.numpy()
    assert_close(by_name["sparse_values"], (patches.T @ dyn)[rows, cols])
    offset = scipy.fft.dct(patches, type=2, norm="ortho", axis=-1)[:, :6]
    assert_sum_close(by_name["alpha"], offset * dyn, rtol=1e-5)
    assert_close(by_name["bias"], dyn.sum(0))


def test_no_weight_or_optimizer_slot_of_dense_size():
    model = keras.Sequential([
        keras.Input((8, 8, 64)),
        DCTSparseConv2D(64, 3, density=0.01, padding="same"),
        DCTSparseDepthwiseConv2D(3, density=0.2),
        keras.layers.Reshape((-1, 64)),
        DCTSparseConv1D(64, 3, density=0.01),
    ])
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.ones((2, 8, 8, 64)), np.ones((2, 34, 64)), verbose=0)
    conv = model.layers[0]
    assert conv.nnz == round(0.01 * 3 * 3 * 64 * 64)
    sizes = [int(np.prod(v.shape)) for v in model.variables + model.optimizer.variables]
    largest_nnz = max(layer.nnz for layer in model.layers if hasattr(layer, "nnz"))
    assert max(sizes) <= 2 * largest_nnz


def test_views():
    layer = DCTSparseConv2D(5, (3, 2), density=0.2, sparse_initializer="ones", alpha=2.0,
                            seed=4)
    layer.build((None, 6, 6, 3))
    assert layer.nnz == 18  # 0.2 * 3 * 2 * 3 * 5
    sparse = layer.sparse_kernel
    assert isinstance(sparse, tf.SparseTensor)
    assert tuple(sparse.dense_shape.numpy()) == (3, 2, 3, 5)
    np.testing.assert_allclose(tf.sparse.to_dense(sparse).numpy(), numpy_sparse(layer))
    # The effective kernel alpha * Kd + S, Kd from scipy's DCT matrix (channel-fastest patch).
    kernel = layer.kernel.numpy()
    assert kernel.shape == (3, 2, 3, 5)
    dct = scipy.fft.dct(np.eye(18), type=2, norm="ortho", axis=0)[:5]  # (c_out, P)
    expected = 2.0 * dct.T.reshape(3, 2, 3, 5) + numpy_sparse(layer)
    np.testing.assert_allclose(kernel, expected, atol=1e-6)
    depthwise = DCTSparseDepthwiseConv2D(3, depth_multiplier=2, density=0.5)
    depthwise.build((None, 5, 5, 4))
    assert depthwise.kernel.shape == (3, 3, 4, 2)
    with pytest.raises(AttributeError, match="before it is built"):
        DCTSparseConv2D(3, 3).kernel


def test_channels_first_matches_channels_last():
    last = DCTSparseConv2D(6, 3, strides=2, padding="same", density=0.3, seed=2)
    first = DCTSparseConv2D(6, 3, strides=2, padding="same", density=0.3, seed=2,
                            data_format="channels_first")
    x = _x((2, 7, 7, 3))
    last.build(x.shape)
    randomize(last)
    first.build((2, 3, 7, 7))
    for target, source in zip(first.weights, last.weights):
        target.assign(source)
    y = first(np.transpose(x, (0, 3, 1, 2)))
    assert tuple(y.shape) == first.compute_output_shape((2, 3, 7, 7)) == (2, 6, 4, 4)
    np.testing.assert_allclose(np.transpose(y, (0, 2, 3, 1)), last(x), atol=1e-5)


def test_plain_sparse_baseline():
    layer = DCTSparseConv2D(16, 3, density=0.2, offset=None, use_bias=False, seed=0)
    x = _x((2, 6, 6, 8))
    layer.build(x.shape)
    assert layer.alpha is None
    assert np.count_nonzero(numpy_sparse(layer)) == layer.nnz
    assert_close(layer(x), reference_output(layer, x))


def test_get_config_round_trip():
    layer = DCTSparseConv2D(
        8, (3, 5), strides=(1, 2), padding="same", dilation_rate=1, groups=2, density=0.2,
        offset=None, activation="relu", use_bias=False, alpha=0.5, alpha_trainable=False,
        sparse_initializer="glorot_uniform", sparse_regularizer="l2", seed=3,
        sparse_format="masked", offset_method="direct", name="dconv",
    )
    config = layer.get_config()
    clone = DCTSparseConv2D.from_config(config)
    assert clone.get_config() == config
    assert config["kernel_size"] == (3, 5) and config["groups"] == 2
    for original in (layer, DCTSparseConv1D(4, 3, padding="causal"),
                     DCTSparseDepthwiseConv2D(3, depth_multiplier=2)):
        restored = keras.layers.deserialize(keras.layers.serialize(original))
        assert type(restored) is type(original)
        assert restored.get_config() == original.get_config()


def make_model(sparse_format="values"):
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        DCTSparseConv2D(8, 3, padding="same", activation="relu", density=0.2, seed=1,
                        sparse_format=sparse_format),
        DCTSparseDepthwiseConv2D(3, depth_multiplier=2, density=0.3, seed=2,
                                 sparse_format=sparse_format),
        keras.layers.Reshape((36, 16)),
        DCTSparseConv1D(5, 3, strides=2, density=0.3, seed=3, sparse_format=sparse_format),
        keras.layers.GlobalAveragePooling1D(),
    ])


@pytest.mark.parametrize("sparse_format", ["values", "masked"])
def test_keras_file_round_trip(tmp_path, sparse_format):
    x = _x((16, 8, 8, 3))
    model = make_model(sparse_format)
    model.compile("adam", "mse")
    model.fit(x, _x((16, 5), seed=3), epochs=2, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for original, restored in zip(model.layers, loaded.layers):
        if hasattr(original, "sparse_kernel"):
            np.testing.assert_array_equal(
                original.sparse_kernel.indices.numpy(), restored.sparse_kernel.indices.numpy()
            )


def test_savedmodel_export_serves_same_outputs(tmp_path):
    x = _x((5, 8, 8, 3))
    model = make_model()
    for layer in model.layers:
        if hasattr(layer, "sparse_weight"):
            randomize(layer)
    model.export(str(tmp_path / "export"), verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "export"))
    served = restored.serve(x).numpy()
    assert_close(served, model.predict(x, verbose=0).astype(np.float64), rtol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16"])
def test_mixed_precision(policy):
    x = _x((4, 6, 6, 3))
    reference = DCTSparseConv2D(8, 3, density=0.3, padding="same", seed=1)
    reference.build(x.shape)
    randomize(reference)
    expected = reference(x).numpy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        for layer in (DCTSparseConv2D(8, 3, density=0.3, padding="same", seed=1),
                      DCTSparseConv2D(8, 3, density=0.3, padding="same", seed=1,
                                      offset_method="matmul"),
                      DCTSparseConv2D(8, 3, density=0.3, padding="same", seed=1,
                                      sparse_kernel="sparse"),
                      DCTSparseConv2D(8, 3, density=0.3, padding="same", seed=1,
                                      sparse_kernel="native")):
            layer.build(x.shape)
            for target, source in zip(layer.weights, reference.weights):
                target.assign(source)
            assert layer.sparse_weight.values.dtype == "float32"
            y = layer(x)
            assert y.dtype == "float16"
            np.testing.assert_allclose(np.asarray(y, np.float32), expected,
                                       atol=0.02 * np.abs(expected).max())
        model = keras.Sequential([keras.Input((6, 6, 3)), layer])
        model.compile("adam", "mse")
        history = model.fit(x, np.ones((4, 6, 6, 8)), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("sparse_kernel", ["dense", "sparse", "native"])
def test_float64_layer(sparse_kernel):
    layer = DCTSparseConv2D(5, 3, density=0.5, dtype="float64", offset_method="matmul",
                            sparse_initializer="random_normal", sparse_kernel=sparse_kernel)
    x = np.random.default_rng().standard_normal((2, 6, 6, 3))
    y = layer(x)
    assert y.dtype == "float64"
    np.testing.assert_allclose(y.numpy(), reference_output(layer, x), atol=1e-11)


MIRRORED_SETUP = """
from keras_dctsparse import DCTSparseConv2D, DCTSparseDepthwiseConv2D

rng = np.random.default_rng(0)
x = rng.standard_normal((32, 8, 8, 3)).astype("float32")
y = rng.standard_normal((32, 4)).astype("float32")

def build():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        DCTSparseConv2D(8, 3, padding="same", activation="tanh", density=0.2, seed=1,
                        sparse_initializer="random_normal"),
        DCTSparseDepthwiseConv2D(3, strides=2, density=0.3, seed=2),
        DCTSparseConv2D(4, 3, density=0.2, seed=3, offset_method="matmul"),
        DCTSparseConv2D(4, 3, padding="same", density=0.3, seed=4, sparse_kernel="sparse"),
        DCTSparseConv2D(4, 3, padding="same", density=0.3, seed=5, sparse_kernel="native"),
        keras.layers.GlobalAveragePooling2D()])
    model.compile(keras.optimizers.SGD(0.02, momentum=0.9), "mse")
    return model
"""


def test_mirrored_strategy_matches_single_device():
    assert_mirrored_matches_single(
        MIRRORED_SETUP, batch_size=8, loss_rtol=1e-4, weight_rtol=1e-3, weight_atol=1e-5
    )


def test_lenet5_learns_mnist():
    if not os.path.isdir(MNIST_DIR):
        pytest.skip(f"MNIST not found in {MNIST_DIR} (set DCTSPARSE_MNIST_DIR)")
    try:
        data = keras_dctsparse.experiments.data.load_dataset("mnist", data_dir=MNIST_DIR)
    except FileNotFoundError as error:
        pytest.skip(f"MNIST not available: {error}")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        DCTSparseConv2D(6, 5, padding="same", activation="relu", density=0.1, seed=1),
        keras.layers.MaxPooling2D(),
        DCTSparseConv2D(16, 5, activation="relu", density=0.1, seed=2),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        DCTSparseDense(120, activation="relu", density=0.1, seed=3),
        DCTSparseDense(84, activation="relu", density=0.1, seed=4),
        DCTSparseDense(10, density=0.1, seed=5),
    ])
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(data.x_train[:10_000], data.y_train[:10_000], batch_size=32, epochs=1,
              verbose=0)
    _, accuracy = model.evaluate(data.x_test[:2000], data.y_test[:2000], verbose=0)
    assert accuracy > 0.8, accuracy


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DCTSparseConv2D(0, 3), "filters=0"),
        (lambda: DCTSparseConv2D(2.5, 3), "filters=2.5"),
        (lambda: DCTSparseConv2D(4, 0), "kernel_size=0"),
        (lambda: DCTSparseConv2D(4, (3, -1)), r"kernel_size=\(3, -1\)"),
        (lambda: DCTSparseConv2D(4, (3, 3, 3)), r"kernel_size=\(3, 3, 3\)"),
        (lambda: DCTSparseConv2D(4, 3, strides=0), "strides=0"),
        (lambda: DCTSparseConv2D(4, 3, padding="full"), "padding='full'"),
        (lambda: DCTSparseConv2D(4, 3, padding="causal"), "padding='causal'"),
        (lambda: DCTSparseConv2D(4, 3, data_format="nhwc"), "data_format='nhwc'"),
        (lambda: DCTSparseConv2D(4, 3, groups=3), "groups=3 and filters=4"),
        (lambda: DCTSparseConv2D(4, 3, groups=0), "groups=0"),
        (lambda: DCTSparseConv2D(4, 3, strides=2, dilation_rate=2), "dilation_rate"),
        (lambda: DCTSparseConv2D(4, 3, offset_method="fast"), "offset_method='fast'"),
        (lambda: DCTSparseConv2D(4, 3, density=0.0), "density=0.0"),
        (lambda: DCTSparseConv2D(4, 3, offset="fft"), "offset='fft'"),
        (lambda: DCTSparseDepthwiseConv2D(3, depth_multiplier=0), "depth_multiplier=0"),
        (lambda: DCTSparseDepthwiseConv2D(3, groups=2), "groups=2"),
        (lambda: DCTSparseConv1D(4, (3, 3)), r"kernel_size=\(3, 3\)"),
    ],
)
def test_bad_arguments_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_build_time_errors():
    with pytest.raises(ValueError, match="groups=2 and input channels=3"):
        DCTSparseConv2D(4, 3, groups=2).build((None, 8, 8, 3))
    with pytest.raises(ValueError, match="supports groups=1 only"):
        DCTSparseConv2D(4, 3, groups=2, offset_method="fft").build((None, 8, 8, 4))
    with pytest.raises(ValueError, match="not available for depthwise"):
        DCTSparseDepthwiseConv2D(3, offset_method="matmul").build((None, 8, 8, 4))
    with pytest.raises(ValueError, match="channel dimension"):
        DCTSparseConv2D(4, 3).build((None, 8, 8, None))
    with pytest.raises(ValueError, match="rank 4"):
        DCTSparseConv2D(4, 3).build((None, 8, 3))
    layer = DCTSparseConv2D(4, 3)
    layer(_x((1, 5, 5, 2)))
    with pytest.raises(ValueError, match="incompatible"):
        layer(_x((1, 5, 5, 3)))


@pytest.mark.parametrize(
    "mine, theirs, shape",
    [
        (lambda **k: DCTSparseConv2D(6, 3, strides=2, padding="same", groups=2, **k),
         lambda: keras.layers.Conv2D(6, 3, strides=2, padding="same", groups=2),
         (2, 9, 9, 4)),
        (lambda **k: DCTSparseDepthwiseConv2D((3, 2), depth_multiplier=3, padding="same",
                                              dilation_rate=2, **k),
         lambda: keras.layers.DepthwiseConv2D((3, 2), depth_multiplier=3, padding="same",
                                              dilation_rate=2),
         (2, 9, 9, 4)),
        (lambda **k: DCTSparseConv1D(5, 3, padding="causal", dilation_rate=2, **k),
         lambda: keras.layers.Conv1D(5, 3, padding="causal", dilation_rate=2),
         (2, 9, 4)),
    ],
)
def test_same_semantics_as_keras_layers(mine, theirs, shape):
    """Without offset and at density 1, S holding the Keras kernel gives the Keras output."""
    x = _x(shape)
    layer, reference = mine(density=1.0, offset=None), theirs()
    layer.build(x.shape)
    reference.build(x.shape)
    kernel = reference.kernel.numpy()
    rows, cols = layer.sparse_weight.indices.numpy()
    layer.sparse_weight.values.assign(kernel.reshape(-1, kernel.shape[-1])[rows, cols])
    np.testing.assert_allclose(layer(x), reference(x), atol=1e-6)
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    assert layer.compute_output_shape(x.shape) == reference.compute_output_shape(x.shape)


# ----------------------------------------------------------------------------------------------
# The sparse S path (ops.sparse_conv) and the cost-based choice between the paths.
# ----------------------------------------------------------------------------------------------


def _sparse_methods(cls, kwargs):
    return [m for m in _methods(cls, kwargs) if m != "fused"]


SPARSE_PARAMS = [
    (name, method)
    for name, (cls, kwargs, _) in CONV_CASES.items()
    if cls is not DCTSparseDepthwiseConv2D
    for method in _sparse_methods(cls, kwargs)
]


@pytest.mark.parametrize("name, method", SPARSE_PARAMS)
def test_sparse_path_output_matches_reference(name, method):
    cls, kwargs, shape = CONV_CASES[name]
    layer = cls(**kwargs, density=0.3, offset_method=method, sparse_kernel="sparse", seed=3)
    x = _x(shape)
    layer.build(x.shape)
    randomize(layer)
    assert layer._plan(tf.constant(x), "valid")[0] == "sparse"
    assert_close(layer(x), reference_output(layer, x))


GRADIENT_CASES = {
    "3x3_same": (DCTSparseConv2D, dict(filters=6, kernel_size=3, padding="same"),
                 (2, 6, 5, 4)),
    "3x3_valid_stride2": (DCTSparseConv2D, dict(filters=7, kernel_size=3, strides=2),
                          (2, 9, 8, 3)),
    "3x2_unequal_strides": (DCTSparseConv2D, dict(filters=5, kernel_size=(3, 2),
                                                  strides=(1, 2), padding="same"),
                            (2, 7, 9, 3)),
    "3x3_dilation2": (DCTSparseConv2D, dict(filters=8, kernel_size=3, dilation_rate=2,
                                            padding="same"), (2, 9, 9, 3)),
    "conv1d_k5_same": (DCTSparseConv1D, dict(filters=7, kernel_size=5, padding="same"),
                       (2, 11, 3)),
    "conv1d_causal": (DCTSparseConv1D, dict(filters=4, kernel_size=3, padding="causal",
                                            dilation_rate=2), (2, 10, 3)),
}
PATHS = [("dense", "fused"), ("dense", "matmul"), ("sparse", "auto"), ("sparse", "direct"),
         ("sparse", "matmul"), ("sparse", "fft"), ("native", "auto")]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(p))
@pytest.mark.parametrize("name", sorted(GRADIENT_CASES))
def test_all_gradients_match_reference(name, path):
    """dx, dvalues, dalpha, dbias of every path against im2col/col2im and scipy's DCT."""
    cls, kwargs, shape = GRADIENT_CASES[name]
    sparse_kernel, method = path
    layer = cls(**kwargs, density=0.3, offset_method=method, sparse_kernel=sparse_kernel,
                seed=2)
    assert_gradients_match_reference(layer, tf.constant(_x(shape)))


def assert_gradients_match_reference(layer, x):
    """The layer's output gradients (eager: native ops may run) against numpy."""
    layer.build(x.shape)
    randomize(layer)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        dy = tf.constant(_x(y.shape, seed=7))
        loss = tf.reduce_sum(y * dy)
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    by_name = {w.path.split("/")[-1]: g for w, g in zip(layer.trainable_weights, grads[1:])}
    # Reference: y = patches @ (alpha * Kd + S) + bias, patches = im2col(x).
    xn = x.numpy().astype(np.float64)
    padding = layer.padding
    if padding == "causal":
        left = (layer.kernel_size[0] - 1) * layer.dilation_rate[0]
        xn = np.pad(xn, [(0, 0), (left, 0), (0, 0)])
        padding = "valid"
    args = (layer.kernel_size, layer.strides, padding, layer.dilation_rate)
    patches = im2col(xn, *args)
    p, c_out = patches.shape[-1], y.shape[-1]
    dct = scipy.fft.dct(np.eye(max(p, c_out)), type=2, norm="ortho", axis=0)[:c_out, :p].T
    sparse = numpy_sparse(layer).reshape(p, c_out)
    alpha = float(layer.alpha.numpy())
    dyn = dy.numpy().astype(np.float64)
    dx = col2im(dyn @ (alpha * dct + sparse).T, xn.shape, *args)
    if layer.padding == "causal":
        dx = dx[:, left:]
    flat_patches, flat_dy = patches.reshape(-1, p), dyn.reshape(-1, c_out)
    rows, cols = layer.sparse_weight.indices.numpy()
    assert_close(grads[0], dx)
    assert_close(by_name["sparse_values"], (flat_patches.T @ flat_dy)[rows, cols])
    assert_sum_close(by_name["alpha"], (flat_patches @ dct) * flat_dy, rtol=1e-5)
    assert_close(by_name["bias"], flat_dy.sum(0))


@pytest.mark.parametrize("density", [0.05, 0.3])
def test_fused_path_builds_large_kernels_natively(density):
    """A 3x3x64x256 kernel (147,456 entries): `alpha * Kd + S` by the native op
    (`ops.native_kernel`) where native ops may run, TensorFlow's ops elsewhere."""
    layer = DCTSparseConv2D(256, 3, padding="same", density=density, sparse_kernel="dense",
                            offset_method="fused", seed=3)
    x = tf.constant(_x((2, 6, 6, 64)))
    assert_gradients_match_reference(layer, x)

    def op_types(function):
        graph = tf.function(function).get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}

    in_step = op_types(lambda x: tf.distribute.get_strategy().run(layer, args=(x,)))
    assert "DctSparseScatterKernel" in in_step
    assert not {t for t in op_types(layer) if t.startswith("DctSparse")}


@pytest.mark.parametrize("cls, kwargs, shape", [
    (DCTSparseConv2D, dict(filters=6, kernel_size=5, padding="same"), (4, 12, 12, 1)),
    (DCTSparseConv2D, dict(filters=5, kernel_size=3, data_format="channels_first"),
     (2, 3, 9, 9)),
    (DCTSparseConv1D, dict(filters=4, kernel_size=3, padding="causal"), (2, 10, 3)),
    (DCTSparseDepthwiseConv2D, dict(kernel_size=3), (2, 8, 8, 3)),
])
def test_bias_is_a_bias_add(cls, kwargs, shape):
    """The bias goes through `BiasAdd`: its gradient is a `BiasAddGrad` (fused by oneDNN
    into the kernel gradient), not a generic `Sum` over batch and space."""
    layer = cls(**kwargs, density=0.2, activation="relu", seed=1)
    x = tf.constant(_x(shape))
    layer.build(x.shape)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        return tape.gradient(loss, layer.bias)

    graph = step.get_concrete_function(x).graph
    types = [op.type for op in graph.get_operations()]
    assert "BiasAdd" in types and "BiasAddGrad" in types
    y = layer(x)
    reductions = [op for op in graph.get_operations() if op.type == "Sum"
                  and op.name.startswith("gradient_tape/") and op.inputs[0].shape == y.shape]
    assert not reductions
    dy = 2 * np.maximum(y.numpy(), 0)
    axis = 1 if kwargs.get("data_format") == "channels_first" else -1
    expected = np.moveaxis(dy, axis, -1).reshape(-1, y.shape[axis]).sum(0)
    assert_close(step(x), expected)


def test_choose_conv_plan_cost_model():
    from keras_dctsparse.layers.conv import choose_conv_plan

    big = 32 * 16 * 16
    size = 9 * 256 * 256
    # Low density, 3x3, 256 channels: sparse S + factored offset.
    assert choose_conv_plan((3, 3), 256, 256, 1, round(0.001 * size), big) == ("sparse",
                                                                                "matmul")
    # 0.5% (measured 0.88x / 0.65x of Conv2D for 128 / 256 channels): sparse.
    assert choose_conv_plan((3, 3), 128, 128, 1, round(0.005 * 9 * 128 * 128), big)[0] == (
        "sparse")
    # 1% and above: one fused conv (the separate offset does not pay).
    for density in (1.0, 0.1, 0.01):
        assert choose_conv_plan((3, 3), 256, 256, 1, round(density * size), big) == (
            "dense", "fused")
    # Without offset the sparse conv alone pays at 0.5% but not at 10%.
    assert choose_conv_plan((3, 3), 256, 256, 1, round(0.005 * size), big, offset=None) == (
        "sparse", None)
    assert choose_conv_plan((3, 3), 256, 256, 1, round(0.1 * size), big, offset=None) == (
        "dense", None)
    # Small calls, grouped, depthwise and an explicit "fused" keep the dense path.
    nnz = round(0.001 * size)
    assert choose_conv_plan((3, 3), 64, 64, 1, 37, 4)[0] == "dense"  # 4 output pixels
    assert choose_conv_plan((3, 3), 256, 256, 1, nnz, 64)[0] == "sparse"
    assert choose_conv_plan((3, 3), 256, 256, 2, nnz // 2, big)[0] == "dense"
    assert choose_conv_plan((3, 3), 256, 256, 256, 2, big, depthwise=True)[0] == "dense"
    assert choose_conv_plan((3, 3), 256, 256, 1, nnz, big, offset_method="fused") == (
        "dense", "fused")
    # Forced paths are kept; "auto" offset resolves per path.
    assert choose_conv_plan((3, 3), 256, 256, 1, size, big, sparse_kernel="sparse") == (
        "sparse", "matmul")
    assert choose_conv_plan((3, 3), 256, 256, 1, nnz, big, sparse_kernel="dense") == (
        "dense", "fused")
    assert choose_conv_plan((3, 3), 256, 256, 1, nnz, big, offset_method="direct") == (
        "dense", "direct")  # A direct offset costs a dense conv on its own.
    assert choose_conv_plan((5,), 8, 8, 1, nnz, big, sparse_kernel="sparse") == (
        "sparse", "direct")


def _native_plan(channels, density, width, **kwargs):
    """The S path `choose_conv_plan` picks for a large 3x3 "same" call where native ops may
    run, `channels` in and out, on an output `width` pixels wide (None: unknown)."""
    from keras_dctsparse.layers.conv import choose_conv_plan

    nnz = round(density * 9 * channels * channels)
    return choose_conv_plan((3, 3), channels, channels, 1, nnz, None, native=True,
                            out_width=width, **kwargs)[0]


def test_forward_only_native_rule():
    """A call that records no gradient prices the native path by its forward alone: at 10%
    it beats the fused forward on maps at least 16 wide (measured 0.69-0.85x against
    0.97-1.0x of Conv2D, 64 to 256 channels), not on an 8-wide map, whose tiles of 16 output
    pixels are half empty (1.23-1.53x), and not at 20-30% (1.08-1.16x at 20%)."""
    plan = _native_plan
    for channels in (128, 256):
        assert plan(channels, 0.1, 16, forward_only=True) == "native"
        assert plan(channels, 0.3, 16, forward_only=True) == "dense"
        assert plan(channels, 0.2, 16, forward_only=True) == "dense"
    assert plan(256, 0.1, 8, forward_only=True) == "dense"
    assert plan(256, 0.05, 8, forward_only=True) == "native"
    assert plan(64, 0.1, 32, forward_only=True) == "native"
    assert plan(64, 0.1, 32) == "dense"
    # float64 tiles hold 8 pixels: an 8-wide map fills them.
    assert plan(256, 0.1, 8, forward_only=True, lanes=8) == "native"


def test_training_native_rule():
    """A training step takes the native path where its train step beats the fused one's
    (about 1.0x of Conv2D): at 10%, 16x16x256 0.84x natively, and not 16x16x128 (0.95x),
    32x32x64 (1.18x) or the half-empty tiles of 8x8x256 (1.47x); at 5%, 16 wide and up from
    128 channels (0.60-0.76x), 8x8x512 (0.86x), not 32x32x64 (1.08x); nowhere at 15%
    (1.05x and up)."""
    plan = _native_plan
    assert plan(256, 0.1, 16) == "native"
    assert plan(128, 0.1, 16) == "dense"
    assert plan(64, 0.1, 32) == "dense"
    assert plan(256, 0.1, 8) == "dense"
    for channels, width in ((128, 16), (128, 32), (256, 16), (512, 8)):
        assert plan(channels, 0.05, width) == "native"
    assert plan(64, 0.05, 32) == "dense"
    for channels, width in ((64, 32), (128, 16), (256, 16), (256, 8), (512, 8)):
        assert plan(channels, 0.15, width) == "dense"


def test_native_rule_counts_the_tiles_of_narrow_maps():
    """The native ops tile 16 output pixels along the width: VGG19's last layers at 10% EPL
    (6.15% on 4x4 and 2x2 maps) measured 1.47-1.89x and 2.38-2.69x of Conv2D natively,
    0.97-1.09x fused; at 0.6%, 0.46x natively on 2x2."""
    plan = _native_plan
    for width in (4, 2):
        assert plan(512, 0.0615, width) == "dense"
        assert plan(512, 0.0615, width, forward_only=True) == "dense"
        assert plan(512, 0.00615, width) == "native"
    assert plan(512, 0.0615, None) == "native"  # width unknown: full tiles
    assert plan(256, 0.04, 8) == "native"


def test_forward_only_calls_take_the_native_path_and_training_the_fused():
    with native_policy.native_kernels("auto"):
        layer = DCTSparseConv2D(128, 3, padding="same", density=0.1, seed=5)
        x = tf.constant(_x((2, 16, 16, 128)))
        layer.build(x.shape)
        randomize(layer)
        assert layer._plan(x, "same")[0] == "native"  # eager, no tape
        assert_close(layer(x), reference_output(layer, x.numpy()), rtol=1e-4)
        with tf.GradientTape() as tape:
            assert layer._plan(x, "same")[0] == "dense"
            y = layer(x)
        assert_close(y, reference_output(layer, x.numpy()), rtol=1e-4)
        assert tape.gradient(y, layer.alpha) is not None


@pytest.mark.parametrize("native, density, expected", [
    ("never", 0.001, "sparse"), ("never", 0.05, "dense"),
    ("auto", 0.001, "native"), ("auto", 0.2, "dense"),
])
def test_auto_switch_both_sides_match_reference(native, density, expected):
    """Eager calls may use the native kernels (policy "auto"); with them off, the stock paths."""
    with native_policy.native_kernels(native):
        layer = DCTSparseConv2D(256, 3, padding="same", density=density, seed=5)
        x = _x((8, 16, 16, 256))
        layer.build(x.shape)
        randomize(layer)
        assert layer._plan(tf.constant(x), "same")[0] == expected
        assert_close(layer(x), reference_output(layer, x), rtol=1e-4)


def test_native_path_is_planned_only_where_native_ops_may_run():
    layer = DCTSparseConv2D(64, 3, padding="same", density=0.01, seed=5, sparse_kernel="native")
    x = tf.constant(_x((2, 8, 8, 64)))
    layer.build(x.shape)
    randomize(layer)
    assert layer._plan(x, "same") == ("native", "native")
    plans = []

    # A plain tf.function, as model.export traces: stock ops only. Without autograph: in one
    # of two runs of this file with tests/native, tests/ops, tests/models and tests/export,
    # autograph converted a callee of `_plan` wrongly ("tf__kernel_shape_for() missing 1
    # required positional argument"); the plan needs no conversion.
    @tf.function(autograph=False)
    def traced(x):
        plans.append(layer._plan(x, "same"))
        return layer(x)

    assert_close(traced(x), reference_output(layer, x.numpy()))
    assert plans and plans[0][0] != "native"
    graph = traced.get_concrete_function(x).graph
    assert not [op for op in graph.get_operations() if op.type.startswith("DctSparse")]


def test_sparse_kernel_argument():
    layer = DCTSparseConv2D(4, 3, sparse_kernel="SPARSE")
    assert layer.get_config()["sparse_kernel"] == "sparse"
    clone = DCTSparseConv2D.from_config(layer.get_config())
    assert clone.conv_sparse_kernel == "sparse"
    for make, match in [
        (lambda: DCTSparseConv2D(4, 3, sparse_kernel="csr"), "sparse_kernel='csr'"),
        (lambda: DCTSparseConv2D(4, 3, sparse_kernel="sparse", offset_method="fused"),
         "offset_method='fused'"),
        (lambda: DCTSparseConv2D(4, 3, sparse_kernel="sparse", sparse_format="masked"),
         "sparse_format='values'"),
        (lambda: DCTSparseDepthwiseConv2D(3, sparse_kernel="sparse"), "depthwise"),
        (lambda: DCTSparseConv2D(4, 3, sparse_kernel="native", offset_method="direct"),
         "offset_method='direct'"),
        (lambda: DCTSparseConv2D(4, 3, sparse_kernel="native", sparse_format="masked"),
         "sparse_format='values'"),
    ]:
        with pytest.raises(ValueError, match=match):
            make()


def test_sparse_path_trains_and_saves(tmp_path):
    x = _x((16, 8, 8, 3))
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        DCTSparseConv2D(8, 3, padding="same", activation="relu", density=0.2, seed=1,
                        sparse_kernel="sparse"),
        DCTSparseConv2D(6, 3, strides=2, density=0.2, seed=2, sparse_kernel="sparse",
                        offset=None),
        keras.layers.GlobalAveragePooling2D(),
    ])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, _x((16, 6), seed=3), epochs=2, verbose=0)
    assert np.abs(numpy_sparse(model.layers[0])).max() > 0.01
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[0].conv_sparse_kernel == "sparse"
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    first, second = model.layers[:2]
    h = np.maximum(reference_output(first, x), 0.0)  # relu
    assert_close(first(x), h, rtol=1e-4)
    assert_close(second(h.astype(np.float32)), reference_output(second, h), rtol=1e-4)


# -- the output shape (our own function; no keras.src import) --------------------------------


def _keras_output_shape(rank, input_shape, padding, strides, dilation, data_format):
    layer_type = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D}[rank]
    return tuple(layer_type(5, 3, strides=strides, padding=padding, dilation_rate=dilation,
                            data_format=data_format).compute_output_shape(input_shape))


@pytest.mark.parametrize("padding", ["valid", "same", "causal"])
@pytest.mark.parametrize("strides, dilation", [(1, 1), (2, 1), (3, 1), (1, 2), (1, 3)])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank", [1, 2])
def test_conv_output_shape_matches_keras(padding, strides, dilation, data_format, rank):
    from keras_dctsparse.layers.conv import conv_output_shape

    if padding == "causal" and (rank == 2 or data_format == "channels_first"):
        pytest.skip("causal padding is Conv1D channels_last only in Keras")
    rng = np.random.default_rng()
    for _ in range(5):
        spatial = [int(n) for n in rng.integers(7, 20, size=rank)]
        if rng.random() < 0.3:
            spatial[0] = None
        batch = [None] if rng.random() < 0.5 else [4]
        shape = (
            tuple(batch + spatial + [2]) if data_format == "channels_last"
            else tuple(batch + [2] + spatial)
        )
        expected = _keras_output_shape(rank, shape, padding, strides, dilation, data_format)
        ours = conv_output_shape(
            shape, 5, (3,) * rank, (strides,) * rank,
            "same" if padding == "causal" else padding, data_format, (dilation,) * rank,
        )
        assert ours == expected, (shape, padding, strides, dilation)


def test_conv_output_shape_refuses_empty_outputs():
    from keras_dctsparse.layers.conv import conv_output_shape

    with pytest.raises(ValueError, match="zero or negative"):
        conv_output_shape((1, 4, 4, 2), 3, (3, 3), (1, 1), "valid", "channels_last", (2, 2))
    with pytest.raises(ValueError):  # Keras refuses it too
        keras.layers.Conv2D(3, 3, dilation_rate=2).compute_output_shape((1, 4, 4, 2))


def test_native_needs_one_group():
    with pytest.raises(ValueError, match="ungrouped convolutions only; received groups=2"):
        DCTSparseConv2D(4, 3, groups=2, sparse_kernel="native").build((None, 6, 6, 4))
    with pytest.raises(ValueError, match="sparse_kernel='native' is not available for depthwise"):
        DCTSparseDepthwiseConv2D(3, sparse_kernel="native")


def test_direct_conv_rule():
    """The fused path convolves by the native direct convolution for patches of few
    channels (LeNet-5's convs), one group, no dilation, 2-D, where native ops may run."""
    from keras_dctsparse.layers.conv import DIRECT_CONV_MAX_CHANNEL_PAIRS
    from keras_dctsparse.layers.conv import use_direct_conv

    assert use_direct_conv(1, 6, native=True) and use_direct_conv(6, 16, native=True)
    assert use_direct_conv(3, 64, native=True)
    assert not use_direct_conv(3, 64, native=False)
    assert not use_direct_conv(16, 16, native=True)  # above the bound: Conv2D as fast
    assert not use_direct_conv(DIRECT_CONV_MAX_CHANNEL_PAIRS + 1, 1, native=True)
    assert not use_direct_conv(1, 6, groups=2, native=True)
    assert not use_direct_conv(1, 6, depthwise=True, native=True)
    assert not use_direct_conv(1, 6, dilation=(2, 1), native=True)
    assert not use_direct_conv(1, 6, rank=1, native=True)


@pytest.mark.parametrize("kwargs, shape", [
    (dict(filters=6, kernel_size=5, padding="same"), (3, 12, 12, 1)),
    (dict(filters=16, kernel_size=5, strides=2), (2, 13, 13, 6)),
])
def test_fused_path_of_few_channels_runs_the_direct_conv(kwargs, shape):
    """In a fit/predict step (replica context) the fused conv is `DctSparseDirectConv2D`;
    a plain `tf.function` (as export traces) keeps TensorFlow's Conv2D. Both, and every
    gradient of the direct form, match the numpy reference."""
    layer = DCTSparseConv2D(**kwargs, density=0.8, sparse_kernel="dense", seed=4)
    x = tf.constant(_x(shape))
    assert_gradients_match_reference(layer, x)  # eager: the direct conv

    def op_types(function):
        graph = tf.function(function).get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}

    in_step = op_types(lambda x: tf.distribute.get_strategy().run(layer, args=(x,)))
    assert "DctSparseDirectConv2D" in in_step and "Conv2D" not in in_step
    exported = op_types(layer)
    assert "Conv2D" in exported and not {t for t in exported if t.startswith("DctSparse")}
    with native_policy.native_kernels("never"):
        assert_close(layer(x), reference_output(layer, x.numpy()), rtol=1e-4)
