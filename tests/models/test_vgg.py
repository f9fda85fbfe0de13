import keras
import pytest

from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse.models import build_vgg19
from keras_dctsparse.report import sparsity_report
from training import train_step


def count(model, cls):
    return sum(type(layer) is cls for layer in model.layers)


def test_vgg19_dense():
    model = build_vgg19(density=1.0, offset=None)
    assert model.output_shape == (None, 10)
    assert model.count_params() == 20_046_026
    assert count(model, keras.layers.Conv2D) == 16
    assert count(model, keras.layers.BatchNormalization) == 16
    assert count(model, keras.layers.MaxPooling2D) == 5
    assert count(model, keras.layers.Dense) == 1
    train_step(model)


def test_vgg19_dctps_trains():
    model = build_vgg19(density=0.01, seed=0)
    assert model.output_shape == (None, 10)
    assert count(model, DCTSparseConv2D) == 16 and count(model, DCTSparseDense) == 1
    total = sparsity_report(model).total
    assert total.dense_params == 20_024_000
    assert abs(total.nnz - round(0.01 * 20_024_000)) <= 17
    train_step(model)


@pytest.mark.parametrize("density,offset", [(0.01, None), (0.0001, "dct")])
def test_vgg19_sparse_trains(density, offset):
    model = build_vgg19(num_classes=100, density=density, offset=offset, seed=0)
    assert model.output_shape == (None, 100)
    layers = [l for l in model.layers if isinstance(l, (DCTSparseConv2D, DCTSparseDense))]
    assert len(layers) == 17
    assert all(layer.offset == offset for layer in layers)
    assert sparsity_report(model).total.density <= max(2 * density, 0.001)
    train_step(model, num_classes=100)


def test_vgg19_needs_32x32():
    with pytest.raises(ValueError, match="at least 32"):
        build_vgg19(input_shape=(16, 16, 3))
