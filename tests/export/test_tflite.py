"""Tests of `export_tflite`: builtin-only files that match Keras, stay sparse, write atomically."""

import functools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from keras_dctsparse import DCTSparseConv1D
from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse import DCTSparseDepthwiseConv2D
from keras_dctsparse import builtin_ops_mode
from keras_dctsparse import export_tflite
from keras_dctsparse import models
from keras_dctsparse.export import TFLiteExportError
from keras_dctsparse.export import convert_tflite
from keras_dctsparse.export.builtin_ops import is_power_of_two
from keras_dctsparse.export.tflite import INT8_MIN_SAVING_BYTES
from keras_dctsparse.export.tflite import POSITION_GAPS_MIN_SAVING_BYTES
from keras_dctsparse.export.tflite import delta_encode
from keras_dctsparse.export.tflite import layer_form
from keras_dctsparse.export.tflite import layer_sparse_product
from keras_dctsparse.export.tflite import pack_positions
from keras_dctsparse.export.tflite import quantize_int8
from keras_dctsparse.export.tflite import sparse_entries
from keras_dctsparse.layers import DCTSparseLayer
from keras_dctsparse.export.flatbuffer import tflite_constant_bytes
from keras_dctsparse.export.flatbuffer import tflite_op_names
from tflite_checks import assert_no_flex_ops
from tflite_checks import largest_constant_bytes
from tflite_checks import relative_error
from tflite_checks import run
from tflite_checks import subgraph_op_names

TOLERANCE = 1e-4
LAYER_SIZES = ((784, 300), (300, 100), (100, 10), (1000, 1000), (4096, 4096))
INDEX_BYTES = 4  # one packed int32 position (row * m + col) per entry


def randomize(model, seed, scale=0.1, alpha=0.7):
    """Nonzero random sparse values and biases, `alpha != 1` (as after training)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not isinstance(layer, DCTSparseLayer):
            continue
        weight = layer.sparse_weight
        if weight.sparse_format == "masked":
            mask = keras.ops.convert_to_numpy(weight.mask)
            weight.masked_kernel.assign(
                mask * rng.standard_normal(mask.shape).astype(np.float32) * scale
            )
        else:
            weight.values.assign(rng.standard_normal(weight.nnz).astype(np.float32) * scale)
        if layer.alpha is not None:
            layer.alpha.assign(alpha)
        if layer.bias is not None:
            layer.bias.assign(rng.standard_normal(layer.bias.shape).astype(np.float32) * scale)
    return model


def assert_matches_keras(model, tflite_bytes, seed, tolerance=TOLERANCE, batches=(1, 7, 7)):
    interpreter = Interpreter(model_content=tflite_bytes)
    rng = np.random.default_rng(seed)
    input_shape = tuple(model.inputs[0].shape[1:])
    for batch in batches:
        x = rng.standard_normal((batch,) + input_shape).astype(np.float32)
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        actual = run(interpreter, x)
        assert actual.shape == expected.shape
        assert relative_error(actual, expected) < tolerance, (batch, relative_error(actual, expected))


def single_layer_model(input_dim, units, density, **kwargs):
    model = keras.Sequential(
        [keras.Input((input_dim,)), DCTSparseDense(units, density=density, seed=0, **kwargs)]
    )
    return randomize(model, seed=input_dim + units)


def lenet(density, seed=0, **kwargs):
    model = keras.Sequential(
        [
            keras.Input((784,)),
            DCTSparseDense(300, density=density, activation="relu", seed=seed, **kwargs),
            DCTSparseDense(100, density=density, activation="relu", seed=seed + 1, **kwargs),
            DCTSparseDense(10, density=density, activation="softmax", seed=seed + 2, **kwargs),
        ]
    )
    return randomize(model, seed=seed)


def nnz(model):
    return sum(layer.nnz for layer in model.layers if isinstance(layer, DCTSparseLayer))


def position_bytes(model):
    """Bytes of the stored positions: 2 per entry for layers stored as 16-bit gaps, else 4."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, DCTSparseLayer):
            narrow = 2 * layer.nnz > POSITION_GAPS_MIN_SAVING_BYTES
            total += (2 if narrow else 4) * layer.nnz
    return total


@functools.lru_cache(maxsize=None)
def lenet_files(density):
    """(model, float32 bytes, float16 bytes, dynamic int8 bytes) of a LeNet-300-100."""
    model = lenet(density)
    return (
        model,
        convert_tflite(model),
        convert_tflite(model, quantization="float16"),
        convert_tflite(model, quantization="dynamic_int8"),
    )


@pytest.mark.parametrize("input_dim,units", LAYER_SIZES)
def test_layer_matches_keras(input_dim, units, tmp_path):
    density = 0.002 if input_dim * units > 10**6 else 0.02
    model = single_layer_model(input_dim, units, density, alpha=0.5)
    path = tmp_path / "layer.tflite"
    data = export_tflite(model, path)
    assert path.read_bytes() == data
    assert_no_flex_ops(data)
    names = set(tflite_op_names(data))
    assert {"GATHER", "UNSORTED_SEGMENT_SUM"} <= names
    # One real FFT for powers of two, else two small DFT matmuls (mixed radix).
    assert ("RFFT2D" in names) == is_power_of_two(max(input_dim, units))
    assert largest_constant_bytes(data) < 4 * input_dim * units // 4
    # Sparse values, positions and O(N) DCT constants; never the dense matrix.
    layer = model.layers[0]
    assert len(data) < layer.nnz * (4 + INDEX_BYTES) + 64 * max(input_dim, units) + 20000
    assert_matches_keras(model, data, seed=units)
    assert "call" not in layer.__dict__  # the export-time call is removed


