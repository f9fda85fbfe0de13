"""Helpers shared by the model-zoo builders."""

import numbers

from keras_dctsparse.allocation import METHODS
from keras_dctsparse.allocation import check_density
from keras_dctsparse.convert import sparsify
from keras_dctsparse.layers import validation


def check_arguments(input_shape, num_classes, density, distribution, offset):
    """Validates the common builder arguments; returns `(input_shape, density)`.

    Raises:
        ValueError: If an argument is invalid.
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(
            f"Argument `input_shape` must be a tuple of ints; received {input_shape!r}."
        ) from None
    if not shape or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0
        for d in shape
    ):
        raise ValueError(
            "Argument `input_shape` must be a non-empty tuple of positive ints "
            f"(without the batch axis); received input_shape={input_shape!r}."
        )
    if (
        not isinstance(num_classes, numbers.Integral)
        or isinstance(num_classes, bool)
        or num_classes < 1
    ):
        raise ValueError(
            "Argument `num_classes` must be a positive int; received "
            f"num_classes={num_classes!r}."
        )
    density = check_density(density)
    if not isinstance(distribution, str) or distribution.lower() not in METHODS:
        raise ValueError(
            f"Argument `distribution` must be one of {METHODS}; received "
            f"distribution={distribution!r}."
        )
    validation.check_choice("offset", offset, validation.OFFSETS)
    return tuple(int(d) for d in shape), density


def check_image_shape(name, input_shape, min_size=1):
    """Checks that `input_shape` is `(height, width, channels)`."""
    if len(input_shape) != 3 or min(input_shape[:2]) < min_size:
        raise ValueError(
            f"{name} needs `input_shape=(height, width, channels)` with height and "
            f"width at least {min_size}; received input_shape={input_shape!r}."
        )


def finish(dense, density, distribution, offset, seed):
    """Returns `dense` itself or its DCTpS / random-sparse version."""
    offset = validation.check_choice("offset", offset, validation.OFFSETS)
    if density == 1.0 and offset is None:
        return dense
    return sparsify(dense, density, distribution=distribution, offset=offset, seed=seed)
