"""Tests of the TFLite-exportable ops: accuracy, builtins-only conversion, dynamic batch."""

import functools
import math

import numpy as np
import pytest
import scipy.fft
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from keras_dctsparse.ops import tflite_ops
from keras_dctsparse.ops.transforms import dct_offset
from tflite_checks import assert_no_flex_ops
from tflite_checks import relative_error
from tflite_checks import run

EAGER_LENGTHS = (1, 2, 3, 7, 10, 48, 100, 300, 784, 1000, 4096, 5000)
TFLITE_LAYERS = ((784, 300), (300, 100), (100, 10), (1000, 1000), (4096, 4096), (10, 300))
TFLITE_TOLERANCE = 1e-4


def eager_tolerance(length):
    """Relative-norm tolerance of the float32 transform of length `length`.

    The relative rms round-off of a float32 FFT grows like `eps * sqrt(log2 M)`
    (`eps = 6e-8`). Bluestein chains three FFT-sized stages of length
    `M < 4N` plus O(1) elementwise steps, so `1e-6 * sqrt(1 + log2 N)` (about
    16 eps per stage) leaves a wide margin; the measured error is 0.5e-7 to
    2e-7 for every length up to 1e5.
    """
    return 1e-6 * math.sqrt(1.0 + math.log2(length))


def reference_dct(x, length, count):
    """First `count` ortho DCT-II coefficients of `x` zero-padded to `length`, float64."""
    padded = np.zeros(x.shape[:-1] + (length,))
    padded[..., : x.shape[-1]] = x
    return scipy.fft.dct(padded, type=2, norm="ortho", axis=-1)[..., :count]


def dense_kernel(values, rows, cols, input_dim, units):
    kernel = np.zeros((input_dim, units))
    np.add.at(kernel, (rows, cols), values)
    return kernel


def random_sparse(input_dim, units, nnz, seed):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, input_dim, nnz).astype(np.int32)
    cols = rng.integers(0, units, nnz).astype(np.int32)
    return rng.standard_normal(nnz).astype(np.float32), rows, cols