def test_lenet_size_is_linear_in_nnz():
    model, data, _, _ = lenet_files(0.01)
    assert_no_flex_ops(data)
    assert_matches_keras(model, data, seed=1)
    # Overhead: the same model with one entry per layer (biases, DCT constants,
    # metadata). Formula: size ~= nnz * (4 + INDEX_BYTES) + overhead.
    minimal = lenet(1e-9)
    assert nnz(minimal) == 3
    overhead = len(convert_tflite(minimal))
    predicted = nnz(model) * (4 + INDEX_BYTES) + overhead
    print(
        f"\nLeNet-300-100 density 0.01: nnz={nnz(model)} size={len(data)} B, "
        f"overhead={overhead} B, predicted={predicted} B"
    )
    assert predicted / 1.5 <= len(data) <= 1.5 * predicted
    dense_bytes = 4 * (784 * 300 + 300 * 100 + 100 * 10)
    assert len(data) < dense_bytes / 5


def test_plain_dense_model_keeps_its_weights():
    # The converter alone would keep these kernels as uninitialized resource
    # variables (VAR_HANDLE); export_tflite freezes them into the file.
    model = keras.Sequential(
        [keras.Input((30,)), keras.layers.Dense(20, activation="relu"), keras.layers.Dense(5)]
    )
    data = convert_tflite(model)
    names = tflite_op_names(data)
    assert "VAR_HANDLE" not in names and "FULLY_CONNECTED" in names
    assert len(data) > 4 * (30 * 20 + 20 * 5)
    assert_matches_keras(model, data, seed=12)


@pytest.mark.parametrize("form", ["implicit", "built_once", "built_at_load"])
def test_offset_none_masked_and_standard_layers(form):
    inputs = keras.Input((4, 196))
    x = keras.layers.Flatten()(inputs)
    x = DCTSparseDense(300, density=0.02, sparse_format="masked", seed=1)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    x = DCTSparseDense(120, density=0.05, offset=None, activation="tanh", seed=2)(x)
    x = keras.layers.Reshape((10, 12))(x)
    x = DCTSparseDense(8, density=0.1, sparse_format="masked", offset=None, seed=3)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = randomize(keras.Model(inputs, outputs), seed=3)
    bn = model.layers[3]
    rng = np.random.default_rng(4)
    bn.moving_mean.assign(rng.standard_normal(300).astype(np.float32) * 0.1)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 300).astype(np.float32))
    data = convert_tflite(model, form=form)
    assert_no_flex_ops(data)
    assert_matches_keras(model, data, seed=5)
    # The masked 784 x 300 kernel is exported sparse, not as 940 KB of zeros.
    assert len(data) < 784 * 300 * 4 / 4


@pytest.mark.parametrize("form", ["implicit", "built_once", "built_at_load"])
def test_nested_model_and_rank3_inputs(form):
    inner = keras.Sequential(
        [keras.Input((50,)), DCTSparseDense(30, density=0.1, activation="relu", seed=0)]
    )
    inputs = keras.Input((3, 50))
    x = DCTSparseDense(50, density=0.1, seed=1)(inputs)  # rank-3 input
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(50)(x)
    outputs = inner(x)
    model = keras.Model(inputs, outputs)
    randomize(model, seed=6)
    randomize(inner, seed=7)
    data = convert_tflite(model, form=form)
    assert_no_flex_ops(data)
    assert_matches_keras(model, data, seed=8)


