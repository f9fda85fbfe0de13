"""Tests of keras_dctsparse.export.flatbuffer: rewrites of converted TFLite models."""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from keras_dctsparse.export import builtin_ops
from keras_dctsparse.export import flatbuffer
from tflite_checks import assert_no_flex_ops
from tflite_checks import relative_error
from tflite_checks import run

TFLITE_TOLERANCE = 1e-4


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
        zero = builtin_ops.run_time_zero(x)

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
    assert flatbuffer.tflite_constant_bytes(converted) >= kernel_bytes

    data, cleared = flatbuffer.clear_variable_initial_values(converted, ["kernel"])
    assert cleared == ["kernel"]
    assert flatbuffer.tflite_constant_bytes(data) < kernel_bytes // 4
    assert_no_flex_ops(data)
    assert "CALL_ONCE" in flatbuffer.tflite_op_names(data)
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
    data, cleared = flatbuffer.clear_variable_initial_values(converted, ["other"])
    assert cleared == []
    assert flatbuffer.tflite_constant_bytes(data) == flatbuffer.tflite_constant_bytes(
        converted
    )


def test_strip_tensor_names_keeps_io_names_and_results():
    function = tf.function(
        lambda x: builtin_ops.dct_offset_builtin(x, 30) * 2.0 + 1.0,
        input_signature=[tf.TensorSpec([None, 48], tf.float32, name="pixels")],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], tf.Module()
    )
    data = converter.convert()
    stripped = flatbuffer.strip_tensor_names(data)
    assert len(stripped) < len(data)
    assert flatbuffer.tflite_op_names(stripped) == flatbuffer.tflite_op_names(data)
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


def _matmul_file(placeholder):
    function = tf.function(
        lambda x: tf.matmul(x, tf.constant(placeholder), transpose_b=True) + 1.0,
        autograph=False,
        input_signature=[tf.TensorSpec([None, placeholder.shape[1]], tf.float32)],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function
    )
    return converter.convert()


def _random_csr(rows, cols, nnz, seed):
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(rows * cols, nnz, replace=False))
    r, c = np.divmod(flat, cols)
    values = rng.standard_normal(nnz).astype(np.float32)
    segments = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=rows))])
    dense = np.zeros((rows, cols), np.float32)
    dense[r, c] = values
    return values, segments, c, dense


def test_csr_sparsify_constants_runs_the_sparse_fully_connected():
    rows, cols = 30, 300  # column indices need 16 bits
    placeholder = np.random.default_rng(0).random((rows, cols)).astype(np.float32) + 1.0
    values, segments, indices, dense = _random_csr(rows, cols, 200, seed=1)
    data = flatbuffer.csr_sparsify_constants(
        _matmul_file(placeholder), [(placeholder, values, segments, indices)]
    )
    assert_no_flex_ops(data)
    assert flatbuffer.tflite_constant_bytes(data) < 4 * 200 + 4 * rows + 64  # values, bias
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    (sparse,) = [t for t in model.subgraphs[0].tensors if t.sparsity is not None]
    assert list(sparse.shape) == [rows, cols]
    versions = {code.version for code in model.operatorCodes}
    assert flatbuffer.SPARSE_OPERATOR_VERSION in versions
    # The default delegate (XNNPACK) must leave it to TFLite's sparse kernel.
    interpreter = Interpreter(model_content=data)
    x = np.random.default_rng(2).standard_normal((7, cols)).astype(np.float32)
    assert relative_error(run(interpreter, x), x @ dense.T + 1.0) < TFLITE_TOLERANCE


def test_csr_sparsify_constants_needs_the_placeholder():
    placeholder = np.ones((3, 4), np.float32) * 0.5
    values, segments, indices, _ = _random_csr(3, 4, 2, seed=3)
    data = _matmul_file(placeholder)
    with pytest.raises(ValueError, match="no buffer"):
        flatbuffer.csr_sparsify_constants(data, [(placeholder * 2, values, segments, indices)])
    with pytest.raises(ValueError, match="CSR"):
        flatbuffer.csr_sparsify_constants(data, [(placeholder, values, segments[:-1], indices)])


def test_float16_constants_keeps_scalars_and_runs_branches():
    # A kernel built in an IF branch from a COS of scaled indices: in float16 the
    # scalar scale pi / 2000 would be off by 2e-4 relative, and cos(i * scale) by
    # up to 4e-3; it stays float32, the 300-entry table becomes float16.
    rows, cols = 20, 15
    table = np.random.default_rng(0).standard_normal(rows * cols).astype(np.float32)

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.flag = tf.Variable(False)
            self.kernel = tf.Variable(tf.zeros((rows, cols)))

        def __call__(self, x):
            zero = builtin_ops.run_time_zero(x)

            def build():
                index = tf.cast(tf.range(zero, zero + rows * cols), tf.float32)
                kernel = tf.reshape(
                    tf.cos(index * np.float32(np.pi / 2000)) + tf.constant(table), (rows, cols)
                )
                with tf.control_dependencies([self.kernel.assign(kernel), self.flag.assign(True)]):
                    return tf.identity(zero)

            ready = tf.cond(self.flag, lambda: tf.identity(zero), build)
            with tf.control_dependencies([ready]):
                return tf.matmul(x, self.kernel.read_value(), transpose_b=True)

    module = Model()
    function = tf.function(
        module.__call__, input_signature=[tf.TensorSpec([None, cols])], autograph=False
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], module
    )
    data, count = flatbuffer.float16_constants(converter.convert())
    assert count >= 1
    assert "DEQUANTIZE" in flatbuffer.tflite_op_names(data)
    kernel = np.cos(np.arange(rows * cols) * np.pi / 2000) + table.astype(np.float16)
    x = np.random.default_rng(1).standard_normal((7, cols)).astype(np.float32)
    interpreter = Interpreter(model_content=data)
    for _ in range(2):  # built at the first call, read at the second
        actual = run(interpreter, x)
        assert relative_error(actual, x @ kernel.reshape(rows, cols).T) < 1e-5
