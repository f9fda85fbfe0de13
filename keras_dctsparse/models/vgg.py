"""VGG-19 with batch normalization, CIFAR variant."""

import keras

from keras_dctsparse.models._common import check_arguments
from keras_dctsparse.models._common import check_image_shape
from keras_dctsparse.models._common import finish

__all__ = ["build_vgg19", "VGG19_CONFIG"]

#: Filters of the 16 conv layers; "M" is a 2x2 max pool.
VGG19_CONFIG = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)  # fmt: skip


def build_vgg19(
    input_shape=(32, 32, 3),
    num_classes=10,
    density=1.0,
    distribution="erk",
    offset="dct",
    seed=None,
):
    """VGG-19-BN for CIFAR: 16 3x3 conv + BatchNorm + ReLU layers, one Dense head.

    Layout `VGG19_CONFIG` (64, 64, M, 128, 128, M, 256 x4, M, 512 x4, M,
    512 x4, M) with "same" padding and no conv bias, then Flatten and
    `Dense(num_classes, softmax)` (the CIFAR head: a 32x32 input ends at 1x1x512).
    The dense network is built with plain Keras layers; unless `density == 1`
    and `offset is None`, it is converted with `sparsify`.

    Args:
        input_shape: `(height, width, channels)`, at least 32x32.
        num_classes: Number of output classes.
        density: Global density in (0, 1] of the conv and Dense kernels.
        distribution: `"erk"` (default), `"epl"`, `"epf"` or `"uniform"`.
        offset: `"dct"` (default) for DCTpS, or None for random-sparse / dense.
        seed: None, or an int: the sparse layer `i` gets seed `seed + i`.

    Returns:
        A built Functional `keras.Model` with outputs `(batch, num_classes)`.

    Raises:
        ValueError: If an argument is invalid.

    Example:

    >>> model = build_vgg19(num_classes=100, density=0.01, seed=0)
    >>> model.output_shape
    (None, 100)
    """
    input_shape, density = check_arguments(
        input_shape, num_classes, density, distribution, offset
    )
    check_image_shape("build_vgg19", input_shape, min_size=32)
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    conv, block = 0, 1
    for item in VGG19_CONFIG:
        if item == "M":
            x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
            block += 1
            continue
        conv += 1
        x = keras.layers.Conv2D(
            item, 3, padding="same", use_bias=False, name=f"conv{conv}"
        )(x)
        x = keras.layers.BatchNormalization(name=f"bn{conv}")(x)
        x = keras.layers.ReLU(name=f"relu{conv}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(
        x
    )
    dense = keras.Model(inputs, outputs, name="vgg19")
    return finish(dense, density, distribution, offset, seed)