def test_dynamic_int8_quantizes_dense_layers():
    # The converter's dynamic-range quantization handles the Dense layers
    # (hybrid FULLY_CONNECTED); our own int8 values handle the DCTpS layer.
    model = keras.Sequential(
        [
            keras.Input((784,)),
            DCTSparseDense(300, density=0.01, activation="relu", seed=0),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    randomize(model, seed=10)
    reference, int8 = convert_tflite(model), convert_tflite(model, "dynamic_int8")
    assert_no_flex_ops(int8)
    x = np.random.default_rng(11).standard_normal((7, 784)).astype(np.float32)
    change = float(
        np.max(
            np.abs(
                run(Interpreter(model_content=int8), x)
                - run(Interpreter(model_content=reference), x)
            )
        )
    )
    print(f"\ndynamic_int8 with Dense layers: max abs output change {change:.2e}, "
          f"size {len(int8)} B (float32 {len(reference)} B)")
    assert change < 5e-2
    assert len(int8) < len(reference) - 2 * 300 * 100  # 4 -> 1 byte per weight


@pytest.mark.parametrize("quantization,bound", [("float16", 2e-3), ("dynamic_int8", 5e-2)])
def test_quantization(quantization, bound):
    model, reference, float16, int8 = lenet_files(0.01)
    data = float16 if quantization == "float16" else int8
    assert_no_flex_ops(data)
    exact = Interpreter(model_content=reference)
    quantized = Interpreter(model_content=data)
    x = np.random.default_rng(9).standard_normal((7, 784)).astype(np.float32)
    change = float(np.max(np.abs(run(quantized, x) - run(exact, x))))
    print(
        f"\n{quantization}: max abs output change {change:.2e}, "
        f"size {len(data)} B (float32 {len(reference)} B)"
    )
    assert change < bound
    assert len(data) <= len(reference)
    # 2 (float16) or 3 (int8) bytes less per value; the int32 positions stay.
    # (The int8 dequantization adds a few operators, about 200 bytes each.)
    if quantization == "float16":
        saved = 2 * nnz(model)
    else:  # layers with few nonzeros keep float32 values
        saved = sum(
            3 * layer.nnz for layer in model.layers if 3 * layer.nnz > INT8_MIN_SAVING_BYTES
        )
        assert saved > 0
    assert tflite_constant_bytes(data) < tflite_constant_bytes(reference) - 0.9 * saved
    assert tflite_constant_bytes(data) > position_bytes(model)  # positions are not quantized


def test_quantize_int8():
    rng = np.random.default_rng(13)
    values = rng.standard_normal(1000).astype(np.float32)
    q, scale = quantize_int8(values)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    assert np.abs(q * scale - values).max() <= scale / 2 + 1e-7
    q, scale = quantize_int8(np.zeros(3, np.float32))
    assert q.tolist() == [0, 0, 0] and scale == 1.0


def test_conv_dynamic_int8():
    model = lenet5_convs(0.05)
    data = convert_tflite(model, quantization="dynamic_int8")
    assert_no_flex_ops(data)
    assert_matches_keras(model, data, seed=14, tolerance=2e-2)


def test_export_overwrites_existing_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"old")
    data = export_tflite(single_layer_model(20, 10, 0.5), str(path))
    assert path.read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["model.tflite"]


class SignalDCT(keras.layers.Layer):
    """A layer that needs Flex ops (`tf.signal.dct`)."""

    def call(self, inputs):
        return tf.signal.dct(inputs, type=2, norm="ortho")


def test_failed_export_leaves_existing_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"previous model")
    model = keras.Sequential(
        [
            keras.Input((48,)),
            DCTSparseDense(48, density=0.1, seed=0),
            SignalDCT(name="flex_dct"),
        ]
    )
    with pytest.raises(TFLiteExportError, match="flex_dct") as info:
        export_tflite(model, path)
    assert "builtin" in str(info.value) and "StridedSlice" in str(info.value)
    assert path.read_bytes() == b"previous model"
    assert sorted(os.listdir(tmp_path)) == ["model.tflite"]
    assert "call" not in model.layers[0].__dict__


class FakeConv(DCTSparseLayer):
    """A DCT-plus-sparse layer other than DCTSparseDense (stands for a conv layer)."""

    def build(self, input_shape):
        self.build_sparse_part((int(input_shape[-1]), 4), bias_size=4)

    def call(self, inputs):
        return inputs


def test_other_dctsparse_layers_are_not_implemented(tmp_path):
    model = keras.Sequential([keras.Input((4,)), FakeConv(name="fake_conv")])
    with pytest.raises(NotImplementedError, match="fake_conv"):
        export_tflite(model, tmp_path / "model.tflite")
    assert not os.listdir(tmp_path)


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="quantization"):
        convert_tflite(single_layer_model(20, 10, 0.5), quantization="int4")
    unbuilt = keras.Sequential([DCTSparseDense(10)])
    with pytest.raises(TFLiteExportError, match="inputs|built"):
        export_tflite(unbuilt, tmp_path / "model.tflite")
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------------------------
# Convolutions: the kernel alpha * Kd + S is rebuilt at run time (COS table + SCATTER_ND).


def lenet5_convs(density, seed=0):
    """The convolutional part of the zoo's LeNet-5 (DCTpS, EPL allocation), randomized."""
    model = models.build_model(
        "lenet5", input_shape=(28, 28, 1), density=density, distribution="epl", seed=seed
    )
    return randomize(model, seed=seed)


def vgg_block(density, seed=0):
    """A small VGG block: two 3x3 convs 64, max pool, a 3x3 conv 128."""
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            DCTSparseConv2D(64, 3, padding="same", density=density, activation="relu", seed=seed),
            DCTSparseConv2D(64, 3, padding="same", density=density, activation="relu", seed=seed + 1),
            keras.layers.MaxPooling2D(),
            DCTSparseConv2D(128, 3, padding="same", density=density, seed=seed + 2),
        ]
    )
    return randomize(model, seed=seed)


def test_lenet5_matches_keras_without_flex_ops():
    model = lenet5_convs(0.01)
    assert any(isinstance(layer, DCTSparseConv2D) for layer in model.layers)
    data = convert_tflite(model)
    assert_no_flex_ops(data)
    names = tflite_op_names(data)
    assert "CONV_2D" in names and "SCATTER_ND" in names and "COS" in names
    assert_matches_keras(model, data, seed=3)
    assert all("call" not in layer.__dict__ for layer in model.layers)


def conv_weight_count(model):
    return sum(
        int(np.prod(layer.sparse_weight.kernel_shape))
        for layer in model.layers
        if isinstance(layer, DCTSparseLayer)
    )


