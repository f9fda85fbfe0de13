"""Multi-worker training: a custom loop under `tf.distribute` strategies.

Keras 3's `model.fit` does not run under `tf.distribute.MultiWorkerMirroredStrategy`
(keras-team/keras#20585: `Attempt to convert a value (PerReplica...)`). A custom
training loop under the same strategy works with Keras layers, DCTpS layers
included. `fit_multi_worker` is that loop: it trains a compiled Keras model on
global batches split over all replicas of all workers, writes a metrics CSV
like `keras.callbacks.CSVLogger`, checkpoints every epoch and resumes from the
last checkpoint when it is rerun.

Example (run the same script on every worker, each with its own `TF_CONFIG`,
see `examples/multi_worker.py`)::

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # first TF call
    train = make_train_dataset(x, y, batch_size=64, seed=0)   # same on all workers

    def build():
        model = keras.Sequential([keras.Input((64,)), DCTSparseDense(10)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
        return model

    result = fit_multi_worker(
        strategy, build, train, epochs=5,
        checkpoint_dir=worker_directory("run", strategy) + "/checkpoints",
        metrics={"accuracy": keras.metrics.sparse_categorical_accuracy},
    )
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import sys
import time

import keras
import tensorflow as tf

from keras_dctsparse import atomic

__all__ = [
    "FitResult",
    "cluster_task",
    "fit_multi_worker",
    "per_example_loss",
    "worker_directory",
]


@dataclasses.dataclass
class FitResult:
    """What `fit_multi_worker` returns.

    Attributes:
        model: The trained model (its variables live under the strategy).
        history: `{metric name: [value per epoch]}` for the epochs run now.
        initial_epoch: The epoch training started from (0, or the number of
            epochs in the checkpoint it resumed from).
        task_type: This worker's task type (`"worker"`, `"chief"`) or None
            without a cluster.
        task_id: This worker's index in its task type (0 without a cluster).
        is_chief: Whether this worker writes the shared outputs.
    """

    model: keras.Model
    history: dict
    initial_epoch: int
    task_type: str | None
    task_id: int
    is_chief: bool


def cluster_task(strategy):
    """`(task_type, task_id, is_chief)` of this process in `strategy`'s cluster.

    The chief is the `"chief"` task if the cluster has one, else worker 0.
    Strategies without a cluster (one process) give `(None, 0, True)`.

    Args:
        strategy: A `tf.distribute.Strategy`.

    Returns:
        A tuple `(task_type, task_id, is_chief)`.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return None, 0, True
    task_id = int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return task_type, task_id, is_chief


def worker_directory(base, strategy):
    """`base` on the chief, `base/worker-<index>` on every other worker.

    Args:
        base: The folder of the run.
        strategy: A `tf.distribute.Strategy`.

    Returns:
        This worker's folder (not created).
    """
    task_type, task_id, is_chief = cluster_task(strategy)
    if is_chief:
        return base
    name = f"worker-{task_id}" if task_type == "worker" else f"{task_type}-{task_id}"
    return os.path.join(base, name)


def per_example_loss(loss):
    """The unreduced (one value per example) form of a Keras loss.

    Args:
        loss: What `model.compile(loss=...)` got: a `keras.losses.Loss`, a
            loss name or a function `f(y_true, y_pred)`.

    Returns:
        A function `f(y_true, y_pred)` returning one loss per example.

    Raises:
        ValueError: If `loss` is None or a dict/list (several outputs).
    """
    if loss is None or isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            "fit_multi_worker needs a model compiled with one loss; received "
            f"loss={loss!r}."
        )
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        return loss.call
    return loss


_CHECKPOINT = re.compile(r"-(\d+)$")


def _checkpoint_epochs(manager):
    """`{epochs done: checkpoint path}` of the checkpoints in `manager`."""
    found = {}
    for path in manager.checkpoints:
        match = _CHECKPOINT.search(path)
        if match:
            found[int(match.group(1))] = path
    return found


