"""Dynamic sparse training: moving the positions of `S` during `model.fit` (RigL, SET).

Every `update_every` optimizer steps the callback drops the smallest-magnitude
fraction of each DCTpS layer's nonzeros and grows as many at positions not
currently held: where the dense gradient of the loss is largest (RigL, Evci et al.
2020) or at random (SET, Mocanu et al. 2018). The fraction follows a cosine decay
from `drop_fraction` to 0 at `end_step`. Per-layer nnz never changes and storage
stays nnz: the positions are the layer's `sparse_indices` weight, rewritten in
place (sorted column-major, as the kernels need), the grown values start at zero
and the optimizer's slots (Adam moments, momentum) of grown entries are reset;
slots of kept entries move with them.

RigL's dense gradient at position `(i, j)` is `sum_batch x_i * g_j` for the layer's
input `x` and the gradient `g` of its linear output (`W x`, before bias and
activation). It is computed for one batch in column blocks of at most
`block_elements` entries and merged into a running top-k, so the peak memory is
one block (default 2**22 entries, 16 MiB float32) plus O(nnz), never `n * m`.
Dense-like layers (`linear_map_is_matmul`) with more than `max_scored_elements`
entries (default 2**26) are scored on a sample of `candidates` random free positions
per grown entry instead (gathered products, O(batch * candidates * grown) memory);
conv kernels above it are refused with an error, as are grouped/depthwise kernels
(one block) above `block_elements`.

Backends: the same callbacks run under `KERAS_BACKEND` = `tensorflow`, `jax` and
`torch`. The input of every DCTpS layer's linear map and the loss gradient of its
linear output are taken from one forward and backward pass with the layers'
`linear_output_probe` set: a `tf.function` with a `GradientTape` on TensorFlow;
on JAX a jitted `jax.vjp` of `model.compute_loss_and_updates` with respect to zero
perturbations added to the linear outputs; on PyTorch eager autograd with respect
to the same perturbations. The kernel-gradient blocks come from each layer's own
`kernel_gradient` (`x^T g` for dense-like layers; for convolutions the
vector-Jacobian product of the layer's convolution with respect to a zero kernel,
`keras_dctsparse.ops.keras_ops.linear_vjp`); the callback knows no layer type.
Positions, values and optimizer slots are rewritten through `Variable.assign` (on
JAX `fit` first writes its state back into the variables when the callback reads
`self.model`).
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_dctsparse.callbacks import sparse_layers
from keras_dctsparse.ops import regrowth

BACKEND = keras.backend.backend()
if BACKEND == "tensorflow":
    import tensorflow as tf

__all__ = ["DynamicSparsity", "RigL", "SET", "optimizer_slots"]

METHODS = ("rigl", "set")


def optimizer_slots(optimizer, variable):
    """The optimizer variables that are per-entry state of `variable` (moments, momentum).

    Keras optimizers create them with `add_variable_from_reference`, which names them
    `<variable.path with / as _>_<slot name>` with the variable's shape.

    Args:
        optimizer: A built Keras optimizer (a `LossScaleOptimizer` is unwrapped).
        variable: A model variable.

    Returns:
        List of optimizer variables (empty before the optimizer is built).
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    prefix = variable.path.replace("/", "_") + "_"
    return [
        slot
        for slot in optimizer.variables
        if slot.name.startswith(prefix)
        and tuple(slot.shape) == tuple(variable.shape)
    ]


