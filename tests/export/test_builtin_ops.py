"""Tests of keras_dctsparse.export.builtin_ops: accuracy, builtins-only conversion, dynamic batch."""

import functools
import math

import numpy as np
import pytest
import scipy.fft
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from keras_dctsparse.export import builtin_ops
from keras_dctsparse.export.flatbuffer import tflite_constant_bytes
from keras_dctsparse.export.flatbuffer import tflite_op_names
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
    return convert(lambda x: builtin_ops.dct_offset_builtin(x, units, constants), input_dim)


# Eager TensorFlow accuracy.


@pytest.mark.parametrize("constants", builtin_ops.CONSTANTS)
@pytest.mark.parametrize("length", EAGER_LENGTHS)
def test_dct2_matches_scipy(length, constants):
    rng = np.random.default_rng(length)
    for input_dim in sorted({length, length // 3 + 1}):
        x = rng.standard_normal((3, input_dim)).astype(np.float32)
        y = builtin_ops.dct2_ortho_builtin(x, length, constants).numpy()
        assert y.shape == (3, length)
        error = relative_error(y, reference_dct(x, length, length))
        assert error < eager_tolerance(length), (input_dim, error)


@pytest.mark.parametrize("constants", builtin_ops.CONSTANTS)
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
        y = builtin_ops.dct_offset_builtin(x, units, constants).numpy()
        error = relative_error(y, reference_dct(x, length, units))
        assert error < eager_tolerance(length), (input_dim, units, error)


def test_dct_offset_matches_tf_signal_version():
    x = np.random.default_rng(0).standard_normal((4, 784)).astype(np.float32)
    expected = dct_offset(tf.constant(x), 300).numpy()
    actual = builtin_ops.dct_offset_builtin(x, 300).numpy()
    assert relative_error(actual, expected) < eager_tolerance(784)


def test_dct_keeps_leading_dims():
    x = np.random.default_rng(1).standard_normal((2, 3, 10)).astype(np.float32)
    y = builtin_ops.dct2_ortho_builtin(x, 12).numpy()
    assert y.shape == (2, 3, 12)
    assert relative_error(y, reference_dct(x, 12, 12)) < eager_tolerance(12)
    assert builtin_ops.dct_offset_builtin(x[0, 0], 4).shape == (4,)


def test_dct_rejects_short_length():
    with pytest.raises(ValueError, match="at least"):
        builtin_ops.dct2_ortho_builtin(tf.zeros((1, 10)), 8)


def test_fft_length_helpers():
    assert [builtin_ops.is_power_of_two(v) for v in (1, 2, 3, 48, 64)] == [
        True,
        True,
        False,
        False,
        True,
    ]
    assert builtin_ops.bluestein_fft_length(1, 1) == 1
    assert builtin_ops.bluestein_fft_length(1000, 501) == 2048
    assert builtin_ops.bluestein_fft_length(784, 300) == 2048  # 1083 -> 2048
    assert builtin_ops.bluestein_fft_length(300, 151) == 512


def test_sparse_matmul_matches_dense():
    values, rows, cols = random_sparse(50, 20, 120, seed=2)  # with duplicates
    kernel = dense_kernel(values, rows, cols, 50, 20)
    x = np.random.default_rng(3).standard_normal((2, 3, 50)).astype(np.float32)
    y = builtin_ops.sparse_matmul_builtin(x, values, rows, cols, 20).numpy()
    assert y.shape == (2, 3, 20)
    np.testing.assert_allclose(y, x @ kernel, rtol=1e-5, atol=1e-5)


# TFLite conversion (builtins only) and the ai-edge-litert interpreter.


@pytest.mark.parametrize("constants", builtin_ops.CONSTANTS)
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


@pytest.mark.parametrize("input_dim,units", [(1000, 1000), (4096, 4096), (5000, 77)])
def test_tflite_dct_constants_are_linear_in_length(input_dim, units):
    # A stored D would take 4 * N * N bytes; the chirps, twiddles and the small
    # DFT matrices of a mixed-radix split (1000 = 40 * 25) take O(N).
    length = max(input_dim, units)
    assert len(converted_offset(input_dim, units)) < 64 * length
    names = set(tflite_op_names(converted_offset(input_dim, units)))
    if not builtin_ops.is_power_of_two(length) and builtin_ops.mixed_radix_factors(length):
        assert "RFFT2D" not in names and "FULLY_CONNECTED" in names
    else:  # 4096: one real FFT; 5000 = 2^3 5^4 has no split into factors <= 64: Bluestein
        assert "RFFT2D" in names


@pytest.mark.parametrize("input_dim,units", [(784, 300), (1000, 1000), (5000, 77)])
def test_tflite_computed_constants_store_no_tables(input_dim, units):
    stored = converted_offset(input_dim, units)
    computed = converted_offset(input_dim, units, "computed")
    assert {"COS", "SIN"} <= set(tflite_op_names(computed))
    # The stored tables hold several float32 arrays of length N or M >= N;
    # computed, only a few small shape constants are left.
    assert tflite_constant_bytes(stored) > 4 * 4 * max(input_dim, units)
    assert tflite_constant_bytes(computed) < 1024
    assert len(computed) < len(stored)


@pytest.mark.parametrize("input_dim,units", [(784, 300), (300, 100), (12, 5), (15, 15), (21, 63)])
def test_tflite_at_load_constants(input_dim, units):
    # The mixed-radix DFT matrices (N % 4 == 0) are built by allocate_tensors from a
    # half period of N / 2 + 1 cosines; other lengths keep stored tables (15, 63).
    # The Makhoul reordering is one GATHER (odd lengths too).
    length = max(input_dim, units)
    stored = converted_offset(input_dim, units)
    at_load = converted_offset(input_dim, units, "at_load")
    assert_no_flex_ops(at_load)
    if length % 4 == 0:
        assert tflite_constant_bytes(at_load) < tflite_constant_bytes(stored) - 4 * length
        n1, n2 = builtin_ops.mixed_radix_factors(length)
        interpreter = Interpreter(
            model_content=at_load, experimental_preserve_all_tensors=True
        )
        interpreter.allocate_tensors()  # no invoke: the DFT matrices are already there
        products = [
            op for op in interpreter._get_ops_details()
            if op["op_name"] in ("FULLY_CONNECTED", "BATCH_MATMUL")
        ]
        weights = [interpreter.get_tensor(int(op["inputs"][1])) for op in products]
        # The inner DFT_N1 of the real input: [cos | -sin] of 2 pi a b / N1 (numpy).
        a = np.arange(n1)
        angle = 2 * np.pi * np.outer(a, a) / n1
        inner = np.concatenate([np.cos(angle), -np.sin(angle)], axis=1)
        assert any(
            w.shape == inner.shape and np.allclose(w, inner, atol=1e-6) for w in weights
        )
    interpreter = Interpreter(model_content=at_load)
    rng = np.random.default_rng()
    for batch in (1, 7):
        x = rng.standard_normal((batch, input_dim)).astype(np.float32)
        y = run(interpreter, x)
        assert relative_error(y, reference_dct(x, length, units)) < TFLITE_TOLERANCE


def test_unknown_constants_is_an_error():
    with pytest.raises(ValueError, match="constants.*'table'"):
        builtin_ops.dct_offset_builtin(tf.zeros((1, 10)), 5, constants="table")


def test_tflite_layer_with_dynamic_batch():
    input_dim, units = 300, 100
    values, rows, cols = random_sparse(input_dim, units, 300, seed=4)

    def layer(x):
        offset = builtin_ops.dct_offset_builtin(x, units)
        return 0.5 * offset + builtin_ops.sparse_matmul_builtin(
            x, values, rows, cols, units
        )

    model = convert(layer, input_dim)
    assert_no_flex_ops(model)
    names = tflite_op_names(model)
    # 300 = 20 * 15: the mixed-radix DCT (FULLY_CONNECTEDs), no FFT.
    assert {"GATHER", "UNSORTED_SEGMENT_SUM", "FULLY_CONNECTED"} <= set(names)
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
    assert any(name.startswith("CUSTOM:Flex") for name in tflite_op_names(model))
    with pytest.raises(AssertionError, match="Flex"):
        assert_no_flex_ops(model)


# Tensors built when the interpreter prepares the graph.


@pytest.mark.parametrize(
    "input_dim,units", [(1, 1), (5, 1), (1, 5), (7, 7), (3, 2), (10, 100), (784, 300), (300, 100)]
)
def test_dct_kernel_at_load_matches_scipy(input_dim, units):
    length = max(input_dim, units)
    expected = scipy.fft.dct(np.eye(length), type=2, norm="ortho", axis=0)[:units, :input_dim]
    kernel = builtin_ops.dct_kernel_at_load(tf.ones((2, input_dim)), units, input_dim, -0.6)
    assert kernel.shape == (units, input_dim)
    np.testing.assert_allclose(kernel.numpy(), -0.6 * expected, atol=1e-7)


def test_dct_kernel_at_load_is_computed_by_allocate_tensors():
    input_dim, units = 40, 24
    data = convert(
        lambda x: tf.matmul(
            x, builtin_ops.dct_kernel_at_load(x, units, input_dim, 1.5), transpose_b=True
        ),
        input_dim,
    )
    assert_no_flex_ops(data)
    # Only O(N) constants: the table and small index vectors, never the kernel.
    assert tflite_constant_bytes(data) < 4 * (2 * input_dim + 2) + 256
    expected = 1.5 * scipy.fft.dct(np.eye(input_dim), type=2, norm="ortho", axis=0)[:units]
    for batch in (1, 7):
        interpreter = Interpreter(model_content=data, experimental_preserve_all_tensors=True)
        interpreter.resize_tensor_input(0, [batch, input_dim])
        interpreter.allocate_tensors()  # no invoke: the kernel is already there
        (fc,) = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
        np.testing.assert_allclose(
            interpreter.get_tensor(int(fc["inputs"][1])), expected, atol=1e-6
        )
        x = np.random.default_rng(batch).standard_normal((batch, input_dim)).astype(np.float32)
        assert relative_error(run(interpreter, x), x @ expected.T) < TFLITE_TOLERANCE


def test_load_time_int():
    assert int(builtin_ops.load_time_int(tf.ones((4, 3)), 9)) == 9
    data = convert(lambda x: x * tf.cast(builtin_ops.load_time_int(x, 3), tf.float32), 2)
    interpreter = Interpreter(model_content=data)
    for batch in (1, 5):
        x = np.ones((batch, 2), np.float32)
        np.testing.assert_array_equal(run(interpreter, x), 3 * x)


def test_dct_kernel_at_load_rejects_int32_overflow():
    with pytest.raises(ValueError, match="int32"):
        builtin_ops.dct_kernel_at_load(tf.ones((1, 4)), 2**16, 2**15, 1.0)


# Mixed-radix (two-factor Cooley-Tukey) DFT for lengths that are not powers of two.

MIXED_LENGTHS = (6, 15, 62, 100, 124, 300, 784, 1000, 3000, 4032)


def test_mixed_radix_factors():
    assert builtin_ops.mixed_radix_factors(784) == (28, 28)
    assert builtin_ops.mixed_radix_factors(4032) == (64, 63)
    # Primes, a prime factor > 64, no split with both factors <= 64 (4095 = 65 * 63).
    for length in (2, 3, 5, 97, 1009, 2 * 67, 4095, 5000):
        assert builtin_ops.mixed_radix_factors(length) is None, length
    for length in MIXED_LENGTHS:
        n1, n2 = builtin_ops.mixed_radix_factors(length)
        assert n1 * n2 == length and 2 <= n2 <= n1 <= builtin_ops.MAX_RADIX


@pytest.mark.parametrize("length", MIXED_LENGTHS + (1, 2, 7, 97, 134))
def test_dct_of_any_length_matches_scipy_on_fresh_inputs(length):
    # Fresh random inputs (seeded by the length), every path: the mixed-radix split,
    # one real FFT (powers of two), Bluestein (primes, 134 = 2 * 67), length 1.
    rng = np.random.default_rng(1000 + length)
    for units in sorted({1, length // 2 + 1, length}):
        x = rng.standard_normal((3, length)).astype(np.float32)
        y = builtin_ops.dct_offset_builtin(x, units).numpy()
        assert relative_error(y, reference_dct(x, length, units)) < eager_tolerance(length)


@pytest.mark.parametrize("input_dim,units", [(784, 300), (300, 100), (100, 10), (15, 15)])
def test_tflite_mixed_radix_dct(input_dim, units):
    model = converted_offset(input_dim, units)
    assert_no_flex_ops(model)
    assert "RFFT2D" not in tflite_op_names(model)
    interpreter = Interpreter(model_content=model)
    rng = np.random.default_rng(input_dim + units)
    for batch in (1, 7):
        x = rng.standard_normal((batch, input_dim)).astype(np.float32)
        y = run(interpreter, x)
        length = max(input_dim, units)
        assert relative_error(y, reference_dct(x, length, units)) < TFLITE_TOLERANCE
