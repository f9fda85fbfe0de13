"""The layers against numpy/scipy references on whichever Keras backend is active.

Written with `keras.ops` and numpy only, so the same tests run under
`KERAS_BACKEND=tensorflow` (the TF kernels), `jax` and `torch` (the `keras.ops`
implementation, `keras_dctsparse.ops.keras_ops`). `tests/test_backends.py` runs this
directory in a subprocess per backend; the default test run covers TensorFlow.
Forward and all gradients (input, values or masked kernel, alpha, bias) are compared
with `layer_reference` on fresh random inputs; `.keras` files round-trip.
"""

import keras
import numpy as np
import pytest

import keras_dctsparse
from keras_dctsparse import DCTSparseConv1D
from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse import DCTSparseDepthwiseConv2D
from conv_cases import CONV_CASES
from layer_reference import assert_close
from layer_reference import assert_grads_close
from layer_reference import conv_reference
from layer_reference import dense_reference
from layer_reference import gradients
from layer_reference import numpy_sparse
from layer_reference import to_numpy
from numpy_reference import dct_block

BACKEND = keras.backend.backend()
# "csr" exists only on TensorFlow.
DENSE_KERNELS = ["auto", "gather", "materialized"] + (["csr"] if BACKEND == "tensorflow" else [])


def _rng():
    return np.random.default_rng()


def randomize(layer, rng):
    """Nonzero S values and bias, alpha != 1 (as after training)."""
    weight = layer.sparse_weight
    variable = weight.values if weight.values is not None else weight.masked_kernel
    variable.assign(rng.standard_normal(variable.shape).astype("float32") * 0.3)
    if layer.bias is not None:
        layer.bias.assign(rng.standard_normal(layer.bias.shape).astype("float32"))
    if layer.alpha is not None:
        layer.alpha.assign(0.7)


# -- DCTSparseDense ------------------------------------------------------------------------------


@pytest.mark.parametrize("n, m", [(20, 7), (7, 20), (16, 16), (1, 9), (9, 1), (1, 1), (300, 100)])
@pytest.mark.parametrize("sparse_format", ["values", "masked"])
def test_dense_forward_and_gradients(n, m, sparse_format):
    rng = _rng()
    layer = DCTSparseDense(m, density=0.3, sparse_format=sparse_format)
    layer.build((None, n))
    randomize(layer, rng)
    x = rng.standard_normal((6, n)).astype(np.float32)
    dy = rng.standard_normal((6, m))
    y, grads = gradients(layer, x, dy)
    y_ref, grads_ref = dense_reference(layer, x, dy)
    assert_close(y, y_ref)
    assert_grads_close(grads, grads_ref)


@pytest.mark.parametrize("sparse_kernel", DENSE_KERNELS)
@pytest.mark.parametrize("shape", [(200, 60, 40), (5, 24, 300), (3, 64, 64)])
def test_dense_kernels_match_reference(sparse_kernel, shape):
    batch, n, m = shape
    rng = _rng()
    layer = DCTSparseDense(m, density=0.05, sparse_kernel=sparse_kernel)
    layer.build((None, n))
    randomize(layer, rng)
    x = rng.standard_normal((batch, n)).astype(np.float32)
    dy = rng.standard_normal((batch, m))
    y, grads = gradients(layer, x, dy)
    y_ref, grads_ref = dense_reference(layer, x, dy)
    assert_close(y, y_ref)
    assert_grads_close(grads, grads_ref)


@pytest.mark.parametrize("shape", [(5, 3, 12), (2, 3, 4, 12)])
def test_dense_higher_rank_inputs(shape):
    rng = _rng()
    layer = DCTSparseDense(8, density=0.5, sparse_initializer="random_normal")
    x = rng.standard_normal(shape).astype(np.float32)
    y = to_numpy(layer(x))
    assert y.shape == shape[:-1] + (8,)
    expected, _ = dense_reference(layer, x.reshape(-1, 12))
    assert_close(y, expected.reshape(shape[:-1] + (8,)))


def test_dense_zero_initialized_is_pure_dct_and_kernel_view():
    layer = DCTSparseDense(50, density=0.1, use_bias=False)
    x = _rng().standard_normal((4, 80)).astype(np.float32)
    assert_close(to_numpy(layer(x)), x @ dct_block(50, 80).T)
    assert np.all(to_numpy(layer.sparse_weight.values) == 0)
    assert_close(to_numpy(layer.kernel), dct_block(50, 80).T + numpy_sparse(layer))


def test_dense_plain_sparse_baseline_he_normal_fans_of_dense_kernel():
    layer = DCTSparseDense(400, density=0.05, offset=None, use_bias=False, seed=0)
    layer.build((None, 1000))
    assert layer.alpha is None
    values = to_numpy(layer.sparse_weight.values)
    assert abs(values.std() - np.sqrt(2 / 1000)) < 0.1 * np.sqrt(2 / 1000)
    x = _rng().standard_normal((3, 1000)).astype(np.float32)
    assert_close(to_numpy(layer(x)), x @ numpy_sparse(layer))


