import keras
import pytest

import keras_dctsparse
from keras_dctsparse import models
from keras_dctsparse.models import MODELS
from keras_dctsparse.models import build_model


def test_registry():
    assert sorted(MODELS) == sorted(
        ["lenet300100", "lenet5", "vgg19", "resnet18", "resnet50", "mobilenetv2"]
    )
    assert MODELS["lenet5"] is models.build_lenet5
    assert keras_dctsparse.models is models


def test_build_model():
    model = build_model("LeNet300100", density=1.0, offset=None, num_classes=4)
    assert isinstance(model, keras.Model)
    assert model.output_shape == (None, 4)


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match="'resnet101'.*lenet300100.*resnet50"):
        build_model("resnet101")


def test_build_model_bad_argument():
    with pytest.raises(ValueError, match="offset"):
        build_model("lenet5", offset="identity")


def test_offset_none_spelled_as_a_string_builds_the_same_models():
    dense = build_model("lenet300100", density=1.0, offset="none")
    assert all(isinstance(layer, keras.layers.Dense) for layer in dense.layers if layer.weights)
    sparse = build_model("lenet300100", density=0.1, offset="None", seed=0)
    assert all(layer.offset is None for layer in sparse.layers if layer.weights)
