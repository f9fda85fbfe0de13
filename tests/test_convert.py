import math

import keras
import numpy as np
import pytest

from keras_dctsparse import DCTSparseConv1D
from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse import DCTSparseDepthwiseConv2D
from keras_dctsparse.allocation import allocate_densities
from keras_dctsparse.callbacks import sparse_layers
from keras_dctsparse.convert import sparsify
from keras_dctsparse.report import sparsity_report

SPARSE_WEIGHT_NAMES = {"sparse_values", "sparse_indices", "alpha", "bias"}


def sequential_model():
    return keras.Sequential(
        [
            keras.Input((20, 6)),
            keras.layers.Conv1D(8, 3, padding="causal", activation="relu", name="c1"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(32, activation="relu", name="d1"),
            keras.layers.Dense(5, use_bias=False, name="d2"),
        ],
        name="seq",
    )


def functional_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(
        inputs
    )
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=1, name="dw")(x)
    y = keras.layers.Conv2D(8, 1, groups=2, name="pw")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="func")


def kernel_sizes(model):
    return [
        math.prod(layer.kernel.shape)
        for layer in model.layers
        if type(layer) in (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)
    ]


@pytest.mark.parametrize("distribution", ["erk", "epl"])
def test_sequential(distribution):
    model = sequential_model()
    sparse = sparsify(model, 0.1, distribution=distribution, seed=3)
    assert isinstance(sparse, keras.Sequential)
    assert sparse is not model
    assert [layer.name for layer in sparse.layers] == [l.name for l in model.layers]
    assert [type(layer) for layer in sparse.layers] == [
        DCTSparseConv1D,
        keras.layers.Flatten,
        DCTSparseDense,
        DCTSparseDense,
    ]
    assert sparse.outputs[0].shape == model.outputs[0].shape
    c1, _, d1, d2 = sparse.layers
    assert (c1.padding, c1.kernel_size, c1.filters) == ("causal", (3,), 8)
    assert c1.activation is keras.activations.relu
    assert d1.units == 32 and d2.units == 5 and not d2.use_bias
    assert [layer.seed for layer in (c1, d1, d2)] == [3, 4, 5]
    # Never a dense kernel: only the sparse weights.
    assert {w.name for w in sparse.weights} <= SPARSE_WEIGHT_NAMES
    total = sum(kernel_sizes(model))
    report = sparsity_report(sparse)
    assert report.total.dense_params == total
    assert abs(report.total.nnz - round(0.1 * total)) <= 3
    shapes = [layer.sparse_weight.kernel_shape for layer in (c1, d1, d2)]
    assert [layer.nnz for layer in (c1, d1, d2)] == list(
        allocate_densities(shapes, 0.1, distribution).nnz
    )
    out = sparse(np.random.rand(2, 20, 6).astype("float32"))
    assert out.shape == (2, 5)


def test_functional_config_and_batchnorm_weights():
    model = functional_model()
    bn = model.get_layer("bn")
    bn.set_weights([np.random.rand(*w.shape).astype("float32") + 0.5 for w in bn.weights])
    sparse = sparsify(model, 0.2, seed=0, alpha=0.5)
    assert sparse.name == "func"
    assert [layer.name for layer in sparse.layers] == [l.name for l in model.layers]
    assert sparse.outputs[0].shape == model.outputs[0].shape
    stem = sparse.get_layer("stem")
    assert isinstance(stem, DCTSparseConv2D)
    assert (stem.strides, stem.padding, stem.use_bias) == ((2, 2), "same", False)
    assert stem.initial_alpha == 0.5
    assert isinstance(sparse.get_layer("dw"), DCTSparseDepthwiseConv2D)
    assert sparse.get_layer("pw").groups == 2
    assert sparse.get_layer("head").activation is keras.activations.softmax
    new_bn = sparse.get_layer("bn")
    assert new_bn is not bn
    for old, new in zip(bn.get_weights(), new_bn.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert len(sparse_layers(sparse)) == 4
    out = sparse(np.random.rand(2, 8, 8, 3).astype("float32"))
    assert out.shape == (2, 3)
    assert np.all(np.isfinite(out))


def test_exclude_by_name_and_type():
    model = functional_model()
    head = model.get_layer("head")
    sparse = sparsify(model, 0.5, exclude=["head"], seed=0)
    new_head = sparse.get_layer("head")
    assert type(new_head) is keras.layers.Dense
    np.testing.assert_array_equal(new_head.get_weights()[0], head.get_weights()[0])
    assert isinstance(sparse.get_layer("stem"), DCTSparseConv2D)
    sparse = sparsify(model, 0.5, exclude=(keras.layers.DepthwiseConv2D, "pw"))
    assert type(sparse.get_layer("dw")) is keras.layers.DepthwiseConv2D
    assert type(sparse.get_layer("pw")) is keras.layers.Conv2D
    assert isinstance(sparse.get_layer("head"), DCTSparseDense)
    # Only the replaced layers share the density budget.
    replaced = [sparse.get_layer(n) for n in ("stem", "head")]
    sizes = [math.prod(layer.sparse_weight.kernel_shape) for layer in replaced]
    assert sum(layer.nnz for layer in replaced) == round(0.5 * sum(sizes))


def test_density_one_without_offset_is_dense_equivalent():
    model = sequential_model()
    sparse = sparsify(model, 1.0, offset=None)
    for layer in sparse_layers(sparse):
        assert layer.nnz == math.prod(layer.sparse_weight.kernel_shape)
        assert layer.alpha is None
    trainable = sum(math.prod(w.shape) for w in sparse.trainable_weights)
    assert trainable == model.count_params()
    assert sparsity_report(sparse).total.density == 1.0


def test_errors():
    model = sequential_model()
    for density in (0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="density"):
            sparsify(model, density)
    with pytest.raises(ValueError, match="distribution"):
        sparsify(model, 0.1, distribution="magic")

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="Sequential and Functional"):
        sparsify(subclassed, 0.1)