def test_vgg_block_matches_keras_and_is_sized_by_nnz():
    model = vgg_block(0.02)
    data = convert_tflite(model)
    assert_no_flex_ops(data)
    assert_matches_keras(model, data, seed=4)
    # Neither Kd nor the scattered S is stored: same formula as the Dense layers.
    overhead = len(convert_tflite(vgg_block(1e-9)))
    predicted = nnz(model) * (4 + INDEX_BYTES) + overhead
    assert predicted / 1.5 <= len(data) <= 1.5 * predicted
    assert len(data) < 4 * conv_weight_count(model) / 5
    print(f"\nVGG block density 0.02: nnz={nnz(model)} size={len(data)} B, overhead={overhead} B")


# Conv layer variants every export form must handle: id -> (layer factory, input shape).
CONV_VARIANTS = {
    "strided-masked": (lambda: DCTSparseConv2D(6, 3, strides=2, density=0.3,
                                               sparse_format="masked"), (11, 11, 4)),
    "grouped-dilated": (lambda: DCTSparseConv2D(6, 3, groups=2, dilation_rate=2, density=0.3),
                        (12, 12, 4)),
    "plain-1x1": (lambda: DCTSparseConv2D(5, 1, offset=None, density=0.5, activation="relu"),
                  (6, 6, 3)),
    "channels-first": (lambda: DCTSparseConv2D(4, (3, 2), data_format="channels_first",
                                               density=0.4), (3, 9, 8)),
    "depthwise": (lambda: DCTSparseDepthwiseConv2D(3, depth_multiplier=2, strides=2,
                                                   density=0.5), (12, 12, 4)),
    "conv1d": (lambda: DCTSparseConv1D(8, 5, padding="causal", density=0.2), (20, 3)),
    # The sparse S path in Keras (ops.sparse_conv): the export still runs one CONV_2D.
    "sparse-path": (lambda: DCTSparseConv2D(8, 3, padding="same", density=0.05,
                                            sparse_kernel="sparse"), (9, 9, 6)),
}


@pytest.mark.parametrize("variant", list(CONV_VARIANTS))
def test_conv_variants_match_keras(variant):
    make_layer, input_shape = CONV_VARIANTS[variant]
    model = randomize(keras.Sequential([keras.Input(input_shape), make_layer()]), seed=5)
    data = convert_tflite(model)
    assert_no_flex_ops(data)
    assert_matches_keras(model, data, seed=6)


def test_conv_float16():
    model = lenet5_convs(0.05)
    full = convert_tflite(model)
    half = convert_tflite(model, quantization="float16")
    assert_no_flex_ops(half)
    assert len(half) < len(full)
    assert_matches_keras(model, half, seed=7, tolerance=2e-3)


def test_keras_litert_export_inside_builtin_ops_mode(tmp_path):
    model = lenet5_convs(0.01, seed=1)
    path = str(tmp_path / "lenet5.tflite")
    with builtin_ops_mode(model) as same_model:
        assert same_model is model
        model.export(path, format="litert", verbose=False)
    assert all("call" not in layer.__dict__ for layer in model.layers)
    with open(path, "rb") as file:
        data = file.read()
    assert_no_flex_ops(data)
    assert_matches_keras(model, data, seed=8)


def test_builtin_ops_mode_restores_calls_after_an_error():
    model = lenet(0.05)
    with pytest.raises(RuntimeError, match="boom"):
        with builtin_ops_mode(model):
            assert all("call" in layer.__dict__ for layer in model.layers)
            raise RuntimeError("boom")
    assert all("call" not in layer.__dict__ for layer in model.layers)


def test_pack_positions():
    rng = np.random.default_rng(9)
    rows = rng.integers(0, 1000, 50)
    cols = rng.integers(0, 300, 50)
    packed = pack_positions(rows, cols, 300)
    assert packed.dtype == np.int32
    np.testing.assert_array_equal(np.divmod(packed, 300), (rows, cols))
    assert pack_positions(np.array([2**16 - 1]), np.array([0]), 2**15) is None  # >= 2**31


def test_layer_too_big_for_packed_positions():
    # n * m = 2**31: the dense kernel would take 8 GiB; positions stay two int32 arrays.
    model = single_layer_model(2**16, 2**15, 2e-8)
    layer = model.layers[0]
    assert layer.nnz == 43
    data = convert_tflite(model)
    assert_no_flex_ops(data)
    assert len(data) < 2_000_000
    assert_matches_keras(model, data, seed=10, batches=(1, 2))


def test_computed_dct_constants():
    model = lenet(0.01, seed=3)
    stored = convert_tflite(model)
    computed = convert_tflite(model, dct_constants="computed")
    assert_no_flex_ops(computed)
    assert_matches_keras(model, computed, seed=11)
    # Only the nonzeros, packed positions, biases and a few shape constants remain.
    data_bytes = nnz(model) * 4 + position_bytes(model) + 4 * (300 + 100 + 10)
    assert data_bytes <= tflite_constant_bytes(computed) < data_bytes + 1024
    assert tflite_constant_bytes(stored) > data_bytes + 4 * 4 * 784
    # Computing the tables adds operators (graph structure, ~150 bytes each):
    # the file only gets smaller when the tables are large.
    big = single_layer_model(5000, 3000, 1e-3)
    big_stored = convert_tflite(big)
    big_computed = convert_tflite(big, dct_constants="computed")
    assert_matches_keras(big, big_computed, seed=12)
    assert len(big_computed) < len(big_stored) - 4 * 4 * 5000
    with pytest.raises(ValueError, match="dct_constants"):
        convert_tflite(model, dct_constants="lazy")


