"""Timing helpers shared by the benchmark scripts."""

import time

import numpy as np


def median_ms(function, repeats, warmup=2):
    """Median wall time of `function()` in milliseconds (outputs fetched to host)."""
    for _ in range(warmup):
        _fetch(function())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _fetch(function())
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def interleaved_ms(functions, repeats, warmup=2):
    """Times several candidates interleaved (A, B, C, A, B, C, ...) in one process.

    Interleaving spreads the noise of a shared machine over all candidates, so
    their ratios are fairer than those of back-to-back `median_ms` calls.

    Args:
        functions: dict `name -> callable` (outputs are fetched to host).
        repeats: Number of timed rounds; each round calls every candidate once.
        warmup: Untimed calls of each candidate before the first round.

    Returns:
        dict `name -> (best_ms, median_ms)`.

    Example:

    >>> result = interleaved_ms({"a": lambda: None}, repeats=3)
    >>> sorted(result)
    ['a']
    """
    for function in functions.values():
        for _ in range(warmup):
            _fetch(function())
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            _fetch(function())
            times[name].append(time.perf_counter() - start)
    return {
        name: (1000.0 * float(np.min(values)), 1000.0 * float(np.median(values)))
        for name, values in times.items()
    }


def _fetch(result):
    if isinstance(result, (list, tuple)):
        for item in result:
            _fetch(item)
    elif result is not None and hasattr(result, "numpy"):
        result.numpy()


def markdown_table(header, rows):
    """A Markdown table from a header list and rows of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def keras_step(function):
    """`function` as Keras runs a `fit` / `predict` step: a `tf.function` whose body runs
    in `tf.distribute.get_strategy().run` (the replica context in which
    `keras_dctsparse.native.policy` lets the layers use the native kernels).
    """
    import tensorflow as tf

    @tf.function
    def step():
        return tf.distribute.get_strategy().run(function)

    return step


def first_element(tensor):
    """One element of `tensor`, which still needs all of it computed.

    The step functions return this instead of their whole output, so that a timing does not
    include copying a large output to the host (which would add the same time to every
    candidate and pull every ratio toward 1).
    """
    import tensorflow as tf

    return tf.reshape(tensor, [-1])[:1]


def layer_step_functions(layer, x, dy):
    """`(forward, train_step)` step functions of one built layer on the input `x`.

    The train step computes the input gradient (every layer but a network's first
    needs it) and applies SGD to the layer's weights, with `dy` as the output gradient.
    Both run as Keras runs `predict` and `fit` steps (`keras_step`) and return one
    element of the output or input gradient (`first_element`).
    """
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.SGD(1e-6)
    optimizer.build(layer.trainable_weights)

    def forward():
        return first_element(layer(x))

    def train_step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * dy)
        grads = tape.gradient(loss, [x] + layer.trainable_weights)
        optimizer.apply(grads[1:], layer.trainable_weights)
        return first_element(grads[0])

    return keras_step(forward), keras_step(train_step)