class DynamicSparsity(keras.callbacks.Callback):
    """Moves the positions of every DCTpS layer's `S` during `model.fit` (RigL or SET).

    Args:
        method: `"rigl"` (grow where the dense gradient is largest) or `"set"`
            (grow at random).
        data: RigL only: the batches the dense gradient is measured on, an iterable
            of `(x, y)` or `(x, y, sample_weight)` (a `tf.data.Dataset` or a list of
            numpy batches, typically the training data; it is cycled through, one
            batch per update).
        update_every: Optimizer steps between updates (RigL's `delta T`).
        drop_fraction: Fraction of each layer's nonzeros moved at step 0; it decays
            by a cosine to 0 at `end_step`.
        end_step: The step from which positions stay fixed. None: 75% of the
            training steps `model.fit` announces (the RigL paper's default).
        seed: Seed of the random choices (tie-breaks, SET's positions, sampled
            candidates); each update derives its own stream from it and the step.
        block_elements: Entries of the dense gradient computed at once (RigL).
        max_scored_elements: Dense layers larger than this are scored on sampled
            candidates (RigL).
        candidates: Sampled candidates per grown entry for those layers.

    Example:

    >>> from keras_dctsparse import DCTSparseDense
    >>> model = keras.Sequential([keras.Input((16,)), DCTSparseDense(8, density=0.25)])
    >>> model.compile("adam", "mse")
    >>> x, y = np.ones((64, 16)), np.ones((64, 8))
    >>> data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    >>> rigl = DynamicSparsity("rigl", data=data, update_every=2)
    >>> history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[rigl])
    >>> model.layers[0].nnz
    32
    """

    def __init__(
        self,
        method="rigl",
        data=None,
        update_every=100,
        drop_fraction=0.3,
        end_step=None,
        seed=0,
        block_elements=2**22,
        max_scored_elements=2**26,
        candidates=8,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(
                f"Argument `method` must be one of {METHODS}; received method={method!r}."
            )
        if method == "rigl" and data is None:
            raise ValueError(
                "Argument `data` is required for method='rigl': the batches (x, y) on "
                "which the dense gradient is measured (e.g. the training dataset)."
            )
        for name, value in (
            ("update_every", update_every),
            ("block_elements", block_elements),
            ("max_scored_elements", max_scored_elements),
            ("candidates", candidates),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"Argument `{name}` must be a positive integer; received {name}={value!r}."
                )
        if not 0.0 <= float(drop_fraction) <= 1.0:
            raise ValueError(
                "Argument `drop_fraction` must be in [0, 1]; received "
                f"drop_fraction={drop_fraction!r}."
            )
        if end_step is not None and (
            isinstance(end_step, bool) or not isinstance(end_step, int) or end_step < 1
        ):
            raise ValueError(
                "Argument `end_step` must be None or a positive integer; received "
                f"end_step={end_step!r}."
            )
        self.method = method
        self.data = data
        self.update_every = update_every
        self.drop_fraction = float(drop_fraction)
        self.end_step = end_step
        self.seed = int(seed)
        self.block_elements = block_elements
        self.max_scored_elements = max_scored_elements
        self.candidates = candidates
        self.updates = []
        self._layers = []
        self._batches = None
        self._gradient_fn = None
        self._last_update = None
        self._epoch_start_step = 0
        self._end_step = None

    # -- keras hooks ------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._layers = sparse_layers(self.model)
        for layer in self._layers:
            if layer.sparse_format != "values":
                raise ValueError(
                    f"DynamicSparsity needs sparse_format='values'; layer '{layer.name}' "
                    f"uses sparse_format={layer.sparse_format!r}."
                )
        self._end_step = self.end_step
        if self._end_step is None:
            steps, epochs = self.params.get("steps"), self.params.get("epochs")
            if not steps or not epochs:
                raise ValueError(
                    "DynamicSparsity cannot infer `end_step`: model.fit does not know the "
                    "number of steps per epoch. Pass end_step=... explicitly."
                )
            self._end_step = max(1, int(0.75 * steps * epochs))
        # Read at the first epoch begin, after every callback's on_train_begin (a
        # BackupAndRestore restores the optimizer's step count in its on_train_begin).
        self._last_update = None

    # The step count is read from the optimizer once per epoch; per batch it is that plus
    # the batch index. Reading it every batch, or hooking `on_train_batch_end`, would make
    # `fit` wait for every step (Keras dispatches batch-end callbacks synchronously when one
    # of them is overridden; a loaded-machine run measured +12-25% on a LeNet-5 epoch). An update due at the
    # last step of an epoch runs in `on_epoch_end`, so that a checkpoint written after this
    # callback's `on_epoch_end` (put it before `BackupAndRestore`) holds it.

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start_step = self._step()
        if self._last_update is None:
            self._last_update = self._epoch_start_step // self.update_every

    def on_train_batch_begin(self, batch, logs=None):
        # Steps completed before this batch.
        self._maybe_update(self._epoch_start_step + batch)

    def on_epoch_end(self, epoch, logs=None):
        self._maybe_update(self._step())

    def on_train_end(self, logs=None):
        # An update due after the last step.
        self._maybe_update(self._step())

    def _maybe_update(self, step):
        if step // self.update_every == self._last_update:
            return
        self._last_update = step // self.update_every
        fraction = regrowth.cosine_drop_fraction(step, self.drop_fraction, self._end_step)
        if fraction > 0:
            self.update(step, fraction)

    # -- the update -------------------------------------------------------------------------

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def update(self, step, fraction):
        """Moves `fraction` of every layer's nonzeros now (called by `fit`; public for tests).

        Args:
            step: The step, recorded in `updates` and mixed into the random streams.
            fraction: Fraction of each layer's nonzeros to drop and regrow.
        """
        # On JAX, reading `self.model` writes fit's state back into the variables.
        model = self.model
        if not self._layers:
            self._layers = sparse_layers(model)
        rng = np.random.default_rng([self.seed, int(step)])
        counts = {}
        for layer in self._layers:
            rows, cols = layer.sparse_weight.matrix_shape
            free = rows * cols - layer.nnz
            counts[id(layer)] = min(int(fraction * layer.nnz), free)
        if not any(counts.values()):
            return
        gradients = self._dense_gradient_inputs() if self.method == "rigl" else None
        for layer in self._layers:
            count = counts[id(layer)]
            if count:
                grown = self._update_layer(layer, count, gradients, rng)
                self.updates.append(
                    {"step": int(step), "layer": layer.name, "moved": int(count),
                     "grown": grown}
                )

    def _update_layer(self, layer, count, gradients, rng):
        weight = layer.sparse_weight
        num_rows, num_cols = weight.matrix_shape
        positions = keras.ops.convert_to_numpy(weight.indices)
        keys = regrowth.flat_keys(positions[0], positions[1], num_rows)
        values = keras.ops.convert_to_numpy(weight.values)
        dropped = regrowth.smallest_magnitude(values, count, rng)
        if self.method == "set":
            grown = regrowth.sample_free_positions(num_rows, num_cols, keys, count, rng)
        else:
            grown = self._top_gradient_positions(layer, gradients[id(layer)], keys, count, rng)
        new_keys, source = regrowth.merge_support(keys, dropped, grown)
        rows, cols = regrowth.positions_of(new_keys, num_rows)
        weight.indices.assign(np.stack([rows, cols]).astype(np.int32))
        # Values and optimizer slots: entry k takes old entry source[k], or 0 (index nnz).
        variables = [weight.values, *optimizer_slots(self.model.optimizer, weight.values)]
        if BACKEND == "tensorflow":
            _carry_over(
                [variable.value for variable in variables],
                tf.constant(np.where(source < 0, source.size, source), tf.int32),
            )
        else:
            for variable in variables:
                old = ops.convert_to_numpy(variable)
                variable.assign(regrowth.carry_over(old, source).astype(old.dtype))
        return grown

    def _top_gradient_positions(self, layer, records, keys, count, rng):
        num_rows, num_cols = layer.sparse_weight.matrix_shape
        top = regrowth.TopScores(count, num_rows, keys, rng)
        if num_rows * num_cols > self.max_scored_elements:
            if not layer.linear_map_is_matmul:
                raise ValueError(
                    f"Layer '{layer.name}' has a {num_rows} x {num_cols} kernel, more than "
                    f"max_scored_elements={self.max_scored_elements} entries; RigL scores "
                    "every position of conv kernels. Raise max_scored_elements."
                )
            free = num_rows * num_cols - keys.size
            candidates = regrowth.sample_free_positions(
                num_rows, num_cols, keys, min(free, self.candidates * count), rng
            )
            rows, cols = regrowth.positions_of(candidates, num_rows)
            scores = sum(
                _sampled_dense_gradient(inputs, grads, rows, cols, self.block_elements)
                for inputs, grads, _ in records
            )
            top.offer(candidates, np.abs(scores))
            return top.keys()
        blocks = layer.kernel_gradient_blocks(self.block_elements)
        if len(blocks) == 1 and num_rows * num_cols > self.block_elements:
            raise ValueError(
                f"Layer '{layer.name}' computes its {num_rows} x {num_cols} kernel gradient "
                f"in one block, more than block_elements={self.block_elements} entries "
                "(grouped and depthwise kernels are not split). Raise block_elements."
            )
        for first, last in blocks:
            block = sum(
                layer.kernel_gradient(inputs, grads, context, first, last)
                for inputs, grads, context in records
            )
            top.add(first, np.abs(keras.ops.convert_to_numpy(block)))
        return top.keys()

    def _dense_gradient_inputs(self):
        # One batch through the model with every layer's probe set, in a tf.function.
        """`{id(layer): [(inputs, output_gradient, context), ...]}` for one batch of `data`."""
        if self._batches is None:
            self._batches = _cycle(self.data)
        batch = next(self._batches)
        if BACKEND != "tensorflow":
            batch = keras.tree.map_structure(_to_backend_tensor, batch)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        if self._gradient_fn is None:
            self._gradient_fn = _gradient_step(self.model, self._layers)
        inputs, gradients, contexts = self._gradient_fn(x, y, sample_weight)
        records = {id(layer): [] for layer in self._layers}
        for owner, inp, grad, context in zip(
            self._probe_owners, inputs, gradients, contexts
        ):
            records[owner].append((inp, grad, context))
        return records

    @property
    def _probe_owners(self):
        return self._gradient_fn.owners


def _carry_over(variables, index):
    """`v.assign(concat([v, [0]])[index])` for each variable, in one graph call (TF)."""
    for variable in variables:
        extended = tf.concat([variable, tf.zeros([1], variable.dtype)], 0)
        variable.assign(tf.gather(extended, index))


if BACKEND == "tensorflow":
    _carry_over = tf.function(_carry_over, reduce_retracing=True)


def _to_backend_tensor(value):
    """A batch element (numpy, `tf.Tensor` from a `tf.data` pipeline, ...) as a tensor of
    the active backend (None stays None)."""
    if value is None:
        return None
    if type(value).__module__.startswith("tensorflow") and hasattr(value, "numpy"):
        value = value.numpy()
    return ops.convert_to_tensor(value)


@contextlib.contextmanager
def _probing(layers, probe):
    """Sets `probe` as every layer's `linear_output_probe` for the duration of the block."""
    for layer in layers:
        layer.linear_output_probe = probe
    try:
        yield
    finally:
        for layer in layers:
            layer.linear_output_probe = None


def _cycle(data):
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("Argument `data` of DynamicSparsity yielded no batch.")


class _GradientStep:
    """A `tf.function` returning each DCTpS layer call's input and linear-output gradient."""

    def __init__(self, model, layers):
        self.model = model
        self.layers = layers
        self.owners = None
        self.contexts = None
        self._function = tf.function(self._step, reduce_retracing=True)

    def __call__(self, x, y, sample_weight):
        inputs, gradients = self._function(x, y, sample_weight)
        return inputs, gradients, self.contexts

    def _step(self, x, y, sample_weight):
        records = []

        def probe(layer, inputs, outputs, context):
            tape.watch(outputs)
            records.append((layer, inputs, outputs, context))
            return outputs

        with tf.GradientTape() as tape:
            with _probing(self.layers, probe):
                y_pred = self.model(x, training=True)
            loss = self.model.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
        gradients = tape.gradient(loss, [outputs for _, _, outputs, _ in records])
        self.owners = [id(layer) for layer, _, _, _ in records]
        self.contexts = [context for _, _, _, context in records]
        inputs = [inputs for _, inputs, _, _ in records]
        gradients = [
            tf.zeros_like(outputs) if grad is None else grad
            for grad, (_, _, outputs, _) in zip(gradients, records)
        ]
        return inputs, gradients


class _JaxGradientStep:
    """The JAX counterpart of `_GradientStep`: a jitted `jax.vjp` of the unscaled loss of
    `model.compute_loss_and_updates` w.r.t. zero perturbations added, through the
    probe, to every DCTpS linear output (their cotangents are the output gradients).
    The inputs come back as auxiliary outputs. The perturbations' shapes (and the
    layers' contexts) come from a `jax.eval_shape` pass, once per batch signature."""

    def __init__(self, model, layers):
        import jax

        self._jax = jax
        self.model = model
        self.layers = layers
        self.owners = None
        self.contexts = None
        self._signatures = {}
        self._function = jax.jit(self._step)

    def _state(self):
        model = self.model
        optimizer = model.optimizer
        return (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.metrics_variables],
            [v.value for v in optimizer.variables] if optimizer is not None else [],
        )

    def _forward(self, probe, state, x, y, sample_weight):
        trainable, non_trainable, metrics, optimizer_variables = state
        with _probing(self.layers, probe):
            _, (loss, _, _, _) = self.model.compute_loss_and_updates(
                trainable, non_trainable, metrics, x, y, sample_weight, training=True,
                optimizer_variables=optimizer_variables,
            )
        return loss

    def _shapes(self, state, x, y, sample_weight):
        jax = self._jax
        key = str(jax.tree_util.tree_map(lambda t: (tuple(t.shape), str(t.dtype)),
                                         (x, y, sample_weight)))
        if key not in self._signatures:
            records = []

            def record(layer, inputs, outputs, context):
                records.append((id(layer), context, jax.ShapeDtypeStruct(outputs.shape,
                                                                         outputs.dtype)))
                return outputs

            jax.eval_shape(lambda s, a, b, c: self._forward(record, s, a, b, c),
                           state, x, y, sample_weight)
            self._signatures[key] = records
        return self._signatures[key]

    def __call__(self, x, y, sample_weight):
        jnp = self._jax.numpy
        state = self._state()
        records = self._shapes(state, x, y, sample_weight)
        self.owners = [owner for owner, _, _ in records]
        self.contexts = [context for _, context, _ in records]
        perturbations = [jnp.zeros(spec.shape, spec.dtype) for _, _, spec in records]
        inputs, gradients = self._function(perturbations, state, x, y, sample_weight)
        return inputs, gradients, self.contexts

    def _step(self, perturbations, state, x, y, sample_weight):
        def loss(perturbations):
            inputs = []

            def probe(layer, layer_inputs, outputs, context):
                inputs.append(layer_inputs)
                return outputs + perturbations[len(inputs) - 1]

            return self._forward(probe, state, x, y, sample_weight), inputs

        value, vjp, inputs = self._jax.vjp(loss, perturbations, has_aux=True)
        (gradients,) = vjp(self._jax.numpy.ones_like(value))
        return inputs, gradients