def test_dynamic_int8_skips_layers_where_it_costs_more():
    model = single_layer_model(300, 100, 300 / 30000)  # 300 nonzeros: 900 bytes saved
    assert model.layers[0].nnz == 300
    reference = convert_tflite(model)
    int8 = convert_tflite(model, quantization="dynamic_int8")
    assert tflite_constant_bytes(int8) == tflite_constant_bytes(reference)
    bigger = single_layer_model(300, 100, 400 / 30000)
    reference = convert_tflite(bigger)
    int8 = convert_tflite(bigger, quantization="dynamic_int8")
    assert tflite_constant_bytes(int8) < tflite_constant_bytes(reference) - 3 * 400 + 64


# ---------------------------------------------------------------------------------------------
# form="built_once": alpha * D + S built once into resource variables, then plain FC / CONV_2D.


def assert_built_once_file(data, dense_kernel_bytes):
    """Builtins only, the build in an IF branch, no constant of the dense kernel's size."""
    assert_no_flex_ops(data)
    main, *others = subgraph_op_names(data)
    assert main[0] == "CALL_ONCE" and main.count("IF") == 1
    # The COS tables and the scatter of S are computed in the IF branch only.
    assert not {"COS", "SCATTER_ND", "RFFT2D", "UNSORTED_SEGMENT_SUM"} & set(main)
    assert any({"SCATTER_ND", "ASSIGN_VARIABLE"} <= set(ops) for ops in others)
    assert largest_constant_bytes(data) < dense_kernel_bytes // 4


@pytest.mark.parametrize("input_dim,units", LAYER_SIZES[:4])
def test_built_once_layer_matches_keras(input_dim, units):
    model = single_layer_model(input_dim, units, density=0.01, activation="relu")
    data = convert_tflite(model, form="built_once")
    assert_built_once_file(data, 4 * input_dim * units)
    assert "FULLY_CONNECTED" in subgraph_op_names(data)[0]
    # Later calls (batch 1 and 7 again) use the kernel built by the first one.
    assert_matches_keras(model, data, seed=input_dim, batches=(1, 7, 1, 7))
    interpreter = Interpreter(model_content=data)
    x = np.random.default_rng(0).standard_normal((3, input_dim)).astype(np.float32)
    first = run(interpreter, x).copy()
    interpreter.invoke()
    output = interpreter.get_output_details()[0]["index"]
    np.testing.assert_array_equal(interpreter.get_tensor(output), first)


def test_built_once_lenet_is_sized_by_nnz():
    model = lenet(0.01)
    data = convert_tflite(model, form="built_once")
    assert_built_once_file(data, 4 * 100 * 300)
    assert_matches_keras(model, data, seed=1, batches=(1, 7, 1))
    assert len(data) < len(convert_tflite(model))  # no DCT tables
    # Constants: the nnz values and packed positions, biases, small tables.
    assert tflite_constant_bytes(data) < nnz(model) * (4 + INDEX_BYTES) + 4 * 1024


