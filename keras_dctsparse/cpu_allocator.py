"""TensorFlow's BFC allocator for CPU memory: fewer page faults in large steps.

TensorFlow allocates CPU tensors with the C library's `malloc` unless
`TF_CPU_ALLOCATOR_USE_BFC` is true. glibc serves blocks above 32 MiB with a
fresh `mmap` and returns them with `munmap`, so a step whose tensors are that
large (convolutions at batch 128, wide layers at batch 256) faults in and zeroes
every page of them again in every step. The BFC allocator keeps freed memory in
a pool and reuses it. The native sparse ops allocate several such tensors per
step (the conv offset's `U, V` maps, the kept offset, the input gradient), and
on a 2-core AMD EPYC the BFC allocator cut the `DCTSparseConv2D` train step by a
third to a half (`Conv2D`'s and `Dense`'s by 3-29%; README, "TensorFlow's CPU
allocator").

TensorFlow reads the variable once, when it creates its CPU allocator (at the
first tensor), so it must be set before that: in the environment, or by
`use_bfc_cpu_allocator()` early in the program. The `dctsparse` command line
sets it unless the environment does.
"""

import os

__all__ = [
    "ALLOCATOR_VARIABLE",
    "bfc_cpu_allocator_active",
    "use_bfc_cpu_allocator",
]

ALLOCATOR_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"


def bfc_cpu_allocator_active():
    """Whether TensorFlow's CPU tensors come from its BFC allocator.

    Creates TensorFlow's CPU allocator if no tensor has been created yet (it then
    follows `TF_CPU_ALLOCATOR_USE_BFC`).

    Returns:
        bool: True when the CPU allocator is the BFC one (it keeps statistics,
        which `tf.config.experimental.get_memory_info("CPU:0")` reads; the
        `malloc` allocator keeps none).

    Example:

    >>> isinstance(bfc_cpu_allocator_active(), bool)
    True
    """
    import tensorflow as tf

    with tf.device("CPU:0"):
        tf.zeros(())
    try:
        tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:
        return False
    return True


def use_bfc_cpu_allocator():
    """Makes TensorFlow allocate CPU tensors with its BFC allocator.

    Sets `TF_CPU_ALLOCATOR_USE_BFC=true` and creates TensorFlow's CPU allocator
    with it. Call it before the program creates its first tensor (right after the
    imports); setting the variable in the environment does the same.

    Returns:
        True (the BFC allocator is active).

    Raises:
        RuntimeError: If TensorFlow created its CPU allocator before this call
            without the variable (a tensor already exists): the allocator cannot
            change in a running process.

    Example:

    >>> import keras_dctsparse
    >>> keras_dctsparse.use_bfc_cpu_allocator()  # doctest: +SKIP
    True
    """
    previous = os.environ.get(ALLOCATOR_VARIABLE)
    os.environ[ALLOCATOR_VARIABLE] = "true"
    if bfc_cpu_allocator_active():
        return True
    if previous is None:
        del os.environ[ALLOCATOR_VARIABLE]
    else:
        os.environ[ALLOCATOR_VARIABLE] = previous
    raise RuntimeError(
        "use_bfc_cpu_allocator() was called after TensorFlow created its CPU allocator "
        f"(a tensor already exists), with {ALLOCATOR_VARIABLE}="
        f"{previous if previous is not None else '(unset)'}; call it before the program "
        f"creates any tensor, or set {ALLOCATOR_VARIABLE}=true in the environment."
    )