def convert(fn, input_dim, select_tf_ops=False):
    """Converts `fn` on a `(None, input_dim)` float32 input; builtins only by default."""
    function = tf.function(
        fn, input_signature=[tf.TensorSpec([None, input_dim], tf.float32)]
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if select_tf_ops:
        converter.target_spec.supported_ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    return converter.convert()


@functools.lru_cache(maxsize=None)
def converted_offset(input_dim, units, constants="stored"):
    return convert(lambda x: tflite_ops.dct_offset_builtin(x, units, constants), input_dim)


# Eager TensorFlow accuracy.


@pytest.mark.parametrize("constants", tflite_ops.CONSTANTS)
@pytest.mark.parametrize("length", EAGER_LENGTHS)
def test_dct2_matches_scipy(length, constants):
    rng = np.random.default_rng(length)
    for input_dim in sorted({length, length // 3 + 1}):
        x = rng.standard_normal((3, input_dim)).astype(np.float32)
        y = tflite_ops.dct2_ortho_builtin(x, length, constants).numpy()
        assert y.shape == (3, length)
        error = relative_error(y, reference_dct(x, length, length))
        assert error < eager_tolerance(length), (input_dim, error)


@pytest.mark.parametrize("constants", tflite_ops.CONSTANTS)
@pytest.mark.parametrize("length", EAGER_LENGTHS)
def test_dct_offset_matches_scipy(length, constants):
    rng = np.random.default_rng(length + 1)
    half = length // 2
    for input_dim, units in sorted(
        {(length, 1), (length, half + 1), (length, length), (1, length), (half + 1, length)}
    ):
        if max(input_dim, units) != length:
            continue
        x = rng.standard_normal((2, input_dim)).astype(np.float32)
        y = tflite_ops.dct_offset_builtin(x, units, constants).numpy()
        error = relative_error(y, reference_dct(x, length, units))
        assert error < eager_tolerance(length), (input_dim, units, error)


def test_dct_offset_matches_tf_signal_version():
    x = np.random.default_rng(0).standard_normal((4, 784)).astype(np.float32)
    expected = dct_offset(tf.constant(x), 300).numpy()
    actual = tflite_ops.dct_offset_builtin(x, 300).numpy()
    assert relative_error(actual, expected) < eager_tolerance(784)


def test_dct_keeps_leading_dims():
    x = np.random.default_rng(1).standard_normal((2, 3, 10)).astype(np.float32)
    y = tflite_ops.dct2_ortho_builtin(x, 12).numpy()
    assert y.shape == (2, 3, 12)
    assert relative_error(y, reference_dct(x, 12, 12)) < eager_tolerance(12)
    assert tflite_ops.dct_offset_builtin(x[0, 0], 4).shape == (4,)


def test_dct_rejects_short_length():
    with pytest.raises(ValueError, match="at least"):
        tflite_ops.dct2_ortho_builtin(tf.zeros((1, 10)), 8)


def test_fft_length_helpers():
    assert [tflite_ops.is_power_of_two(v) for v in (1, 2, 3, 48, 64)] == [
        True,
        True,
        False,
        False,
        True,
    ]
    assert tflite_ops.bluestein_fft_length(1, 1) == 1
    assert tflite_ops.bluestein_fft_length(1000, 501) == 2048
    assert tflite_ops.bluestein_fft_length(784, 300) == 2048  # 1083 -> 2048
    assert tflite_ops.bluestein_fft_length(300, 151) == 512


def test_sparse_matmul_matches_dense():
    values, rows, cols = random_sparse(50, 20, 120, seed=2)  # with duplicates
    kernel = dense_kernel(values, rows, cols, 50, 20)
    x = np.random.default_rng(3).standard_normal((2, 3, 50)).astype(np.float32)
    y = tflite_ops.sparse_matmul_builtin(x, values, rows, cols, 20).numpy()
    assert y.shape == (2, 3, 20)
    np.testing.assert_allclose(y, x @ kernel, rtol=1e-5, atol=1e-5)


# TFLite conversion (builtins only) and the ai-edge-litert interpreter.


@pytest.mark.parametrize("constants", tflite_ops.CONSTANTS)
@pytest.mark.parametrize("input_dim,units", TFLITE_LAYERS)
def test_tflite_dct_offset(input_dim, units, constants):
    model = converted_offset(input_dim, units, constants)
    assert_no_flex_ops(model)
    interpreter = Interpreter(model_content=model)
    rng = np.random.default_rng(input_dim * units)
    length = max(input_dim, units)
    for batch in (1, 7):
        x = rng.standard_normal((batch, input_dim)).astype(np.float32)
        y = run(interpreter, x)
        assert y.shape == (batch, units)
        assert relative_error(y, reference_dct(x, length, units)) < TFLITE_TOLERANCE


@pytest.mark.parametrize("input_dim,units", [(1000, 1000), (4096, 4096)])
def test_tflite_dct_constants_are_linear_in_length(input_dim, units):
    # A stored D would take 4 * N * N bytes; the chirps and twiddles take O(N).
    length = max(input_dim, units)
    assert len(converted_offset(input_dim, units)) < 64 * length
    assert "RFFT2D" in tflite_ops.tflite_op_names(converted_offset(input_dim, units))


@pytest.mark.parametrize("input_dim,units", [(784, 300), (1000, 1000), (5000, 77)])
def test_tflite_computed_constants_store_no_tables(input_dim, units):
    stored = converted_offset(input_dim, units)
    computed = converted_offset(input_dim, units, "computed")
    assert {"COS", "SIN"} <= set(tflite_ops.tflite_op_names(computed))
    # The stored tables hold several float32 arrays of length N or M >= N;
    # computed, only a few small shape constants are left.
    assert tflite_ops.tflite_constant_bytes(stored) > 4 * 4 * max(input_dim, units)
    assert tflite_ops.tflite_constant_bytes(computed) < 1024
    assert len(computed) < len(stored)


def test_unknown_constants_is_an_error():
    with pytest.raises(ValueError, match="constants.*'table'"):
        tflite_ops.dct_offset_builtin(tf.zeros((1, 10)), 5, constants="table")


def test_tflite_layer_with_dynamic_batch():
    input_dim, units = 300, 100
    values, rows, cols = random_sparse(input_dim, units, 300, seed=4)

    def layer(x):
        offset = tflite_ops.dct_offset_builtin(x, units)
        return 0.5 * offset + tflite_ops.sparse_matmul_builtin(
            x, values, rows, cols, units
        )

    model = convert(layer, input_dim)
    assert_no_flex_ops(model)
    names = tflite_ops.tflite_op_names(model)
    assert {"GATHER", "UNSORTED_SEGMENT_SUM", "RFFT2D"} <= set(names)
    kernel = dense_kernel(values, rows, cols, input_dim, units)
    interpreter = Interpreter(model_content=model)
    rng = np.random.default_rng(5)
    for batch in (1, 7, 1):
        x = rng.standard_normal((batch, input_dim)).astype(np.float32)
        expected = 0.5 * reference_dct(x, input_dim, units) + x @ kernel
        y = run(interpreter, x)
        assert y.shape == (batch, units)
        assert relative_error(y, expected) < TFLITE_TOLERANCE


def test_assert_no_flex_ops_catches_tf_signal_dct():
    model = convert(
        lambda x: tf.signal.dct(x, type=2, norm="ortho"), 48, select_tf_ops=True
    )
    assert any(name.startswith("CUSTOM:Flex") for name in tflite_ops.tflite_op_names(model))
    with pytest.raises(AssertionError, match="Flex"):
        assert_no_flex_ops(model)


class _BuiltOnceMatmul(tf.Module):
    """`x @ K^T` with `K = cos-table + scatter(values)` built at the first call only."""

    def __init__(self, rows, cols, positions, values):
        super().__init__()
        self.shape = (rows, cols)
        self.positions = positions
        self.values = values
        self.built_flag = tf.Variable(False, name="built")
        self.kernel = tf.Variable(tf.zeros((rows, cols)), name="kernel")

    def build_kernel(self, zero):
        rows, cols = self.shape
        index = tf.range(zero, zero + rows * cols)
        table = tf.cos(tf.cast(index, tf.float32) * np.float32(0.01))
        sparse = tf.scatter_nd(
            tf.constant(self.positions)[:, None] + zero,
            tf.constant(self.values),
            [rows * cols + zero],
        )
        return tf.reshape(table + sparse, self.shape)

    def __call__(self, x):
        zero = tflite_ops.run_time_zero(x)

        def build():
            kernel = self.build_kernel(zero)
            assigned = [self.kernel.assign(kernel), self.built_flag.assign(True)]
            with tf.control_dependencies(assigned):
                return tf.identity(kernel)

        kernel = tf.cond(self.built_flag, self.kernel.read_value, build)
        return tf.matmul(x, kernel, transpose_b=True)


def test_clear_variable_initial_values_keeps_a_built_once_kernel_out_of_the_file():
    rows, cols, nnz = 40, 96, 37
    rng = np.random.default_rng(3)
    positions = rng.choice(rows * cols, nnz, replace=False).astype(np.int32)
    values = rng.standard_normal(nnz).astype(np.float32)
    module = _BuiltOnceMatmul(rows, cols, positions, values)
    function = tf.function(module.__call__, input_signature=[tf.TensorSpec([None, cols])])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converted = converter.convert()
    kernel_bytes = 4 * rows * cols
    # Without the rewrite the zero initial value is stored: the test can fail.
    assert tflite_ops.tflite_constant_bytes(converted) >= kernel_bytes

    data, cleared = tflite_ops.clear_variable_initial_values(converted, ["kernel"])
    assert cleared == ["kernel"]
    assert tflite_ops.tflite_constant_bytes(data) < kernel_bytes // 4
    assert_no_flex_ops(data)
    assert "CALL_ONCE" in tflite_ops.tflite_op_names(data)
    flat = np.cos(np.arange(rows * cols, dtype=np.float64) * np.float32(0.01))
    flat += np.bincount(positions, values, rows * cols)
    kernel = flat.reshape(rows, cols)
    interpreter = Interpreter(model_content=data)
    for batch in (1, 7, 1, 7):  # the later calls read the kernel built by the first
        x = rng.standard_normal((batch, cols)).astype(np.float32)
        assert relative_error(run(interpreter, x), x @ kernel.T) < TFLITE_TOLERANCE


def test_clear_variable_initial_values_leaves_other_variables():
    module = _BuiltOnceMatmul(4, 6, np.array([1, 5], np.int32), np.ones(2, np.float32))
    function = tf.function(module.__call__, input_signature=[tf.TensorSpec([None, 6])])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], module
    )
    converted = converter.convert()
    data, cleared = tflite_ops.clear_variable_initial_values(converted, ["other"])
    assert cleared == []
    assert tflite_ops.tflite_constant_bytes(data) == tflite_ops.tflite_constant_bytes(
        converted
    )


def test_strip_tensor_names_keeps_io_names_and_results():
    function = tf.function(
        lambda x: tflite_ops.dct_offset_builtin(x, 30) * 2.0 + 1.0,
        input_signature=[tf.TensorSpec([None, 48], tf.float32, name="pixels")],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], tf.Module()
    )
    data = converter.convert()
    stripped = tflite_ops.strip_tensor_names(data)
    assert len(stripped) < len(data)
    assert tflite_ops.tflite_op_names(stripped) == tflite_ops.tflite_op_names(data)
    before, after = Interpreter(model_content=data), Interpreter(model_content=stripped)
    assert after.get_signature_list() == before.get_signature_list()
    assert len(before.get_signature_list()) == 1
    assert [d["name"] for d in after.get_input_details()] == [
        d["name"] for d in before.get_input_details()
    ]
    x = np.random.default_rng(0).standard_normal((3, 48)).astype(np.float32)
    np.testing.assert_array_equal(run(after, x), run(before, x))
    runner = after.get_signature_runner()
    np.testing.assert_array_equal(list(runner(pixels=x).values())[0], run(before, x))
