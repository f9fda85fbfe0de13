"""MobileNetV2 (width 1.0), CIFAR variant."""

import keras

from keras_dctsparse.models._common import check_arguments
from keras_dctsparse.models._common import check_image_shape
from keras_dctsparse.models._common import finish

__all__ = ["build_mobilenetv2", "MOBILENETV2_CONFIG"]

#: Inverted residual settings `(expansion t, channels c, repeats n, stride s)`;
#: the CIFAR variant uses stride 1 in the first conv and in the second stage.
MOBILENETV2_CONFIG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _inverted_residual(x, expansion, filters, strides, name):
    in_channels = x.shape[-1]
    y = x
    if expansion != 1:
        y = keras.layers.Conv2D(
            in_channels * expansion, 1, use_bias=False, name=f"{name}_expand"
        )(y)
        y = keras.layers.BatchNormalization(name=f"{name}_expand_bn")(y)
        y = keras.layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
    y = keras.layers.DepthwiseConv2D(
        3, strides=strides, padding="same", use_bias=False, name=f"{name}_depthwise"
    )(y)
    y = keras.layers.BatchNormalization(name=f"{name}_depthwise_bn")(y)
    y = keras.layers.ReLU(6.0, name=f"{name}_depthwise_relu")(y)
    y = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_project_bn")(y)
    if strides == 1 and in_channels == filters:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def build_mobilenetv2(
    input_shape=(32, 32, 3),
    num_classes=10,
    density=1.0,
    distribution="erk",
    offset="dct",
    seed=None,
):
    """MobileNetV2 (width multiplier 1.0) for CIFAR.

    A 3x3 conv of 32 filters with stride 1 (instead of 2), the 17 inverted
    residual blocks of `MOBILENETV2_CONFIG` (1x1 expansion, 3x3
    `DepthwiseConv2D`, linear 1x1 projection, BatchNorm + ReLU6, identity
    shortcut when the shape is kept; the second stage also uses stride 1, so a
    32x32 input ends at 4x4), a 1x1 conv of 1280 filters, global average
    pooling and `Dense(num_classes, softmax)`. The dense network is built with
    plain Keras layers; unless `density == 1` and `offset is None`, it is
    converted with `sparsify` (depthwise convs included).

    Args:
        input_shape: `(height, width, channels)`, e.g. `(32, 32, 3)`.
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

    >>> model = build_mobilenetv2(density=0.01, seed=0)
    >>> model.output_shape
    (None, 10)
    """
    input_shape, density = check_arguments(
        input_shape, num_classes, density, distribution, offset
    )
    check_image_shape("build_mobilenetv2", input_shape)
    inputs = keras.Input(input_shape, name="input")
    x = keras.layers.Conv2D(
        32, 3, strides=1, padding="same", use_bias=False, name="stem_conv"
    )(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    block = 0
    for expansion, filters, repeats, stride in MOBILENETV2_CONFIG:
        for index in range(repeats):
            x = _inverted_residual(
                x, expansion, filters, stride if index == 0 else 1, f"block{block}"
            )
            block += 1
    x = keras.layers.Conv2D(1280, 1, use_bias=False, name="head_conv")(x)
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    x = keras.layers.ReLU(6.0, name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(
        x
    )
    dense = keras.Model(inputs, outputs, name="mobilenetv2")
    return finish(dense, density, distribution, offset, seed)
