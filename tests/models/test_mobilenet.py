import keras
import pytest

from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse import DCTSparseDepthwiseConv2D
from keras_dctsparse.models import build_mobilenetv2
from keras_dctsparse.report import sparsity_report
from training import train_step


def count(model, cls):
    return sum(type(layer) is cls for layer in model.layers)


def test_mobilenetv2_dense():
    model = build_mobilenetv2(density=1.0, offset=None)
    assert model.output_shape == (None, 10)
    assert model.count_params() == 2_270_794
    assert count(model, keras.layers.DepthwiseConv2D) == 17
    assert count(model, keras.layers.Add) == 10
    assert model.get_layer("stem_conv").strides == (1, 1)
    assert model.get_layer("head_relu").output.shape[1:] == (4, 4, 1280)
    train_step(model)


@pytest.mark.parametrize("offset", ["dct", None])
def test_mobilenetv2_sparse_trains(offset):
    model = build_mobilenetv2(density=0.01, offset=offset, seed=0)
    assert model.output_shape == (None, 10)
    assert count(model, DCTSparseDepthwiseConv2D) == 17
    assert count(model, DCTSparseConv2D) == 35 and count(model, DCTSparseDense) == 1
    total = sparsity_report(model).total
    assert total.dense_params == 2_202_560
    assert total.density == pytest.approx(0.01, rel=0.02)
    train_step(model)


def test_mobilenetv2_tiny_density():
    model = build_mobilenetv2(num_classes=100, density=0.0001, seed=0)
    assert model.output_shape == (None, 100)
    assert count(model, DCTSparseDepthwiseConv2D) == 17
    train_step(model, num_classes=100)