def test_dense_weights_are_nnz_sized_and_named():
    layer = DCTSparseDense(512, density=0.001, seed=3)
    layer.build((None, 512))
    assert sorted((w.path.split("/")[-1], tuple(w.shape), w.dtype) for w in layer.weights) == [
        ("alpha", (), "float32"),
        ("bias", (512,), "float32"),
        ("sparse_indices", (2, 262), "int32"),
        ("sparse_values", (262,), "float32"),
    ]


def test_huge_dense_layer_builds_and_trains():
    # Dense form: 10^10 weights (40 GB); sparse form: 10,000 values.
    layer = DCTSparseDense(100_000, density=1e-6, seed=0)
    model = keras.Sequential([keras.Input((100_000,)), layer])
    model.compile(keras.optimizers.Adam(0.01), "mse")
    x = _rng().standard_normal((2, 100_000)).astype(np.float32)
    model.fit(x, x, epochs=1, batch_size=2, verbose=0)
    assert layer.nnz == 10_000
    assert np.abs(to_numpy(layer.sparse_weight.values)).max() > 0


@pytest.mark.parametrize("sparse_format", ["values", "masked"])
def test_dense_training_then_reference(sparse_format):
    rng = _rng()
    x = rng.standard_normal((64, 30)).astype(np.float32)
    target = rng.standard_normal((64, 12)).astype(np.float32)
    layer = DCTSparseDense(12, density=0.2, sparse_format=sparse_format)
    model = keras.Sequential([keras.Input((30,)), layer])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, target, epochs=3, batch_size=16, verbose=0,
              callbacks=[keras_dctsparse.EnforceSparsity()])
    assert np.abs(numpy_sparse(layer)).max() > 0.01, "training must move the values"
    assert float(to_numpy(layer.alpha)) != 1.0
    if sparse_format == "masked":
        kernel = to_numpy(layer.sparse_weight.masked_kernel)
        assert np.all(kernel[to_numpy(layer.sparse_weight.mask) == 0] == 0)
    expected, _ = dense_reference(layer, x)
    assert_close(model.predict(x, verbose=0), expected, rtol=1e-4)


# -- convolutions -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONV_CASES))
@pytest.mark.parametrize("sparse_format", ["values", "masked"])
def test_conv_forward_and_gradients(name, sparse_format):
    cls, kwargs, shape = CONV_CASES[name]
    rng = _rng()
    layer = cls(density=0.3, sparse_format=sparse_format, **kwargs)
    layer.build(shape)
    randomize(layer, rng)
    x = rng.standard_normal(shape).astype(np.float32)
    out_shape = layer.compute_output_shape(shape)
    dy = rng.standard_normal(out_shape)
    y, grads = gradients(layer, x, dy)
    y_ref, grads_ref = conv_reference(layer, x, dy)
    assert_close(y, y_ref)
    assert_grads_close(grads, grads_ref)


@pytest.mark.parametrize("cls, kwargs", [
    (DCTSparseConv2D, dict(filters=6, kernel_size=3, padding="same")),
    (DCTSparseDepthwiseConv2D, dict(kernel_size=3, depth_multiplier=2)),
])
def test_conv_channels_first_matches_channels_last(cls, kwargs):
    rng = _rng()
    x = rng.standard_normal((2, 7, 7, 4)).astype(np.float32)
    last = cls(density=0.3, seed=1, **kwargs)
    first = cls(density=0.3, seed=1, data_format="channels_first", **kwargs)
    last.build(x.shape)
    first.build((2, 4, 7, 7))
    randomize(last, np.random.default_rng(5))
    randomize(first, np.random.default_rng(5))
    y_first = to_numpy(first(np.transpose(x, (0, 3, 1, 2))))
    assert_close(np.transpose(y_first, (0, 2, 3, 1)), to_numpy(last(x)))


def test_conv_kernel_view_and_zero_init_is_pure_offset():
    layer = DCTSparseConv2D(8, 3, density=0.1, use_bias=False)
    x = _rng().standard_normal((2, 6, 6, 3)).astype(np.float32)
    y = to_numpy(layer(x))
    expected, _ = conv_reference(layer, x)
    assert_close(y, expected)
    kernel = to_numpy(layer.kernel)
    assert kernel.shape == (3, 3, 3, 8)
    assert_close(kernel.reshape(27, 8), dct_block(8, 27).T)


