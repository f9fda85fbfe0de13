"""The `dctsparse train` command: train one model and write its outputs.

A run writes `OUT/results.json`, `metrics.csv`, `sparsity_report.md`,
`model.keras`, `saved_model/`, `run_config.json` and TensorBoard logs; an
interrupted run resumes from `OUT/backup` (or `OUT/checkpoints` with
`--distribute multi-worker`) when rerun with the same arguments.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shlex
import shutil
import time

from keras_dctsparse.experiments import common
from keras_dctsparse.experiments import runs
from keras_dctsparse.experiments.common import CLIError
from keras_dctsparse.experiments.recipe import DEFAULT_SPARSE_TRAINING

__all__ = [
    "build_model",
    "compile_model",
    "train",
]

# Test-only hook: extra Keras callbacks appended to every `train` run.
_EXTRA_CALLBACKS: list = []


def _optimizer(name, lr, schedule="constant", total_steps=None):
    """The `--optimizer` with learning rate `lr` (cosine decay over `total_steps`)."""
    import keras

    if schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps)

    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(lr)
    return keras.optimizers.SGD(lr, momentum=0.9)


def build_model(args, dataset):
    """The zoo model of `args` (`--model`, `--density`, ...) for `dataset`, else `CLIError`."""
    import tensorflow as tf

    models = importlib.import_module("keras_dctsparse.models")
    try:
        return models.build_model(
            args.model,
            input_shape=dataset.input_shape,
            num_classes=dataset.num_classes,
            density=args.density,
            distribution=args.distribution,
            offset=None if args.offset == "none" else args.offset,
            seed=args.seed,
        )
    except (ValueError, tf.errors.InvalidArgumentError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CLIError(
            f"--model {args.model} cannot be built for --dataset {args.dataset} (input "
            f"shape {tuple(dataset.input_shape)}): {first}",
            status=2,
        ) from None


def compile_model(model, args, total_steps):
    """Compiles `model` with the run's optimizer, schedule, loss and metrics."""
    import keras

    compile_args = dict(
        optimizer=_optimizer(args.optimizer, args.lr, args.schedule, total_steps),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=not common.outputs_probabilities(model)
        ),
        metrics=["accuracy"],
        jit_compile={"auto": "auto", "on": True, "off": False}[
            getattr(args, "jit_compile", "auto")
        ],
    )
    model.compile(**compile_args)
    return model


def _tensorboard_callback(logs_dir, verbose, **kwargs):
    import keras

    if importlib.util.find_spec("tensorboard") is None:
        if verbose:
            print(
                "note: tensorboard is not installed, skipping the TensorBoard logs "
                "(pip install 'keras_dctsparse[cli]' or pip install tensorboard)"
            )
        return []
    return [keras.callbacks.TensorBoard(logs_dir, **kwargs)]


def _multi_worker_strategy():
    import tensorflow as tf

    if not os.environ.get("TF_CONFIG"):
        raise CLIError(
            "--distribute multi-worker needs TF_CONFIG (the cluster and this worker's "
            "task); see the README's multi-worker section",
            status=2,
        )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (ValueError, RuntimeError) as error:
        raise CLIError(f"cannot start MultiWorkerMirroredStrategy: {error}", status=2) from None


