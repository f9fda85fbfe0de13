"""Backend-neutral helpers of the per-backend layer tests: numpy/scipy references of the
layers' outputs and gradients read from their raw weights, and each backend's gradient.

Nothing here uses keras_dctsparse code to compute a reference: the DCT comes from scipy
(tests/numpy_reference.py), the sparse part from the raw `sparse_values`/`sparse_indices`
(or `masked_kernel`/`mask`) weights.
"""

import keras
import numpy as np

from numpy_reference import col2im
from numpy_reference import dct_block
from numpy_reference import im2col


def to_numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), np.float64)


def numpy_sparse(layer):
    """S in Keras kernel layout (float64), from the layer's raw weights."""
    weight = layer.sparse_weight
    shape = weight.kernel_shape
    if layer.sparse_format == "values":
        rows, cols = keras.ops.convert_to_numpy(weight.indices)
        matrix = np.zeros((int(np.prod(shape[:-1])), shape[-1]))
        matrix[rows, cols] = to_numpy(weight.values)
        return matrix.reshape(shape)
    return to_numpy(weight.masked_kernel) * to_numpy(weight.mask)


def alpha_of(layer):
    return float(to_numpy(layer.alpha)) if layer.offset == "dct" else 0.0


def bias_of(layer):
    return to_numpy(layer.bias) if layer.use_bias else 0.0


def dense_kernel(layer):
    """The effective `(n, m)` kernel `alpha * D^T + S^T` of a DCTSparseDense."""
    n, m = layer.sparse_weight.kernel_shape
    return numpy_sparse(layer) + alpha_of(layer) * dct_block(m, n).T


class ReferenceGradients(dict):
    """Gradient name -> numpy reference, plus `magnitudes`: for gradients whose entries are
    sums that can cancel (alpha's, the bias's over the batch, the sparse values' over the
    batch and pixels), the sums of the absolute values of their terms, entry by entry: the
    scale of their float32 rounding errors."""

    def __init__(self, grads, magnitudes):
        super().__init__(grads)
        self.magnitudes = magnitudes


def dense_reference(layer, x, dy=None):
    """`(y, grads)` of a DCTSparseDense on `(batch, n)` `x` for the loss `sum(y * dy)`.

    `grads` (a `ReferenceGradients`) maps "x", "sparse_values" (or "masked_kernel"),
    "alpha", "bias" to the loss gradient (`dy=None`: zeros).
    """
    n, m = layer.sparse_weight.kernel_shape
    x = np.asarray(x, np.float64)
    kernel = dense_kernel(layer)
    y = x @ kernel + bias_of(layer)
    dy = np.zeros_like(y) if dy is None else dy
    kernel_grad = x.T @ dy
    offset_matrix = dct_block(m, n).T
    grads = {"x": dy @ kernel.T, "bias": dy.sum(0), "alpha": np.sum(kernel_grad * offset_matrix)}
    grads.update(_sparse_grads(layer, kernel_grad))
    kernel_terms = np.abs(x).T @ np.abs(dy)
    magnitudes = {"alpha": np.sum(kernel_terms * np.abs(offset_matrix)),
                  "bias": np.abs(dy).sum(0), **_sparse_grads(layer, kernel_terms)}
    return y, ReferenceGradients(grads, magnitudes)


def _sparse_grads(layer, kernel_grad):
    weight = layer.sparse_weight
    if layer.sparse_format == "values":
        rows, cols = keras.ops.convert_to_numpy(weight.indices)
        return {"sparse_values": kernel_grad.reshape(weight.matrix_shape)[rows, cols]}
    mask = to_numpy(weight.mask)  # pruned entries get no gradient
    return {"masked_kernel": kernel_grad.reshape(weight.kernel_shape) * mask}


def _groups(layer, c_in):
    """`(groups, sparse kernel as (*k, c_in_g, c_out), offset kernel likewise)`."""
    rank = len(layer.kernel_size)
    sparse = numpy_sparse(layer)
    if layer.depthwise:
        groups = c_in
        sparse = sparse.reshape(*sparse.shape[:rank], 1, -1)
    else:
        groups = layer.groups
    return groups, sparse