class _TorchGradientStep:
    """The PyTorch counterpart of `_GradientStep`: one eager forward pass in which the
    probe adds a zero perturbation (`requires_grad`) to every DCTpS linear output, then
    `torch.autograd.grad` of the loss w.r.t. the perturbations (the model's own `.grad`
    fields are left untouched)."""

    def __init__(self, model, layers):
        self.model = model
        self.layers = layers
        self.owners = None
        self.contexts = None

    def __call__(self, x, y, sample_weight):
        import torch

        records = []

        def probe(layer, inputs, outputs, context):
            perturbation = torch.zeros_like(outputs, requires_grad=True)
            records.append((id(layer), inputs.detach(), perturbation, context))
            return outputs + perturbation

        with torch.enable_grad():
            with _probing(self.layers, probe):
                y_pred = self.model(x, training=True)
            loss = self.model.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            perturbations = [perturbation for _, _, perturbation, _ in records]
            gradients = torch.autograd.grad(loss, perturbations, allow_unused=True)
        self.owners = [owner for owner, _, _, _ in records]
        self.contexts = [context for _, _, _, context in records]
        inputs = [inputs for _, inputs, _, _ in records]
        gradients = [
            torch.zeros_like(p) if g is None else g for g, p in zip(gradients, perturbations)
        ]
        return inputs, gradients, self.contexts


