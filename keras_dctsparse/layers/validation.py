"""Argument checks shared by the layers: each error names the argument, the value and what is allowed.

`check_density` and `check_nnz` are `keras_dctsparse.allocation`'s (one density check
for the layers, the allocation and `sparsify`).
"""

import math
import numbers

from keras_dctsparse.allocation import check_density
from keras_dctsparse.allocation import check_nnz

__all__ = [
    "Choices",
    "OFFSETS",
    "SPARSE_FORMATS",
    "check_positive_int",
    "check_density",
    "check_nnz",
    "check_choice",
    "check_finite_float",
    "check_seed",
    "check_last_dim",
]


class Choices(tuple):
    """Allowed values of an argument, plus `aliases` accepted for some of them."""

    def __new__(cls, values, aliases=None):
        choices = super().__new__(cls, values)
        choices.aliases = dict(aliases or {})
        return choices


# "none" is the command line's spelling of offset=None.
OFFSETS = Choices(("dct", None), aliases={"none": None})
SPARSE_FORMATS = ("values", "masked")


def check_positive_int(name, value):
    """Returns `value` as an int if it is an integer >= 1, else raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"Argument `{name}` must be a positive integer; received {name}={value!r}."
        )
    return int(value)


def check_choice(name, value, allowed):
    """Returns `value` if it is one of `allowed`, else raises ValueError."""
    if isinstance(value, str) or value is None:
        normalized = value.lower() if isinstance(value, str) else value
        aliases = getattr(allowed, "aliases", {})
        if normalized in aliases:
            return aliases[normalized]
        if normalized in allowed:
            return normalized
    raise ValueError(
        f"Argument `{name}` must be one of {allowed}; received {name}={value!r}."
    )


def check_finite_float(name, value):
    """Returns `value` as a float if it is a finite real number, else raises ValueError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
    ):
        raise ValueError(
            f"Argument `{name}` must be a finite number; received {name}={value!r}."
        )
    return float(value)


def check_seed(value):
    """Returns `value` if it is None or a non-negative integer, else raises ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(
            "Argument `seed` must be None or a non-negative integer; received "
            f"seed={value!r}."
        )
    return int(value)


def check_last_dim(layer_name, input_shape):
    """Returns the static last dimension of `input_shape`, else raises ValueError."""
    if len(input_shape) < 2:
        raise ValueError(
            f"Layer '{layer_name}' expects inputs of rank >= 2 (batch, ..., features); "
            f"received input_shape={tuple(input_shape)}."
        )
    last = input_shape[-1]
    if last is None:
        raise ValueError(
            f"Layer '{layer_name}' needs the last dimension of its input to be "
            f"defined; received input_shape={tuple(input_shape)}."
        )
    return int(last)