def test_conv_model_trains():
    rng = _rng()
    x = rng.standard_normal((32, 8, 8, 3)).astype(np.float32)
    target = rng.integers(0, 4, 32)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        DCTSparseConv2D(8, 3, padding="same", density=0.2, activation="relu"),
        DCTSparseDepthwiseConv2D(3, density=0.5, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        DCTSparseDense(4, density=0.5),
    ])
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, target, epochs=4, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


# -- saving ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparse_format", ["values", "masked"])
def test_keras_file_round_trip(tmp_path, sparse_format):
    rng = _rng()
    model = keras.Sequential([
        keras.Input((9, 9, 2)),
        DCTSparseConv2D(4, 3, density=0.3, sparse_format=sparse_format),
        DCTSparseDepthwiseConv2D(3, depth_multiplier=2, density=0.5,
                                 sparse_format=sparse_format),
        keras.layers.Reshape((25, 8)),
        DCTSparseConv1D(5, 3, padding="causal", density=0.3, sparse_format=sparse_format),
        keras.layers.Flatten(),
        DCTSparseDense(6, density=0.1, sparse_format=sparse_format),
    ])
    for layer in model.layers:
        if hasattr(layer, "sparse_weight"):
            randomize(layer, rng)
    x = rng.standard_normal((3, 9, 9, 2)).astype(np.float32)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert [(w.name, tuple(w.shape), w.dtype) for w in restored.weights] == [
        (w.name, tuple(w.shape), w.dtype) for w in model.weights
    ]
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))


# -- backend-specific arguments ------------------------------------------------------------------


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the TF-only options work on TensorFlow")
def test_tensorflow_only_options_are_clear_errors():
    with pytest.raises(ValueError, match=f"sparse_kernel='csr' needs the TensorFlow backend; "
                                         f"KERAS_BACKEND is '{BACKEND}'"):
        DCTSparseDense(4, sparse_kernel="csr")
    with pytest.raises(ValueError, match="needs the TensorFlow backend"):
        DCTSparseConv2D(4, 3, sparse_kernel="sparse")
    with pytest.raises(ValueError, match="needs the TensorFlow backend"):
        DCTSparseConv2D(4, 3, offset_method="matmul")
    layer = DCTSparseDense(4)
    layer.build((None, 3))
    with pytest.raises(NotImplementedError, match="needs the TensorFlow backend"):
        layer.sparse_kernel


# -- export ---------------------------------------------------------------------------------------


@pytest.mark.skipif(BACKEND == "tensorflow", reason="TFLite export is tested in tests/export")
def test_tflite_export_says_it_needs_tensorflow(tmp_path):
    model = keras.Sequential([keras.Input((16,)), DCTSparseDense(4)])
    with pytest.raises(keras_dctsparse.export.TFLiteExportError,
                       match=f"TFLite export needs the TensorFlow backend; KERAS_BACKEND is "
                             f"'{BACKEND}'"):
        keras_dctsparse.export_tflite(model, str(tmp_path / "model.tflite"))


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="Keras 3.15's model.export fails under PyTorch 2.13 for keras.layers.Dense too "
           "(torch.export: structure of inputs and dynamic_shapes differ)",
)
def test_savedmodel_export_serves_same_outputs(tmp_path):
    import tensorflow as tf

    rng = _rng()
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        DCTSparseConv2D(4, 3, density=0.3),
        DCTSparseDepthwiseConv2D(3, density=0.5),
        keras.layers.Flatten(),
        DCTSparseDense(5, density=0.2),
    ])
    for layer in model.layers:
        if hasattr(layer, "sparse_weight"):
            randomize(layer, rng)
    model.export(str(tmp_path / "saved"), verbose=False)
    x = rng.standard_normal((3, 8, 8, 3)).astype(np.float32)
    restored = tf.saved_model.load(str(tmp_path / "saved"))  # kept: owns the variables
    served = restored.serve(x).numpy()
    assert_close(served, model.predict(x, verbose=0))


# -- dtypes ----------------------------------------------------------------------------------------


@pytest.fixture
def mixed_float16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(previous)


def test_mixed_precision_outputs_float16_matching_reference(mixed_float16):
    rng = _rng()
    dense = DCTSparseDense(7, density=0.3)
    conv = DCTSparseConv2D(5, 3, density=0.3)
    dense.build((None, 20))
    conv.build((None, 6, 6, 3))
    randomize(dense, rng)
    randomize(conv, rng)
    # The variables stay float32; the transform runs in float32, the output is float16.
    assert dense.sparse_weight.values.dtype == "float32" and dense.bias.dtype == "float32"
    x = rng.standard_normal((4, 20)).astype(np.float32)
    xc = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    y, yc = dense(x), conv(xc)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert keras.backend.standardize_dtype(yc.dtype) == "float16"
    assert_close(to_numpy(y), dense_reference(dense, x)[0], rtol=3e-3)
    assert_close(to_numpy(yc), conv_reference(conv, xc)[0], rtol=3e-3)