def test_built_once_lenet5_zoo_model():
    model = lenet5_convs(0.01)
    data = convert_tflite(model, form="built_once")
    assert_built_once_file(data, conv_weight_count(model) // 5)
    assert "CONV_2D" in subgraph_op_names(data)[0]
    assert_matches_keras(model, data, seed=3, batches=(1, 7, 1))


BUILT_ONCE_VARIANTS = dict(
    CONV_VARIANTS,
    **{"dense-rank3-masked": (lambda: DCTSparseDense(7, density=0.3, sparse_format="masked"),
                              (5, 12))},
)


@pytest.mark.parametrize("variant", list(BUILT_ONCE_VARIANTS))
def test_built_once_variants_match_keras(variant):
    make_layer, input_shape = BUILT_ONCE_VARIANTS[variant]
    model = randomize(keras.Sequential([keras.Input(input_shape), make_layer()]), seed=5)
    data = convert_tflite(model, form="built_once")
    assert_no_flex_ops(data)
    assert "CALL_ONCE" in tflite_op_names(data)
    assert_matches_keras(model, data, seed=6, batches=(1, 7, 1))


def test_auto_form_follows_the_memory_bound():
    model = lenet(0.01)
    # 784 x 300 floats (940800 B) over the bound, 300 x 100 and 100 x 10 under it:
    # float32 Dense layers under the bound are built at load time (two FCs each).
    data = convert_tflite(model, form="auto", max_kernel_bytes=4 * 300 * 100)
    names = tflite_op_names(data)
    assert "UNSORTED_SEGMENT_SUM" in names and "CALL_ONCE" not in names
    # Two FCs in each built-at-load layer, two in the implicit one's DCT (784 = 28 * 28).
    assert subgraph_op_names(data)[0].count("FULLY_CONNECTED") == 6
    assert_matches_keras(model, data, seed=2, batches=(1, 7, 1))
    assert largest_constant_bytes(data) < 4 * 100 * 300 // 4
    # The default bound holds all three: the 784 x 300 layer (at least
    # AUTO_IMPLICIT_MIN_ELEMENTS entries) is then implicit with the CSR product (two
    # matmuls in its DCT, with DFT matrices built at load, one sparse FC for S), the two
    # small ones built at load (two FCs each).
    everything = convert_tflite(model, form="auto")
    names = subgraph_op_names(everything)[0]
    assert names.count("FULLY_CONNECTED") + names.count("BATCH_MATMUL") == 7
    csr = convert_tflite(model, sparse_product="csr")  # every layer implicit, stored tables
    assert tflite_constant_bytes(everything) < tflite_constant_bytes(csr) - 4 * 784
    assert "UNSORTED_SEGMENT_SUM" not in tflite_op_names(everything)
    assert sparse_fc_weight_count(everything) == 3
    assert_matches_keras(model, everything, seed=4, batches=(1, 7, 1))
    assert largest_constant_bytes(everything) < 4 * 100 * 300 // 4
    nothing = convert_tflite(model, form="auto", max_kernel_bytes=0)
    assert "UNSORTED_SEGMENT_SUM" in tflite_op_names(nothing)
    # Quantized files build their kernels at the first call instead.
    int8 = convert_tflite(model, form="auto", quantization="dynamic_int8")
    assert "CALL_ONCE" in tflite_op_names(int8)


def sparse_fc_weight_count(data):
    """Number of tensors of a TFLite model stored with sparsity metadata (CSR weights)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytearray(data), 0)
    subgraph = model.Subgraphs(0)
    return sum(
        subgraph.Tensors(t).Sparsity() is not None for t in range(subgraph.TensorsLength())
    )


def test_auto_form_rule():
    big, small = lenet(0.01).layers[:2]  # 784 x 300 and 300 x 100
    assert small.sparse_weight.matrix_shape == (300, 100)
    assert layer_form(small, "auto") == "built_at_load"
    assert layer_form(big, "auto") == "implicit"
    assert layer_sparse_product(big, "auto") == "csr"
    assert layer_sparse_product(big, "auto", max_kernel_bytes=4 * 784 * 300 - 1) == "gather"
    assert layer_sparse_product(big, "implicit") == "gather"
    assert layer_sparse_product(big, "implicit", sparse_product="csr") == "csr"
    assert layer_form(big, "auto", quantization="float16") == "built_once"
    assert layer_sparse_product(big, "auto", quantization="float16") == "gather"


def test_form_errors():
    model = single_layer_model(10, 4, density=0.5)
    with pytest.raises(ValueError, match="form"):
        convert_tflite(model, form="lazy")
    with pytest.raises(ValueError, match="max_kernel_bytes"):
        convert_tflite(model, form="auto", max_kernel_bytes=-1)
    for quantization in ("float16", "dynamic_int8"):
        with pytest.raises(ValueError, match="built_at_load"):
            convert_tflite(model, form="built_at_load", quantization=quantization)


def test_built_once_dynamic_int8():
    model = lenet(0.01, seed=5)
    data = convert_tflite(model, form="built_once", quantization="dynamic_int8")
    assert_built_once_file(data, 4 * 100 * 300)
    full = convert_tflite(model, form="built_once")
    # int8 values in the 784 x 300 layer (3 bytes saved per value).
    assert tflite_constant_bytes(data) < tflite_constant_bytes(full) - 2 * 2352
    assert_matches_keras(model, data, seed=8, tolerance=5e-2, batches=(1, 7, 1))


def float16_buffer_bytes(data):
    """Bytes of the float16 constants of a TFLite model."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    return sum(
        len(model.buffers[t.buffer].data)
        for subgraph in model.subgraphs
        for t in subgraph.tensors
        if t.type == 1 and t.buffer and model.buffers[t.buffer].data is not None
    )


@pytest.mark.parametrize("form", ["built_once", "auto"])
def test_built_once_float16(form):
    model = lenet(0.01, seed=6)
    data = convert_tflite(model, form=form, quantization="float16")
    assert_built_once_file(data, 4 * 100 * 300)
    # The nonzeros (and biases) are stored as float16: 2 bytes per value saved.
    full = convert_tflite(model, form="built_once")
    assert float16_buffer_bytes(data) >= 2 * (nnz(model) + 410)
    assert tflite_constant_bytes(data) <= tflite_constant_bytes(full) - 2 * nnz(model)
    # float16 values; the COS angle scales stay float32 (in float16 they gave 3e-3).
    assert_matches_keras(model, data, seed=8, tolerance=1e-3, batches=(1, 7, 1))