@pytest.mark.parametrize(
    "application", [keras.applications.MobileNetV2, keras.applications.ResNet50]
)
def test_applications_train_one_step(application):
    model = application(weights=None, input_shape=(32, 32, 3), classes=10)
    sparse = sparsify(model, 0.01, seed=0)
    report = sparsity_report(sparse)
    assert report.total.density == pytest.approx(0.01, abs=1e-4)
    assert not any(
        type(layer) in (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
        for layer in sparse.layers
    )
    x = np.random.default_rng(0).random((4, 32, 32, 3)).astype("float32")
    y = np.arange(4)
    sparse.compile("sgd", "sparse_categorical_crossentropy")
    history = sparse.fit(x[:4], y[:4], epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_nested_model_converted_in_order_with_weights():
    inner = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="inner_dense"),
            keras.layers.BatchNormalization(name="inner_bn"),
        ],
        name="inner",
    )
    inner.get_layer("inner_bn").set_weights([np.full(5, 2.0, "float32")] * 4)
    inputs = keras.Input((6,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(inner(inputs)))
    sparse = sparsify(model, 0.5, seed=7)
    assert sparse.inputs[0].name == "x"
    new_inner = sparse.get_layer("inner")
    assert new_inner is not inner
    assert isinstance(new_inner.get_layer("inner_dense"), DCTSparseDense)
    assert new_inner.get_layer("inner_dense").seed == 7
    assert sparse.get_layer("out").seed == 8
    np.testing.assert_array_equal(new_inner.get_layer("inner_bn").get_weights()[0], 2.0)
    names = [row.name for row in sparsity_report(sparse).layers]
    assert names == ["inner_dense", "inner_bn", "out"]


def test_unbuilt_model_error():
    with pytest.raises(ValueError, match="not built"):
        sparsify(keras.Sequential([keras.layers.Dense(3)]), 0.1)


def test_einsum_dense_is_converted():
    # An attention-style projection pair: hidden -> (heads, head size) -> hidden.
    from keras_dctsparse import DCTSparseEinsumDense

    inputs = keras.Input((6, 16))
    x = keras.layers.EinsumDense(
        "abc,cde->abde", (6, 2, 8), bias_axes="de", activation="relu", name="q",
        kernel_regularizer="l2",
    )(inputs)
    outputs = keras.layers.EinsumDense("abcd,cde->abe", (6, 16), name="o")(x)
    model = keras.Model(inputs, outputs)
    sparse = sparsify(model, 0.25, distribution="uniform", seed=3)
    q, o = sparse.get_layer("q"), sparse.get_layer("o")
    assert isinstance(q, DCTSparseEinsumDense) and isinstance(o, DCTSparseEinsumDense)
    assert (q.equation, tuple(q.partial_output_shape), q.bias_axes) == ("abc,cde->abde", (6, 2, 8), "de")
    assert q.activation is keras.activations.relu
    assert q.sparse_regularizer is not None
    assert o.bias is None and o.seed == 4
    # The densities are spread over the (n, m) matrix views of the kernels.
    assert q.sparse_weight.kernel_shape == (16, 16) and o.sparse_weight.kernel_shape == (16, 16)
    assert q.nnz == o.nnz == 64
    x = np.random.rand(2, 6, 16).astype("float32")
    assert sparse(x).shape == model(x).shape == (2, 6, 16)
    report = sparsity_report(sparse)
    assert report.total.nnz == 128 and report.total.dense_params == 512


@pytest.mark.parametrize("distribution", ["erk", "epl", "epf", "uniform"])
def test_each_layer_gets_the_allocations_nnz(distribution, tmp_path):
    # sparsify passes every layer its count (nnz=), not a density it turns back into one.
    model = functional_model() if distribution == "epf" else sequential_model()
    density = 0.037
    sparse = sparsify(model, density, distribution=distribution, seed=0)
    layers = sparse_layers(sparse)
    allocation = allocate_densities(
        [layer.sparse_weight.kernel_shape for layer in layers], density, distribution
    )
    assert [layer.nnz for layer in layers] == list(allocation.nnz)
    for layer, nnz in zip(layers, allocation.nnz):
        config = layer.get_config()
        assert (config["nnz"], config["density"]) == (nnz, None)
        assert layer.sparse_weight.values.shape == (nnz,)
    path = str(tmp_path / "sparse.keras")
    sparse.save(path)
    loaded = keras.models.load_model(path)
    assert [layer.nnz for layer in sparse_layers(loaded)] == list(allocation.nnz)