def _agreed_epoch(strategy, local_epoch):
    """The smallest checkpointed epoch over all workers (they all restore it)."""
    value = tf.constant([local_epoch], tf.int64)

    @tf.function
    def gather():
        per_replica = strategy.run(lambda: tf.identity(value))
        return tf.reduce_min(strategy.gather(per_replica, axis=0))

    return int(gather().numpy())


def _read_csv_rows(path, before_epoch):
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as file:
        return [row for row in csv.DictReader(file) if int(row["epoch"]) < before_epoch]


def _write_csv(path, rows):
    fields = ["epoch"] + sorted({key for row in rows for key in row} - {"epoch"})
    lines = [",".join(fields)]
    for row in rows:
        lines.append(",".join(str(row.get(field, "")) for field in fields))
    atomic.write_text(path, "\n".join(lines) + "\n")


def _summed_statistics(model, loss_fn, metric_fns, x, y, training):
    predictions = model(x, training=training)
    per_example = loss_fn(y, predictions)
    sums = [tf.reduce_sum(tf.cast(per_example, tf.float32))]
    sums += [tf.reduce_sum(tf.cast(fn(y, predictions), tf.float32)) for fn in metric_fns]
    count = tf.cast(tf.shape(per_example)[0], tf.float32)
    return per_example, sums, count