def test_built_once_float16_convolutions():
    model = lenet5_convs(0.01)
    data = convert_tflite(model, form="built_once", quantization="float16")
    assert_built_once_file(data, conv_weight_count(model) // 5)
    assert float16_buffer_bytes(data) > 0
    assert_matches_keras(model, data, seed=3, tolerance=1e-3, batches=(1, 7, 1))


def test_export_tflite_passes_the_form(tmp_path):
    model = single_layer_model(30, 20, density=0.2)
    data = export_tflite(model, tmp_path / "m.tflite", form="auto", max_kernel_bytes=4 * 600)
    assert "UNSORTED_SEGMENT_SUM" not in tflite_op_names(data)
    assert (tmp_path / "m.tflite").read_bytes() == data
    data = export_tflite(model, tmp_path / "m.tflite", form="auto", max_kernel_bytes=4 * 599)
    assert "UNSORTED_SEGMENT_SUM" in tflite_op_names(data)
    data = export_tflite(model, tmp_path / "m.tflite", form="built_once")
    assert "CALL_ONCE" in tflite_op_names(data)


# ---------------------------------------------------------------------------------------------
# Positions as 16-bit gaps.


def test_delta_encode_round_trip():
    rng = np.random.default_rng(0)
    packed = rng.choice(10**6, 5000, replace=False).astype(np.int32)
    order, start, gaps = delta_encode(packed)
    assert gaps.dtype == np.int16 and gaps[0] == -32768
    decoded = start + np.cumsum(gaps.astype(np.int64) + 32768)
    np.testing.assert_array_equal(decoded, packed[order])
    assert np.all(np.diff(decoded) > 0)
    assert delta_encode(np.array([3, 3 + 65535], np.int32)) is not None
    assert delta_encode(np.array([3, 3 + 65536], np.int32)) is None
    assert delta_encode(np.array([], np.int32)) is None


@pytest.mark.parametrize("form", ["implicit", "built_once"])
def test_narrow_positions_save_two_bytes_per_entry(form):
    model = lenet(0.01, seed=4)
    narrow = convert_tflite(model, form=form)
    wide = convert_tflite(model, form=form, narrow_positions=False)
    assert_no_flex_ops(narrow)
    assert "CUMSUM" in tflite_op_names(narrow) and "CUMSUM" not in tflite_op_names(wide)
    saved = 4 * nnz(model) - position_bytes(model)
    assert saved == 2 * (2352 + 300)  # the 784 x 300 and 300 x 100 layers
    # Less a few bytes of decoding constants (the bias 32768, the first position).
    assert tflite_constant_bytes(wide) - tflite_constant_bytes(narrow) >= saved - 64
    assert len(narrow) < len(wide) - saved / 2
    assert_matches_keras(model, narrow, seed=9, batches=(1, 7, 1))


def test_narrow_positions_fall_back_to_int32_for_big_gaps():
    # ~400 entries in 33.5 million: gaps of ~84000 on average, many >= 65536.
    model = single_layer_model(8192, 4096, 1.2e-5)
    layer = model.layers[0]
    assert 2 * layer.nnz > POSITION_GAPS_MIN_SAVING_BYTES
    _, rows, cols = sparse_entries(layer)
    assert delta_encode(pack_positions(rows, cols, 4096)) is None
    data = convert_tflite(model, form="implicit")
    assert "CUMSUM" not in tflite_op_names(data)
    assert_matches_keras(model, data, seed=10)


@pytest.mark.parametrize(
    "form,quantization",
    [
        ("implicit", None),
        ("implicit", "float16"),
        ("implicit", "dynamic_int8"),
        ("built_once", None),
        ("built_once", "dynamic_int8"),
        ("built_once", "float16"),
        ("built_at_load", None),
    ],
)
def test_repeated_invocations_at_a_large_batch(form, quantization):
    # float16 with 16-bit-gap positions failed here from the second call on
    # (default XNNPACK delegate), so float16 files keep int32 positions.
    model = lenet(0.01)
    data = convert_tflite(model, form=form, quantization=quantization)
    tolerance = TOLERANCE if quantization is None else 5e-2
    interpreter = Interpreter(model_content=data)
    x = np.random.default_rng(13).random((64, 784)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(model(x))
    index = interpreter.get_input_details()[0]["index"]
    output = interpreter.get_output_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    for _ in range(3):  # the same interpreter, allocated once
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        assert relative_error(interpreter.get_tensor(output), expected) < tolerance


@pytest.mark.parametrize("form", ["implicit", "built_once", "built_at_load"])
@pytest.mark.parametrize(
    "equation, output_shape, bias_axes",
    [("abc,cde->abde", (6, 4, 8), "de"), ("abcd,cde->abe", (6, 20), "e"), ("abc,dc->abd", (6, 12), None)],
)
def test_einsum_dense_matches_keras(equation, output_shape, bias_axes, form):
    # Exported through the layer's matrix_input/matrix_output hooks, like DCTSparseDense.
    from keras_dctsparse import DCTSparseEinsumDense

    input_shape = (6, 4, 8) if equation.startswith("abcd") else (6, 32)
    model = keras.Sequential(
        [
            keras.Input(input_shape),
            DCTSparseEinsumDense(
                equation, output_shape, bias_axes=bias_axes, density=0.1, seed=0,
                activation="relu",
            ),
        ]
    )
    randomize(model, seed=11)
    data = convert_tflite(model, form=form)
    assert_no_flex_ops(data)
    layer = model.layers[0]
    n, m = layer.sparse_weight.kernel_shape
    if form == "implicit":
        assert "RFFT2D" in set(tflite_op_names(data))
    assert largest_constant_bytes(data) < 4 * n * m
    assert_matches_keras(model, data, seed=12)


# ---------------------------------------------------------------------------------------------
# form="built_at_load": x @ (alpha D) with a kernel the interpreter builds when it prepares the
# graph, plus x @ S by a FULLY_CONNECTED with a CSR-encoded weight.


BUILD_OPS = {"COS", "SCATTER_ND", "RFFT2D", "UNSORTED_SEGMENT_SUM", "CALL_ONCE", "READ_VARIABLE"}


def assert_built_at_load_file(data, dense_kernel_bytes, layers, table_bytes=0):
    """Builtins only, one subgraph, two FCs per layer, no constant of the dense kernel's size.

    (`table_bytes`: the largest cos table, which tiny layers' kernels are smaller than.)
    """
    assert_no_flex_ops(data)
    (main,) = subgraph_op_names(data)
    assert not BUILD_OPS & set(main)
    assert main.count("FULLY_CONNECTED") == 2 * layers
    # (Floor: the converter's metadata buffers, about 100 bytes.)
    assert largest_constant_bytes(data) <= max(dense_kernel_bytes // 4, table_bytes, 128)


def dct_matrix(units, input_dim):
    """`D^T` (`units x input_dim`) of a layer's offset, from scipy."""
    import scipy.fft

    length = max(units, input_dim)
    return scipy.fft.dct(np.eye(length), type=2, norm="ortho", axis=0)[:units, :input_dim]


@pytest.mark.parametrize("input_dim,units", LAYER_SIZES[:4] + ((1, 5), (5, 1)))
def test_built_at_load_layer_matches_keras(input_dim, units):
    # (No relu on one output: it may be 0 at batch 1, and 0 / 0 has no relative error.)
    activation = "relu" if units > 1 else None
    model = single_layer_model(input_dim, units, density=0.02, activation=activation)
    data = convert_tflite(model, form="built_at_load")
    table_bytes = 4 * (2 * max(input_dim, units) + 2)
    assert_built_at_load_file(data, 4 * input_dim * units, layers=1, table_bytes=table_bytes)
    assert_matches_keras(model, data, seed=input_dim, batches=(1, 7, 1, 7))


def test_built_at_load_kernel_exists_before_the_first_call():
    # The DCT kernel is computed by allocate_tensors (no invoke yet) and is the FC weight.
    model = lenet(0.01, seed=3)
    data = convert_tflite(model, form="built_at_load")
    interpreter = Interpreter(model_content=data, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] != "FULLY_CONNECTED":
            continue
        try:
            weight = interpreter.get_tensor(int(op["inputs"][1]))
        except ValueError:  # the CSR weight holds nnz values, not a (units, n) array
            continue
        if weight.ndim == 2:
            found.append(weight)
    assert [w.shape for w in found] == [(300, 784), (100, 300), (10, 100)]
    for weight, layer in zip(found, model.layers):
        alpha = float(keras.ops.convert_to_numpy(layer.alpha))
        units, input_dim = weight.shape
        np.testing.assert_allclose(weight, alpha * dct_matrix(units, input_dim), atol=1e-6)
    assert_matches_keras(model, data, seed=4)


def test_built_at_load_lenet_is_sized_by_nnz():
    model = lenet(0.01)
    data = convert_tflite(model, form="built_at_load")
    assert_built_at_load_file(data, 4 * 100 * 300, layers=3)
    # Constants: the nnz float32 values (the CSR indices are metadata: 1 or 2
    # bytes each), the biases and a (2N + 2)-float cos table per layer.
    tables = 4 * sum(2 * max(n, m) + 2 for n, m in ((784, 300), (300, 100), (100, 10)))
    biases = 4 * (300 + 100 + 10)
    assert tflite_constant_bytes(data) <= 4 * nnz(model) + tables + biases + 256
    # Values, 16-bit column indices (8-bit where n <= 256), row segments, graph.
    assert len(data) < nnz(model) * (4 + 2) + tables + biases + 16 * 1024
    assert_matches_keras(model, data, seed=1, batches=(1, 7, 1))


def test_built_at_load_convolutions_are_built_once():
    model = lenet5_convs(0.01)
    data = convert_tflite(model, form="built_at_load")
    assert "CALL_ONCE" in tflite_op_names(data) and "CONV_2D" in subgraph_op_names(data)[0]
    assert_matches_keras(model, data, seed=3, batches=(1, 7, 1))



# sparse_product="csr": the implicit form's S as a FULLY_CONNECTED with a CSR weight.


@pytest.mark.parametrize("input_dim,units", LAYER_SIZES[:4])
def test_csr_sparse_product_matches_keras(input_dim, units):
    model = single_layer_model(input_dim, units, density=0.02, activation="relu")
    data = convert_tflite(model, sparse_product="csr")
    assert_no_flex_ops(data)
    names = tflite_op_names(data)
    assert "UNSORTED_SEGMENT_SUM" not in names and "FULLY_CONNECTED" in names
    layer = model.layers[0]
    # nnz float32 values (indices are metadata), the O(N) DCT tables; no n x m tensor.
    assert largest_constant_bytes(data) < 4 * input_dim * units // 4
    assert tflite_constant_bytes(data) < 4 * layer.nnz + 64 * max(input_dim, units) + 4096
    assert_matches_keras(model, data, seed=units, batches=(1, 7, 1))


def test_csr_sparse_product_lenet_and_errors():
    model = lenet(0.01)
    data = convert_tflite(model, sparse_product="csr")
    assert "UNSORTED_SEGMENT_SUM" not in tflite_op_names(data)
    assert_matches_keras(model, data, seed=2, batches=(1, 7, 1))
    with pytest.raises(ValueError, match="sparse_product"):
        convert_tflite(model, sparse_product="dense")
    with pytest.raises(ValueError, match="csr"):
        convert_tflite(model, sparse_product="csr", quantization="float16")


@pytest.mark.parametrize("options", [dict(form="built_at_load"), dict(sparse_product="csr")])
def test_csr_weights_of_a_layer_called_twice(options):
    shared = DCTSparseDense(16, density=0.1, activation="tanh", seed=0)
    inputs = keras.Input((16,))
    outputs = shared(shared(inputs))
    model = randomize(keras.Model(inputs, outputs), seed=4)
    data = convert_tflite(model, **options)
    assert_no_flex_ops(data)
    assert_matches_keras(model, data, seed=5, batches=(1, 7))
