import keras
import pytest

from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse.models import build_resnet18
from keras_dctsparse.models import build_resnet50
from keras_dctsparse.report import sparsity_report
from training import train_step


def count(model, cls):
    return sum(type(layer) is cls for layer in model.layers)


@pytest.mark.parametrize("density,offset", [(1.0, None), (0.01, "dct"), (0.01, None)])
def test_resnet18_trains(density, offset):
    model = build_resnet18(density=density, offset=offset, seed=0)
    assert model.output_shape == (None, 10)
    if offset is None and density == 1.0:
        assert model.count_params() == 11_183_562
        # stem + 16 block convs + 3 projection shortcuts
        assert count(model, keras.layers.Conv2D) == 20
        assert not any(isinstance(l, keras.layers.MaxPooling2D) for l in model.layers)
        stem = model.get_layer("stem_conv")
        assert stem.kernel_size == (3, 3) and stem.strides == (1, 1)
    else:
        assert count(model, DCTSparseConv2D) == 20 and count(model, DCTSparseDense) == 1
        total = sparsity_report(model).total
        assert total.dense_params == 11_164_352
        assert abs(total.nnz - round(0.01 * 11_164_352)) <= 21
    train_step(model)


def test_resnet18_tiny_density():
    model = build_resnet18(num_classes=100, density=0.0001, seed=0)
    assert model.output_shape == (None, 100)
    assert count(model, DCTSparseConv2D) == 20
    assert sparsity_report(model).total.nnz >= 21  # at least one entry per layer
    train_step(model, num_classes=100)


def test_resnet50_dense():
    model = build_resnet50(density=1.0, offset=None)
    assert model.output_shape == (None, 10)
    assert model.count_params() == 23_573_962
    # stem + 16 blocks x 3 convs + 4 projection shortcuts
    assert count(model, keras.layers.Conv2D) == 53
    assert model.get_layer("stage4_block3_out").output.shape[-1] == 2048
    train_step(model)


def test_resnet50_dctps_trains():
    model = build_resnet50(density=0.01, seed=0)
    assert model.output_shape == (None, 10)
    assert count(model, DCTSparseConv2D) == 53
    assert sparsity_report(model).total.density == pytest.approx(0.01, rel=0.01)
    train_step(model)


@pytest.mark.parametrize("density,offset", [(0.01, None), (0.0001, "dct")])
def test_resnet50_sparse_trains(density, offset):
    model = build_resnet50(density=density, offset=offset, seed=0)
    assert model.output_shape == (None, 10)
    assert all(l.offset == offset for l in model.layers if isinstance(l, DCTSparseConv2D))
    train_step(model)