def fit_multi_worker(
    strategy,
    build_model,
    train_data,
    epochs,
    checkpoint_dir,
    *,
    metrics=None,
    validation_data=None,
    callbacks=None,
    csv_path=None,
    verbose=1,
):
    """Trains a Keras model with a custom loop under a `tf.distribute` strategy.

    Made for `tf.distribute.MultiWorkerMirroredStrategy` (which Keras 3's
    `fit` does not support) and usable with any strategy. Every worker runs
    the same call. Each global batch of `train_data` is split over all
    replicas; the loss is the sum of the per-example losses over the global
    batch divided by its size (plus the model's regularization losses), so
    the update equals one process training on the same global batches.
    Per-epoch `loss` and `metrics` are means over the epoch's examples, as in
    `model.fit`. After every epoch each worker saves a checkpoint (model,
    optimizer, epoch) to `checkpoint_dir`; a rerun of all workers restores
    the latest epoch checkpointed by every worker and trains the remaining
    epochs (the data order of a resumed epoch is that of a fresh pipeline).

    Args:
        strategy: The `tf.distribute.Strategy`. Create it before any other
            TensorFlow call (MultiWorkerMirroredStrategy requires that).
        build_model: A function without arguments returning a model compiled
            with an optimizer and one loss; it is called inside
            `strategy.scope()`.
        train_data: A `tf.data.Dataset` of global `(x, y)` batches, identical
            on every worker (same data, same shuffle seed).
        epochs: Total number of epochs (including those of a resumed run).
        checkpoint_dir: This worker's checkpoint folder (workers must not
            share one: see `worker_directory`).
        metrics: Optional `{name: fn(y_true, y_pred) -> per-example values}`,
            for example `{"accuracy": keras.metrics.sparse_categorical_accuracy}`.
        validation_data: Optional `tf.data.Dataset` of `(x, y)` batches,
            evaluated by every worker after each epoch (`val_` columns).
        callbacks: Optional Keras callbacks; they get `on_train_begin/end`,
            `on_epoch_begin/end` (with the epoch's logs) and
            `on_train_batch_end` (without logs).
        csv_path: Optional path of a CSV of per-epoch logs (like
            `keras.callbacks.CSVLogger`); on resume, rows of the epochs being
            redone are dropped.
        verbose: 0 silent, 1 or 2 one line per epoch.

    Returns:
        A `FitResult`.

    Example:

    >>> strategy = tf.distribute.get_strategy()   # or MultiWorkerMirroredStrategy()
    >>> def build():
    ...     model = keras.Sequential([keras.Input((4,)), DCTSparseDense(3)])
    ...     model.compile("sgd", "mse")
    ...     return model
    >>> data = tf.data.Dataset.from_tensor_slices((np.ones((8, 4)), np.ones((8, 3)))).batch(4)
    >>> import tempfile
    >>> result = fit_multi_worker(strategy, build, data, 2, tempfile.mkdtemp(), verbose=0)
    >>> len(result.history["loss"]), result.is_chief
    (2, True)
    """
    metrics = dict(metrics or {})
    metric_names = list(metrics)
    metric_fns = [metrics[name] for name in metric_names]
    task_type, task_id, is_chief = cluster_task(strategy)
    prefix = f"[{task_type} {task_id}] " if task_type else ""

    with strategy.scope():
        model = build_model()
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError("build_model must return a model compiled with an optimizer.")
        loss_fn = per_example_loss(getattr(model, "loss", None))
        optimizer.build(model.trainable_variables)
        epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_counter)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
    saved = _checkpoint_epochs(manager)
    initial_epoch = _agreed_epoch(strategy, max(saved, default=0))
    if initial_epoch > 0:
        checkpoint.restore(saved[initial_epoch]).assert_existing_objects_matched()
        if verbose:
            print(f"{prefix}Resuming from {saved[initial_epoch]} (epoch {initial_epoch})")

    def replica_step(x, y):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            per_example, sums, count = _summed_statistics(
                model, loss_fn, metric_fns, x, y, training=True
            )
            global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
            loss = sums[0] / tf.maximum(global_count, 1.0)
            if model.losses:
                loss += tf.add_n(model.losses) / context.num_replicas_in_sync
        variables = model.trainable_variables
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        return [count] + sums

    @tf.function
    def train_step(batch):
        x, y = batch
        results = strategy.run(replica_step, args=(x, y))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    @tf.function
    def evaluate_step(x, y):
        _, sums, count = _summed_statistics(model, loss_fn, metric_fns, x, y, training=False)
        return [count] + sums

    def evaluate(dataset):
        totals = None
        for x, y in dataset:
            step = [v.numpy() for v in evaluate_step(x, y)]
            totals = step if totals is None else [a + b for a, b in zip(totals, step)]
        count = max(totals[0], 1.0)
        return {name: float(total / count) for name, total in zip(["loss"] + metric_names, totals[1:])}

    callback_list = keras.callbacks.CallbackList(list(callbacks or []), model=model)
    distributed = strategy.experimental_distribute_dataset(train_data)
    rows = _read_csv_rows(csv_path, initial_epoch) if csv_path else []
    history = {}
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        started = time.time()
        callback_list.on_epoch_begin(epoch)
        totals = None
        for step, batch in enumerate(distributed):
            values = train_step(batch)
            totals = values if totals is None else [a + b for a, b in zip(totals, values)]
            callback_list.on_train_batch_end(step)
        totals = [float(v.numpy()) for v in totals]
        count = max(totals[0], 1.0)
        logs = {name: total / count for name, total in zip(["loss"] + metric_names, totals[1:])}
        if validation_data is not None:
            logs.update({f"val_{k}": v for k, v in evaluate(validation_data).items()})
        epoch_counter.assign(epoch + 1)
        manager.save(checkpoint_number=epoch + 1)
        if csv_path:
            rows.append({"epoch": epoch, **logs})
            _write_csv(csv_path, rows)
        for name, value in logs.items():
            history.setdefault(name, []).append(value)
        if verbose:
            text = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            print(
                f"{prefix}Epoch {epoch + 1}/{epochs} - {time.time() - started:.1f}s - {text}",
                flush=True,
            )
        callback_list.on_epoch_end(epoch, logs)
    callback_list.on_train_end()
    sys.stdout.flush()
    return FitResult(model, history, initial_epoch, task_type, task_id, is_chief)
