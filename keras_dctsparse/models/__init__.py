"""Model zoo: the networks of Price & Tanner (2021), dense, DCTpS or random-sparse.

Every builder has the signature
`build_<name>(input_shape=..., num_classes=..., density=1.0, distribution="erk",
offset="dct", seed=None)`. It builds the dense network with plain Keras layers
and, unless `density == 1` and `offset is None` (the dense model itself),
returns `sparsify(dense, density, distribution=distribution, offset=offset,
seed=seed)`: DCT-plus-sparse layers with `offset="dct"` (with `density=1`: a
dense `S` plus the offset), plain random-sparse layers with `offset=None`.
"""

from keras_dctsparse.models.lenet import build_lenet300100
from keras_dctsparse.models.lenet import build_lenet5
from keras_dctsparse.models.mobilenet import build_mobilenetv2
from keras_dctsparse.models.resnet import build_resnet18
from keras_dctsparse.models.resnet import build_resnet50
from keras_dctsparse.models.vgg import build_vgg19

__all__ = [
    "MODELS",
    "build_model",
    "build_lenet300100",
    "build_lenet5",
    "build_vgg19",
    "build_resnet18",
    "build_resnet50",
    "build_mobilenetv2",
]

#: Model name -> builder.
MODELS = {
    "lenet300100": build_lenet300100,
    "lenet5": build_lenet5,
    "vgg19": build_vgg19,
    "resnet18": build_resnet18,
    "resnet50": build_resnet50,
    "mobilenetv2": build_mobilenetv2,
}


def build_model(name, **kwargs):
    """Builds a model of the zoo by name.

    Args:
        name: One of the keys of `MODELS` (case-insensitive): `"lenet300100"`,
            `"lenet5"`, `"vgg19"`, `"resnet18"`, `"resnet50"`, `"mobilenetv2"`.
        **kwargs: Arguments of the builder (`input_shape`, `num_classes`,
            `density`, `distribution`, `offset`, `seed`).

    Returns:
        The Keras model built by `MODELS[name](**kwargs)`.

    Raises:
        ValueError: If `name` is unknown, or an argument is invalid.

    Example:

    >>> model = build_model("lenet300100", density=0.01, seed=0)
    >>> model.output_shape
    (None, 10)
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(
            f"Unknown model name {name!r}; allowed names are: "
            f"{', '.join(sorted(MODELS))}."
        )
    return MODELS[key](**kwargs)