def conv_reference(layer, x, dy=None):
    """`(y, grads)` of a DCTpS conv on channels_last `x` for the loss `sum(y * dy)`.

    Per group: im2col patches (channel fastest) times `alpha * Kd + S`, `Kd` the rows of
    the scipy ortho DCT-II of the zero-padded patch (N counts all output channels).
    `dy=None`: zeros.
    """
    x = np.asarray(x, np.float64)
    rank = x.ndim - 2
    padding = layer.padding
    left = 0
    if padding == "causal":
        left = (layer.kernel_size[0] - 1) * layer.dilation_rate[0]
        x = np.pad(x, [(0, 0), (left, 0), (0, 0)])
        padding = "valid"
    c_in = x.shape[-1]
    groups, sparse = _groups(layer, c_in)
    c_in_g = c_in // groups
    c_out = sparse.shape[-1]
    c_out_g = c_out // groups
    alpha = alpha_of(layer)
    patch = int(np.prod(layer.kernel_size)) * c_in_g
    offset_matrix = dct_block(c_out, patch).T  # (P, c_out): row o of C_N, N = max(P, c_out)
    args = (layer.kernel_size, layer.strides, padding, layer.dilation_rate)
    if dy is None:
        out_shape = im2col(x[..., :1], *args).shape[:-1] + (c_out,)
        dy = np.zeros(out_shape)
    outputs, dx, dkernel = [], np.zeros_like(x), np.zeros((patch, c_out))
    dkernel_terms = np.zeros((patch, c_out))  # sums of |patch entry * dy|
    for g in range(groups):
        channels = slice(g * c_in_g, (g + 1) * c_in_g)
        outs = slice(g * c_out_g, (g + 1) * c_out_g)
        patches = im2col(x[..., channels], *args)
        matrix = alpha * offset_matrix[:, outs] + sparse[..., outs].reshape(patch, c_out_g)
        outputs.append(patches @ matrix)
        dy_g = dy[..., outs]
        dx[..., channels] = col2im(dy_g @ matrix.T, x[..., channels].shape, *args)
        dkernel[:, outs] = patches.reshape(-1, patch).T @ dy_g.reshape(-1, c_out_g)
        dkernel_terms[:, outs] = np.abs(patches.reshape(-1, patch)).T @ np.abs(
            dy_g.reshape(-1, c_out_g))
    y = np.concatenate(outputs, axis=-1) + bias_of(layer)
    grads = {
        "x": dx[:, left:] if left else dx,
        "bias": dy.reshape(-1, c_out).sum(0),
        "alpha": np.sum(dkernel * offset_matrix),
    }
    grads.update(_sparse_grads(layer, dkernel))
    magnitudes = {"alpha": np.sum(dkernel_terms * np.abs(offset_matrix)),
                  "bias": np.abs(dy).reshape(-1, c_out).sum(0),
                  **_sparse_grads(layer, dkernel_terms)}
    return y, ReferenceGradients(grads, magnitudes)


def gradients(layer, x, dy):
    """`(y, grads)`: the layer's output and loss gradients on the active Keras backend.

    The loss is `sum(layer(x) * dy)`; `grads` maps "x" and the trainable weights' names
    to numpy arrays. Under JAX the gradient is taken of `layer.stateless_call` inside
    `jax.jit`, as `model.fit` runs it.
    """
    backend = keras.backend.backend()
    weights = layer.trainable_weights
    names = [w.path.split("/")[-1] for w in weights]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        non_trainable = [v.value for v in layer.non_trainable_weights]

        def loss(trainable, inputs):
            y, _ = layer.stateless_call(trainable, non_trainable, inputs)
            return jnp.sum(y * dy), y

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (_, y), (grad_w, grad_x) = step([w.value for w in weights], jnp.asarray(x))
    elif backend == "torch":
        import torch

        inputs = torch.tensor(x, requires_grad=True)
        y = layer(inputs)
        torch.sum(y * torch.tensor(dy, dtype=y.dtype)).backward()
        grad_x, grad_w = inputs.grad, [w.value.grad for w in weights]
        y = y.detach()
    else:
        import tensorflow as tf

        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs)
            loss = tf.reduce_sum(y * tf.cast(dy, y.dtype))
        grad_x, *grad_w = tape.gradient(loss, [inputs] + weights)
    grads = {"x": to_numpy(grad_x)}
    grads.update({name: to_numpy(g) for name, g in zip(names, grad_w)})
    return to_numpy(y), grads


def assert_close(actual, expected, rtol=2e-5):
    """Max error relative to the largest reference entry."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30)
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def assert_grads_close(actual, expected, rtol=2e-5):
    """Every gradient within `rtol` of its largest reference entry, or, for one with
    magnitudes in `expected.magnitudes` (sums that can cancel to far below their terms: a
    1 x 1 layer's bias and value gradients over a batch of 6, alpha's over every kernel
    entry), every entry within `rtol` of the sum of its terms' absolute values, the scale
    of its rounding error."""
    assert sorted(actual) == sorted(expected), (sorted(actual), sorted(expected))
    magnitudes = getattr(expected, "magnitudes", {})
    for name in expected:
        try:
            try:
                assert_close(actual[name], expected[name], rtol)
                continue
            except AssertionError:
                if name not in magnitudes:
                    raise
            want = np.asarray(expected[name], np.float64)
            got = np.asarray(actual[name], np.float64).reshape(want.shape)
            bound = rtol * np.asarray(magnitudes[name], np.float64)
            error = np.abs(got - want)
            worst = np.unravel_index(np.argmax(error - bound), want.shape) if want.ndim else ()
            assert np.all(error <= bound), (
                f"|error| {error[worst]:.3g} > {rtol} * sum of |terms| "
                f"{np.asarray(magnitudes[name])[worst]:.3g} (result {want[worst]:.3g})"
            )
        except AssertionError as error:
            raise AssertionError(f"gradient of {name}: {error}") from None