def train(args):
    """Runs `train`; returns the dict written to results.json (None on non-chief workers)."""
    started = time.time()
    # MultiWorkerMirroredStrategy must exist before any other TensorFlow call.
    multi_worker = getattr(args, "distribute", "none") == "multi-worker"
    if getattr(args, "sparse_training", "static") is None:
        args.sparse_training = "static" if multi_worker else DEFAULT_SPARSE_TRAINING
    sparse_training = getattr(args, "sparse_training", "static")
    if multi_worker and sparse_training != "static":
        raise CLIError(
            f"--sparse-training {sparse_training} is not supported with --distribute "
            "multi-worker (its custom training loop does not run DynamicSparsity); use "
            "--sparse-training static or train in one process",
            status=2,
        )
    strategy = _multi_worker_strategy() if multi_worker else None

    import keras

    from keras_dctsparse.experiments import data
    from keras_dctsparse.callbacks import EnforceSparsity
    from keras_dctsparse.training import cluster_task, worker_directory

    is_chief = strategy is None or cluster_task(strategy)[2]
    base_out = common.prepare_out(args.out)
    out = base_out
    if strategy is not None:
        out = common.prepare_out(worker_directory(base_out, strategy))
    config = runs.run_config(args)
    state = common.check_run_config(out, config)

    keras.utils.set_random_seed(args.seed)
    dataset = common.load_data(args)
    x_train, y_train = dataset.x_train, dataset.y_train
    if args.train_limit is not None:
        x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]
    steps_per_epoch = -(-len(x_train) // args.batch_size)

    def build():
        return compile_model(build_model(args, dataset), args, steps_per_epoch * args.epochs)

    backup_dir = os.path.join(out, "backup" if strategy is None else "checkpoints")
    resuming = os.path.isdir(backup_dir) and bool(os.listdir(backup_dir))
    elapsed_before = float(state.get("elapsed_s", 0.0)) if (state and resuming) else 0.0
    logs_dir = os.path.join(out, "logs")
    train_data = data.make_train_dataset(
        x_train, y_train, args.batch_size, augment=args.augment, seed=args.seed
    )
    dynamic = _dynamic_sparsity(args, train_data, steps_per_epoch * args.epochs)
    counted_before = {}
    if dynamic is not None and state and resuming:
        counted_before = {key: int(state.get(key, 0)) for key in _UPDATE_COUNTS}
    store_elapsed = runs.elapsed_callback(
        out, config, started, elapsed_before,
        extra_state=None if dynamic is None else (
            lambda: _update_counts(dynamic, counted_before)
        ),
    )
    validation = None
    if dataset.x_val is not None:
        validation = data.make_eval_dataset(dataset.x_val, dataset.y_val, args.batch_size)

    if strategy is None:
        model = build()
        callbacks = [
            EnforceSparsity(),
            # Before BackupAndRestore: the backup written at an epoch's end holds the
            # positions moved at that step (DynamicSparsity reads the restored step count
            # at the first epoch begin, after BackupAndRestore's on_train_begin).
            *([] if dynamic is None else [dynamic]),
            keras.callbacks.BackupAndRestore(backup_dir),
            keras.callbacks.CSVLogger(os.path.join(out, "metrics.csv"), append=resuming),
            store_elapsed,
            *_tensorboard_callback(logs_dir, args.verbose),
            *_EXTRA_CALLBACKS,
        ]
        if resuming and args.verbose:
            print(f"Resuming from {backup_dir}")
        model.fit(
            train_data,
            epochs=args.epochs,
            validation_data=validation,
            callbacks=callbacks,
            verbose=args.verbose,
            shuffle=False,  # the dataset shuffles itself
        )
    else:
        from keras_dctsparse.training import fit_multi_worker

        callbacks = [EnforceSparsity(), store_elapsed]
        if is_chief:
            callbacks += _tensorboard_callback(logs_dir, args.verbose, write_graph=False)
        result = fit_multi_worker(
            strategy,
            build,
            train_data,
            args.epochs,
            backup_dir,
            metrics={"accuracy": keras.metrics.sparse_categorical_accuracy},
            validation_data=validation,
            callbacks=callbacks + _EXTRA_CALLBACKS,
            csv_path=os.path.join(out, "metrics.csv"),
            verbose=args.verbose,
        )
        resuming = result.initial_epoch > 0
        if not is_chief:
            wall = elapsed_before + time.time() - started
            runs.write_run_state(out, config, wall, finished=True)
            shutil.rmtree(backup_dir, ignore_errors=True)
            if args.verbose:
                print(f"worker done: metrics in {os.path.join(out, 'metrics.csv')}")
            return None
        model = _plain_copy(result.model, build)

    sparse = {"method": sparse_training}
    if dynamic is not None:
        sparse.update(
            update_every=dynamic.update_every,
            drop_fraction=dynamic.drop_fraction,
            end_fraction=args.end_fraction,
            end_step=dynamic.end_step,
            **_update_counts(dynamic, counted_before),
        )
    return _finish_run(args, model, dataset, out, config, started, elapsed_before, resuming,
                       backup_dir if strategy is not None else None, sparse)


# Counts of a dynamic sparse run, stored in run_config.json so that a resumed run adds
# them up: updates (steps at which positions moved) and positions moved (summed over
# layers and updates).
_UPDATE_COUNTS = ("position_updates", "positions_moved")


def _update_counts(callback, before):
    """`_UPDATE_COUNTS` of `callback.updates` plus those of earlier parts of the run."""
    steps = {update["step"] for update in callback.updates}
    moved = sum(update["moved"] for update in callback.updates)
    return {
        "position_updates": before.get("position_updates", 0) + len(steps),
        "positions_moved": before.get("positions_moved", 0) + moved,
    }


def _dynamic_sparsity(args, train_data, total_steps):
    """The `DynamicSparsity` callback of `--sparse-training rigl/set` (None for static).

    RigL measures the dense gradient on batches of the training pipeline. The end
    step is `--end-fraction` of all training steps (at least 1).
    """
    method = getattr(args, "sparse_training", "static")
    if method == "static":
        return None
    from keras_dctsparse.dynamic_sparsity import DynamicSparsity

    return DynamicSparsity(
        method,
        data=train_data if method == "rigl" else None,
        update_every=args.update_every,
        drop_fraction=args.drop_fraction,
        end_step=max(1, int(args.end_fraction * total_steps)),
        seed=args.seed,
    )


def _plain_copy(distributed_model, build):
    """The trained model rebuilt outside the strategy (weights and optimizer state)."""
    model = build()
    model.set_weights(distributed_model.get_weights())
    model.optimizer.build(model.trainable_variables)
    source = distributed_model.optimizer.variables
    if len(source) == len(model.optimizer.variables):
        for target, value in zip(model.optimizer.variables, source):
            target.assign(value.numpy())
    return model


def _finish_run(args, model, dataset, out, config, started, elapsed_before, resuming,
                checkpoints=None, sparse_training=None):
    """Evaluates on the test set and writes the outputs of a finished run."""
    from keras_dctsparse.experiments import data
    from keras_dctsparse.report import sparsity_report

    test = data.make_eval_dataset(dataset.x_test, dataset.y_test, args.batch_size)
    metrics = model.evaluate(test, verbose=0, return_dict=True)
    report = sparsity_report(model)
    wall = elapsed_before + time.time() - started
    used = {k: v for k, v in vars(args).items() if k not in ("func", "command_line")}
    used.update(config)
    results = {
        "test_accuracy": float(metrics["accuracy"]),
        "test_loss": float(metrics["loss"]),
        "total_nnz": int(report.total.nnz),
        "total_dense_params": int(report.total.dense_params),
        "wall_time_s": wall,
        "resumed": resuming,
        "sparse_training": sparse_training or {"method": "static"},
        "args": used,
    }
    common.write_text(os.path.join(out, "sparsity_report.md"), report.to_table() + "\n")
    common.atomic_save_keras(model, os.path.join(out, "model.keras"))
    common.export_savedmodel(model, os.path.join(out, "saved_model"), check=False)
    common.write_text(os.path.join(out, "results.json"), json.dumps(results, indent=2) + "\n")
    counts = {k: v for k, v in results["sparse_training"].items() if k in _UPDATE_COUNTS}
    runs.write_run_state(out, config, wall, finished=True, **counts)
    if checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    print(
        f"test accuracy: {results['test_accuracy']:.4f}  test loss: "
        f"{results['test_loss']:.4f}  nnz: {results['total_nnz']}  "
        f"wall time: {wall:.1f}s  -> {out}"
    )
    if "position_updates" in results["sparse_training"]:
        print(
            f"{results['sparse_training']['method']}: "
            f"{results['sparse_training']['position_updates']} position updates, "
            f"{results['sparse_training']['positions_moved']} positions moved"
        )
    logs_dir = os.path.join(out, "logs")
    if os.path.isdir(logs_dir):
        print(f"TensorBoard: tensorboard --logdir {shlex.quote(logs_dir)}")
    return results