def _gradient_step(model, layers):
    if BACKEND == "tensorflow":
        return _GradientStep(model, layers)
    if BACKEND == "jax":
        return _JaxGradientStep(model, layers)
    if BACKEND == "torch":
        return _TorchGradientStep(model, layers)
    raise ValueError(
        "DynamicSparsity(method='rigl') supports the tensorflow, jax and torch backends; "
        f"KERAS_BACKEND is {BACKEND!r}."
    )


def _sampled_dense_gradient(inputs, gradients, rows, cols, block_elements):
    """`sum_batch inputs[:, rows] * gradients[:, cols]` in chunks of the candidates."""
    inputs = ops.reshape(inputs, (-1, ops.shape(inputs)[-1]))
    gradients = ops.reshape(gradients, (-1, ops.shape(gradients)[-1]))
    batch = max(1, int(ops.shape(inputs)[0] or 1))
    chunk = max(1, block_elements // batch)
    scores = []
    for start in range(0, len(rows), chunk):
        picked = ops.take(inputs, rows[start:start + chunk], axis=1) * ops.take(
            gradients, cols[start:start + chunk], axis=1
        )
        scores.append(ops.convert_to_numpy(ops.sum(picked, axis=0)))
    return np.concatenate(scores)


class RigL(DynamicSparsity):
    """`DynamicSparsity(method="rigl", ...)`: regrow where the dense gradient is largest.

    Args:
        data: The batches `(x, y)` the dense gradient is measured on.
        **kwargs: Any other argument of `DynamicSparsity`.

    Example:

    >>> data = [(np.ones((4, 4)), np.ones((4, 2)))] * 2
    >>> RigL(data, update_every=50).method
    'rigl'
    """

    def __init__(self, data, **kwargs):
        super().__init__("rigl", data=data, **kwargs)


class SET(DynamicSparsity):
    """`DynamicSparsity(method="set", ...)`: regrow at random free positions.

    Args:
        **kwargs: Any argument of `DynamicSparsity` but `method` and `data`.

    Example:

    >>> SET(update_every=50, drop_fraction=0.3).method
    'set'
    """

    def __init__(self, **kwargs):
        super().__init__("set", **kwargs)

