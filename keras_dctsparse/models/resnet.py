"""ResNet-18 and ResNet-50, CIFAR variants (3x3 stem, no max pool)."""

import keras

from keras_dctsparse.models._common import check_arguments
from keras_dctsparse.models._common import check_image_shape
from keras_dctsparse.models._common import finish

__all__ = ["build_resnet18", "build_resnet50"]


def _conv_bn(x, filters, kernel_size, strides, name, relu=True):
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _shortcut(x, filters, strides, name):
    if strides == 1 and x.shape[-1] == filters:
        return x
    return _conv_bn(x, filters, 1, strides, f"{name}_shortcut", relu=False)


def _basic_block(x, filters, strides, name):
    shortcut = _shortcut(x, filters, strides, name)
    y = _conv_bn(x, filters, 3, strides, f"{name}_1")
    y = _conv_bn(y, filters, 3, 1, f"{name}_2", relu=False)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _bottleneck_block(x, filters, strides, name):
    expansion = 4
    shortcut = _shortcut(x, filters * expansion, strides, name)
    y = _conv_bn(x, filters, 1, 1, f"{name}_1")
    y = _conv_bn(y, filters, 3, strides, f"{name}_2")
    y = _conv_bn(y, filters * expansion, 1, 1, f"{name}_3", relu=False)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _resnet(name, block, blocks, input_shape, num_classes):
    inputs = keras.Input(input_shape, name="input")
    x = _conv_bn(inputs, 64, 3, 1, "stem")
    for stage, (filters, count) in enumerate(zip((64, 128, 256, 512), blocks), 1):
        for index in range(count):
            strides = 2 if stage > 1 and index == 0 else 1
            x = block(x, filters, strides, f"stage{stage}_block{index + 1}")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(
        x
    )
    return keras.Model(inputs, outputs, name=name)


def build_resnet18(
    input_shape=(32, 32, 3),
    num_classes=10,
    density=1.0,
    distribution="erk",
    offset="dct",
    seed=None,
):
    """ResNet-18 for CIFAR: 3x3 stem (stride 1, no max pool), BasicBlocks [2, 2, 2, 2].

    Stages of 64, 128, 256, 512 filters (stride 2 at the start of stages 2-4,
    with a 1x1 conv + BatchNorm projection shortcut), conv layers without bias
    followed by BatchNorm, then global average pooling and
    `Dense(num_classes, softmax)`. The dense network is built with plain Keras
    layers; unless `density == 1` and `offset is None`, it is converted with
    `sparsify` (shortcut 1x1 convs included).

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

    >>> model = build_resnet18(density=1.0, offset=None)
    >>> model.output_shape
    (None, 10)
    """
    input_shape, density = check_arguments(
        input_shape, num_classes, density, distribution, offset
    )
    check_image_shape("build_resnet18", input_shape)
    dense = _resnet("resnet18", _basic_block, (2, 2, 2, 2), input_shape, num_classes)
    return finish(dense, density, distribution, offset, seed)


def build_resnet50(
    input_shape=(32, 32, 3),
    num_classes=10,
    density=1.0,
    distribution="erk",
    offset="dct",
    seed=None,
):
    """ResNet-50 for CIFAR: 3x3 stem (stride 1, no max pool), bottlenecks [3, 4, 6, 3].

    Bottleneck blocks 1x1 -> 3x3 (carrying the stride) -> 1x1 with expansion 4
    (outputs 256, 512, 1024, 2048 channels), projection shortcuts where the
    shape changes, BatchNorm after every conv, then global average pooling and
    `Dense(num_classes, softmax)`. See `build_resnet18` for `density`/`offset`.

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

    >>> model = build_resnet50(num_classes=100, density=0.01, seed=0)
    >>> model.output_shape
    (None, 100)
    """
    input_shape, density = check_arguments(
        input_shape, num_classes, density, distribution, offset
    )
    check_image_shape("build_resnet50", input_shape)
    dense = _resnet(
        "resnet50", _bottleneck_block, (3, 4, 6, 3), input_shape, num_classes
    )
    return finish(dense, density, distribution, offset, seed)
