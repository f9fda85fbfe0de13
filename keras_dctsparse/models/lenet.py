"""LeNet-300-100 and LeNet-5 (MNIST-sized) builders."""

import keras

from keras_dctsparse.models._common import check_arguments
from keras_dctsparse.models._common import check_image_shape
from keras_dctsparse.models._common import finish

__all__ = ["build_lenet300100", "build_lenet5"]


def build_lenet300100(
    input_shape=(28, 28, 1),
    num_classes=10,
    density=1.0,
    distribution="erk",
    offset="dct",
    seed=None,
):
    """LeNet-300-100: Flatten, Dense 300 relu, Dense 100 relu, Dense softmax.

    The dense network is built with plain Keras layers; unless `density == 1`
    and `offset is None`, it is converted with `sparsify` (DCTpS layers with
    `offset="dct"`, plain random-sparse layers with `offset=None`).

    Args:
        input_shape: Shape of one example, without the batch axis.
        num_classes: Number of output classes (softmax units).
        density: Global density in (0, 1] of the Dense kernels.
        distribution: Density allocation over layers: `"erk"` (default),
            `"epl"`, `"epf"` or `"uniform"`.
        offset: `"dct"` (default) for DCT-plus-sparse layers, or None for the
            random-sparse baseline (the dense model when `density == 1`).
        seed: None, or an int: the sparse layer `i` gets seed `seed + i`.

    Returns:
        A built `keras.Sequential` model with outputs `(batch, num_classes)`.

    Raises:
        ValueError: If an argument is invalid.

    Example:

    >>> model = build_lenet300100(density=1.0, offset=None)
    >>> model.count_params()
    266610
    >>> sparse = build_lenet300100(density=0.01, seed=0)
    >>> sparse.output_shape
    (None, 10)
    """
    input_shape, density = check_arguments(
        input_shape, num_classes, density, distribution, offset
    )
    dense = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(300, activation="relu", name="fc1"),
            keras.layers.Dense(100, activation="relu", name="fc2"),
            keras.layers.Dense(num_classes, activation="softmax", name="predictions"),
        ],
        name="lenet300100",
    )
    return finish(dense, density, distribution, offset, seed)


def build_lenet5(
    input_shape=(28, 28, 1),
    num_classes=10,
    density=1.0,
    distribution="erk",
    offset="dct",
    seed=None,
):
    """LeNet-5: two 5x5 conv + max-pool stages, then Dense 120, 84, softmax.

    Conv2D 6 5x5 "same" relu, MaxPool 2, Conv2D 16 5x5 "valid" relu, MaxPool 2,
    Flatten, Dense 120 relu, Dense 84 relu, Dense `num_classes` softmax. See
    `build_lenet300100` for how `density` and `offset` are applied.

    Args:
        input_shape: `(height, width, channels)`, at least 10x10 (e.g.
            `(28, 28, 1)` for MNIST, `(32, 32, 3)` for CIFAR).
        num_classes: Number of output classes.
        density: Global density in (0, 1] of the conv and Dense kernels.
        distribution: `"erk"` (default), `"epl"`, `"epf"` or `"uniform"`.
        offset: `"dct"` (default) or None.
        seed: None, or an int: the sparse layer `i` gets seed `seed + i`.

    Returns:
        A built `keras.Sequential` model with outputs `(batch, num_classes)`.

    Raises:
        ValueError: If an argument is invalid.

    Example:

    >>> model = build_lenet5(density=0.05, seed=0)
    >>> model.output_shape
    (None, 10)
    """
    input_shape, density = check_arguments(
        input_shape, num_classes, density, distribution, offset
    )
    check_image_shape("build_lenet5", input_shape, min_size=10)
    dense = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(16, 5, padding="valid", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(120, activation="relu", name="fc1"),
            keras.layers.Dense(84, activation="relu", name="fc2"),
            keras.layers.Dense(num_classes, activation="softmax", name="predictions"),
        ],
        name="lenet5",
    )
    return finish(dense, density, distribution, offset, seed)
