import keras
import numpy as np
import pytest

from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse.models import build_lenet300100
from keras_dctsparse.models import build_lenet5
from keras_dctsparse.report import sparsity_report
from training import train_step

CONFIGS = [(1.0, None), (1.0, "dct"), (0.01, "dct"), (0.01, None), (0.0001, "dct")]


@pytest.mark.parametrize("density,offset", CONFIGS)
def test_lenet300100_trains(density, offset):
    model = build_lenet300100(density=density, offset=offset, seed=0)
    assert model.output_shape == (None, 10)
    kinds = {type(layer) for layer in model.layers if layer.weights}
    if density == 1.0 and offset is None:
        assert kinds == {keras.layers.Dense}
    else:
        assert kinds == {DCTSparseDense}
        assert all(
            layer.offset == offset for layer in model.layers if layer.weights
        )
    train_step(model, (28, 28, 1), 10)


def test_lenet300100_counts():
    dense = build_lenet300100(density=1.0, offset=None)
    assert dense.count_params() == 266_610
    assert [layer.name for layer in dense.layers] == [
        "flatten",
        "fc1",
        "fc2",
        "predictions",
    ]
    sparse = build_lenet300100(density=0.01, seed=0)
    total = sparsity_report(sparse).total
    assert total.dense_params == 266_200
    assert abs(total.nnz - round(0.01 * 266_200)) <= 3
    baseline = build_lenet300100(density=0.01, offset=None, seed=0)
    assert abs(sparsity_report(baseline).total.nnz - 2662) <= 3
    # density 1 with the offset: every entry of S is trained, plus the DCT.
    full = build_lenet300100(density=1.0, offset="dct", seed=0)
    assert sparsity_report(full).total.nnz == 266_200


def test_lenet300100_shapes_and_seed():
    model = build_lenet300100(input_shape=(8, 8), num_classes=3, density=0.1, seed=5)
    assert model.output_shape == (None, 3)
    assert [layer.seed for layer in model.layers if layer.weights] == [5, 6, 7]
    again = build_lenet300100(input_shape=(8, 8), num_classes=3, density=0.1, seed=5)
    for a, b in zip(model.weights, again.weights):
        if a.name == "sparse_indices":
            np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("density,offset", CONFIGS[:1] + CONFIGS[2:])
def test_lenet5_trains(density, offset):
    model = build_lenet5(density=density, offset=offset, seed=0)
    assert model.output_shape == (None, 10)
    if density == 1.0 and offset is None:
        assert model.count_params() == 61_706
        assert sum(isinstance(l, keras.layers.Conv2D) for l in model.layers) == 2
    else:
        assert sum(isinstance(l, DCTSparseConv2D) for l in model.layers) == 2
        assert sum(isinstance(l, DCTSparseDense) for l in model.layers) == 3
    train_step(model, (28, 28, 1), 10)


def test_lenet5_cifar_shape():
    model = build_lenet5(input_shape=(32, 32, 3), num_classes=100, density=0.05)
    assert model.output_shape == (None, 100)
    assert sparsity_report(model).total.dense_params == 16 * 5 * 5 * 6 + 6 * 5 * 5 * 3 + (
        576 * 120 + 120 * 84 + 84 * 100
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"density": "0.1"}, "density"),
        ({"offset": "fft"}, "offset"),
        ({"distribution": "nope"}, "distribution"),
        ({"num_classes": 0}, "num_classes"),
        ({"input_shape": (28, -1)}, "input_shape"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_lenet300100(**kwargs)


def test_lenet5_needs_image_shape():
    with pytest.raises(ValueError, match="height, width, channels"):
        build_lenet5(input_shape=(784,))
    with pytest.raises(ValueError, match="at least 10"):
        build_lenet5(input_shape=(8, 8, 1))
