import math

import keras
import pytest

from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse import DCTSparseDepthwiseConv2D
from keras_dctsparse.report import DCT_MACS_PER_LOG
from keras_dctsparse.report import SparsityReport
from keras_dctsparse.report import sparsity_report


def tiny_model():
    return keras.Sequential(
        [
            keras.Input((8,)),
            DCTSparseDense(4, density=0.25, seed=0, name="sparse"),
            keras.layers.Dense(2, name="plain"),
        ]
    )


def test_tiny_dense_rows_by_hand():
    report = sparsity_report(tiny_model())
    assert isinstance(report, SparsityReport)
    sparse, plain = report.layers
    assert (sparse.name, sparse.kind) == ("sparse", "DCTSparseDense")
    assert sparse.dense_params == 32
    assert sparse.nnz == 8
    assert sparse.density == 0.25
    # 8 values + alpha + 4 biases.
    assert sparse.trainable_params == 13
    # float32 values (8) + int32 indices (2 x 8) + alpha + bias (4).
    assert sparse.bytes == 8 * 4 + 16 * 4 + 4 + 16
    # nnz + DCT(8) = 8 + 2.5 * 8 * log2(16) = 88 > 32: capped at the dense count.
    assert sparse.macs == sparse.dense_macs == 32
    assert (plain.dense_params, plain.nnz, plain.density) == (8, 8, 1.0)
    assert plain.trainable_params == 10
    assert plain.bytes == 40
    assert plain.macs == plain.dense_macs == 8
    total = report.total
    assert total.name == "total"
    assert (total.dense_params, total.nnz) == (40, 16)
    assert total.density == pytest.approx(0.4)
    assert total.trainable_params == 23
    assert total.bytes == 156
    assert (total.macs, total.dense_macs) == (40, 40)


def test_dense_macs_with_fast_dct_and_positions():
    model = keras.Sequential(
        [
            keras.Input((5, 64)),
            DCTSparseDense(32, density=0.25, seed=1, use_bias=False),
            DCTSparseDense(16, density=0.5, offset=None, seed=2),
        ]
    )
    first, second = sparsity_report(model).layers
    dct = DCT_MACS_PER_LOG * 64 * math.log2(128)  # 1120
    assert first.nnz == 512
    assert first.trainable_params == 513  # values + alpha, no bias
    assert first.macs == round(5 * (512 + dct)) == 5 * 1632
    assert first.dense_macs == 5 * 64 * 32
    # No offset: the sparse product only.
    assert second.nnz == 256
    assert second.macs == 5 * 256
    assert second.dense_macs == 5 * 512
    assert sparsity_report(model).mac_ratio == pytest.approx(
        (5 * 1632 + 5 * 256) / (5 * 2048 + 5 * 512)
    )


def test_conv_batchnorm_and_depthwise_rows():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            DCTSparseConv2D(8, 3, density=0.1, seed=0, name="dct_conv"),
            keras.layers.BatchNormalization(name="bn"),
            DCTSparseDepthwiseConv2D(3, density=0.5, seed=0, name="dw", padding="same"),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.MaxPooling2D(),
        ]
    )
    report = sparsity_report(model)
    rows = {row.name: row for row in report.layers}
    assert list(rows) == ["dct_conv", "bn", "dw", "conv"]  # pooling has no weights
    conv = rows["dct_conv"]
    assert (conv.dense_params, conv.nnz) == (216, 22)
    # Offset per pixel: 2 * 3 * 8 + 2 * 9 * 8 = 192; 4 x 4 output pixels.
    assert conv.macs == (22 + 192) * 16
    assert conv.dense_macs == 216 * 16
    bn = rows["bn"]
    assert (bn.dense_params, bn.nnz, bn.density) == (0, 0, None)
    assert bn.trainable_params == 16
    assert bn.bytes == 4 * 8 * 4  # gamma, beta, moving mean and variance
    assert bn.macs == 0
    dw = rows["dw"]
    assert (dw.dense_params, dw.nnz) == (72, 36)
    # Offset 2 * 8 + 2 * 9 * 8 = 160: capped at the dense depthwise cost.
    assert dw.macs == dw.dense_macs == 72 * 16
    plain = rows["conv"]
    assert plain.nnz == plain.dense_params == 288
    assert plain.macs == 288 * 4
    assert report.total.dense_params == 216 + 72 + 288
    assert report.total.nnz == 22 + 36 + 288


def test_lenet_density_matches_request():
    model = keras.Sequential(
        [
            keras.Input((784,)),
            DCTSparseDense(300, density=0.05, activation="relu"),
            DCTSparseDense(100, density=0.05, activation="relu"),
            DCTSparseDense(10, density=0.05),
        ]
    )
    report = sparsity_report(model)
    sizes = 784 * 300 + 300 * 100 + 100 * 10
    assert report.total.dense_params == sizes
    assert abs(report.total.nnz - 0.05 * sizes) <= 3
    assert report.total.density == pytest.approx(0.05, abs=1e-4)
    assert report.total.macs < 0.2 * report.total.dense_macs


def test_table():
    report = sparsity_report(tiny_model())
    table = report.to_table()
    assert str(report) == table
    lines = table.splitlines()
    assert len(lines) == 2 + 2 + 1
    assert len({len(line) for line in lines}) == 1
    assert lines[0].startswith("| layer")
    assert "total" in lines[-1]
    assert "0.25" in lines[2]


def test_errors():
    layer = DCTSparseDense(4)
    layer.build((None, 8))
    with pytest.raises(ValueError, match="output shape"):
        sparsity_report(layer)
    with pytest.raises(ValueError, match="no weights"):
        sparsity_report(keras.Sequential([DCTSparseDense(4)]))


def test_einsum_dense_rows():
    # "abc,cde->abde": kernel (32, 4, 8) = matrix view (32, 32), 5 positions per example.
    from keras_dctsparse import DCTSparseEinsumDense

    model = keras.Sequential(
        [
            keras.Input((5, 32)),
            DCTSparseEinsumDense(
                "abc,cde->abde", (5, 4, 8), bias_axes="de", density=0.25, seed=0, name="q"
            ),
            keras.layers.Reshape((5, 32)),
            keras.layers.EinsumDense("abc,cd->abd", (5, 16), bias_axes="d", name="plain"),
        ]
    )
    rows = {row.name: row for row in sparsity_report(model).layers}
    q, plain = rows["q"], rows["plain"]
    assert (q.kind, q.dense_params, q.nnz, q.density) == ("DCTSparseEinsumDense", 1024, 256, 0.25)
    # 256 values + alpha + (4, 8) bias.
    assert q.trainable_params == 256 + 1 + 32
    dct = DCT_MACS_PER_LOG * 32 * math.log2(64)  # 480
    assert q.macs == (256 + dct) * 5
    assert q.dense_macs == 1024 * 5
    assert (plain.dense_params, plain.nnz) == (512, 512)
    assert plain.macs == plain.dense_macs == 512 * 5
