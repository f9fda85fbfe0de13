"""`dctsparse` command line: train, evaluate, export and sweep DCTpS models.

Usage (also ``python -m keras_dctsparse ...``)::

    dctsparse train --model lenet300100 --dataset mnist --data-dir DIR \\
        --density 0.01 --offset dct --epochs 10 --out runs/lenet_d001
    dctsparse evaluate --model-path runs/lenet_d001/model.keras --dataset mnist --data-dir DIR
    dctsparse export --model-path runs/lenet_d001/model.keras --format tflite --output lenet.tflite
    dctsparse sweep --model lenet300100 --dataset digits --densities 1 0.1 0.01 \\
        --offsets dct none --sparse-trainings static rigl --seeds 0 1 2 --epochs 5 \\
        --out runs/sweep

``--density 1 --offset none`` is the dense baseline. ``--sparse-training rigl``
(or ``set``) moves the positions of S during training (see
``keras_dctsparse.DynamicSparsity``; ``--update-every``, ``--drop-fraction``,
``--end-fraction``); ``static`` keeps them where they were drawn. Training can be
interrupted and resumed: rerunning the same ``train`` command with the same
``--out`` continues from ``OUT/backup`` (Keras ``BackupAndRestore``; with
``--distribute multi-worker``, from ``OUT/checkpoints``). The run's arguments
are stored in ``OUT/run_config.json``; a rerun with other arguments stops
with an error naming them.

TensorFlow is imported only after the arguments are parsed, with its
start-up logging silenced unless ``TF_CPP_MIN_LOG_LEVEL`` is set.

Exit status: 0 on success, 2 for bad arguments or an unavailable dataset,
1 for other errors (for example a model that cannot be exported).
"""

from __future__ import annotations

import contextlib
import errno

import argparse
import importlib
import importlib.util
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time

from keras_dctsparse.experiments import runs

MODELS = ("lenet300100", "lenet5", "vgg19", "resnet18", "resnet50", "mobilenetv2")
DISTRIBUTIONS = ("uniform", "epl", "epf", "erk")
OFFSETS = ("dct", "none")
OPTIMIZERS = ("adam", "sgd", "adamw")
SCHEDULES = ("constant", "cosine")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")
DISTRIBUTE = ("none", "multi-worker")

# Sparse training (keras_dctsparse.DynamicSparsity): how the positions of S move
# during training. The defaults of `train` and `sweep` are these constants.
SPARSE_TRAININGS = ("static", "rigl", "set")

# The default recipe: the best found for the zoo's LeNets on an MNIST validation split
# (benchmarks/mnist_recipes.py; README "Results: MNIST"). `train` and `sweep` use these.
DEFAULT_DISTRIBUTION = "epl"
DEFAULT_OPTIMIZER = "adam"
DEFAULT_LR = 1e-2
DEFAULT_SCHEDULE = "cosine"
DEFAULT_SPARSE_TRAINING = "rigl"  # in one process; multi-worker training stays static
DEFAULT_UPDATE_EVERY = 50  # optimizer steps between position updates
DEFAULT_DROP_FRACTION = 0.5  # fraction of nonzeros moved per update at step 0 (cosine decay)
DEFAULT_END_FRACTION = 0.75  # fraction of all training steps after which positions stay fixed

# Test-only hook: extra Keras callbacks appended to every `train` run.
_EXTRA_CALLBACKS: list = []


class CLIError(Exception):
    """An error reported to the user as one message, with an exit status."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- arguments


def _density(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--density must be a number in (0, 1], got {text!r}"
        ) from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise argparse.ArgumentTypeError(f"--density must be in (0, 1], got {text}")
    return value


def _densities(text):
    try:
        return _density(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(
            str(error).replace("--density", "--densities")
        ) from None


def _positive_int(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a positive integer, got {text!r}"
            ) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(
                f"{name} must be a positive integer, got {text}"
            )
        return value

    return parse


def _positive_float(name):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a positive number, got {text!r}"
            ) from None
        if not value > 0 or math.isinf(value):
            raise argparse.ArgumentTypeError(f"{name} must be a positive number, got {text}")
        return value

    return parse


def _split(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--validation-split must be a number in [0, 1), got {text!r}"
        ) from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"--validation-split must be in [0, 1), got {text}"
        )
    return value


def _fraction(name, low_open):
    """Parser of a number in [0, 1] (`low_open=False`) or (0, 1] (`low_open=True`)."""
    interval = "(0, 1]" if low_open else "[0, 1]"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a number in {interval}, got {text!r}"
            ) from None
        if math.isnan(value) or not (
            (0.0 < value if low_open else 0.0 <= value) and value <= 1.0
        ):
            raise argparse.ArgumentTypeError(f"{name} must be in {interval}, got {text}")
        return value

    return parse


def _add_data_args(parser, need_dataset=True):
    parser.add_argument(
        "--dataset", choices=DATASETS, required=need_dataset, help="dataset name"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder with the original dataset files (MNIST IDX / CIFAR binary); "
        "without it TensorFlow Datasets is used (must be prepared unless --download)",
    )
    parser.add_argument(
        "--tfds-data-dir", default=None, help="TFDS data directory (default: TFDS's own)"
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="let TFDS download and prepare a missing dataset (needs network)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int("--batch-size"), default=128, help="batch size"
    )


def _add_train_args(parser, sweep=False):
    parser.add_argument("--model", required=True, choices=MODELS, help="architecture")
    _add_data_args(parser)
    if not sweep:
        parser.add_argument(
            "--density",
            type=_density,
            default=0.01,
            help="fraction of trainable kernel entries, in (0, 1] (1 with "
            "--offset none is the dense baseline; default 0.01)",
        )
        parser.add_argument("--offset", choices=OFFSETS, default="dct", help="offset")
        parser.add_argument("--seed", type=int, default=0, help="random seed")
        parser.add_argument(
            "--sparse-training",
            choices=SPARSE_TRAININGS,
            default=None,
            help="static: the positions of S stay where they were drawn; rigl: every "
            "--update-every steps drop the smallest-magnitude nonzeros of each layer and "
            "regrow as many where the dense gradient is largest (RigL); set: regrow at "
            f"random positions (SET) (default {DEFAULT_SPARSE_TRAINING}; static with "
            "--distribute multi-worker, which supports only static)",
        )
    parser.add_argument(
        "--update-every",
        type=_positive_int("--update-every"),
        default=DEFAULT_UPDATE_EVERY,
        help="rigl/set: optimizer steps between position updates "
        f"(default {DEFAULT_UPDATE_EVERY})",
    )
    parser.add_argument(
        "--drop-fraction",
        type=_fraction("--drop-fraction", low_open=False),
        default=DEFAULT_DROP_FRACTION,
        help="rigl/set: fraction of each layer's nonzeros moved per update, in [0, 1], "
        "decaying by a cosine from this value at step 0 to 0 at the end step "
        f"(default {DEFAULT_DROP_FRACTION})",
    )
    parser.add_argument(
        "--end-fraction",
        type=_fraction("--end-fraction", low_open=True),
        default=DEFAULT_END_FRACTION,
        help="rigl/set: fraction of all training steps after which the positions stay "
        f"fixed, in (0, 1] (default {DEFAULT_END_FRACTION})",
    )
    parser.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS,
        default=DEFAULT_DISTRIBUTION,
        help=f"how the density is spread over layers (default {DEFAULT_DISTRIBUTION})",
    )
    parser.add_argument("--epochs", type=_positive_int("--epochs"), default=10)
    parser.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=DEFAULT_OPTIMIZER,
        help=f"(default {DEFAULT_OPTIMIZER})",
    )
    parser.add_argument(
        "--lr", type=_positive_float("--lr"), default=DEFAULT_LR,
        help=f"learning rate (default {DEFAULT_LR:g})",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=DEFAULT_SCHEDULE,
        help="learning-rate schedule: constant, or cosine decay from --lr to 0 over "
        f"all training steps (default {DEFAULT_SCHEDULE})",
    )
    parser.add_argument(
        "--validation-split",
        type=_split,
        default=0.0,
        help="fraction of the training set held out for validation",
    )
    parser.add_argument("--augment", action="store_true", help="random crop + flip")
    parser.add_argument(
        "--jit-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="compile the whole train step with XLA: auto (Keras's rule: off on CPU), "
        "on, off (single-process training; the DCTpS layers' default kernels allow it)",
    )
    parser.add_argument(
        "--train-limit",
        type=_positive_int("--train-limit"),
        default=None,
        help="use only the first N training examples",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=None,
        help="Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch "
        "(default: 1 on a terminal, 2 when the output is redirected)",
    )
    if not sweep:
        parser.add_argument(
            "--distribute",
            choices=DISTRIBUTE,
            default="none",
            help="multi-worker: train with tf.distribute.MultiWorkerMirroredStrategy "
            "(workers from TF_CONFIG; run the same command on every worker); the "
            "chief writes OUT, worker i its metrics.csv to OUT/worker-i",
        )
    parser.add_argument("--out", required=True, help="output folder")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="dctsparse",
        description="Train, evaluate, export and sweep DCT-plus-sparse Keras models.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser(
        "train",
        help="train one model",
        description="Train one model. Writes OUT/results.json, metrics.csv, "
        "sparsity_report.md, model.keras, saved_model/, run_config.json and logs/ "
        "(TensorBoard: tensorboard --logdir OUT/logs). Rerunning an interrupted run "
        "with the same arguments resumes it; other arguments are refused.",
    )
    _add_train_args(train)

    evaluate = commands.add_parser("evaluate", help="test accuracy of a saved model")
    evaluate.add_argument("--model-path", required=True, help="a .keras file")
    _add_data_args(evaluate)

    export = commands.add_parser("export", help="export a saved model")
    export.add_argument("--model-path", required=True, help="a .keras file")
    export.add_argument("--format", required=True, choices=("savedmodel", "tflite"))
    export.add_argument("--output", required=True, help="destination path")
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output that is not a previous export "
        "(a previous SavedModel / TFLite export is replaced without it)",
    )
    export.add_argument(
        "--quantization",
        choices=("none", "float16", "dynamic_int8"),
        default="none",
        help="TFLite only: store float constants as float16, or the converter's "
        "dynamic-range int8 (see keras_dctsparse.export_tflite)",
    )
    export.add_argument(
        "--dct-constants",
        choices=("stored", "computed"),
        default="stored",
        help="TFLite only: store the fast DCT's O(N) tables in the file, or let the "
        "interpreter compute them on every call (smaller file for large layers, slower)",
    )
    export.add_argument(
        "--form",
        choices=("implicit", "built_once", "auto"),
        default="implicit",
        help="TFLite only: run D as a fast transform on every call (implicit), or build "
        "each layer's dense kernel once at the first call (built_once: dense-model speed, "
        "2 x 4 x n x m bytes of memory per layer), or built_once for the layers whose "
        "kernel fits --max-kernel-bytes (auto); see keras_dctsparse.export_tflite",
    )
    export.add_argument(
        "--max-kernel-bytes",
        type=int,
        default=None,
        help="TFLite only, --form auto: largest float32 dense kernel (bytes) of a layer "
        "built once (default 8 MiB)",
    )

    sweep = commands.add_parser(
        "sweep",
        help="train every density x offset x sparse training x seed and summarise",
        description="Train every combination of --densities x --offsets x "
        "--sparse-trainings x --seeds into OUT/d<density>_<offset>_s<seed> (static) or "
        "OUT/d<density>_<offset>_<sparse training>_s<seed> (rigl, set); density 1 is "
        "the dense baseline: offset none, static only. Then write OUT/results.md (one "
        "row per density, one column per variant: dense / DCTpS / DCTpS + RigL / ... / "
        "plain sparse final test accuracy, mean ± std (min-max) "
        "over the seeds), OUT/results.csv and OUT/accuracy.png (the plot needs "
        "matplotlib: pip install matplotlib; it is skipped with a note otherwise). "
        "Finished runs are not repeated when the sweep is rerun.",
    )
    _add_train_args(sweep, sweep=True)
    sweep.add_argument("--densities", type=_densities, nargs="+", required=True)
    sweep.add_argument("--offsets", choices=OFFSETS, nargs="+", default=["dct", "none"])
    sweep.add_argument(
        "--sparse-trainings",
        choices=SPARSE_TRAININGS,
        nargs="+",
        default=[DEFAULT_SPARSE_TRAINING],
        help="the --sparse-training variants to run at every density below 1 "
        f"(default {DEFAULT_SPARSE_TRAINING})",
    )
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0])
    return parser


# ---------------------------------------------------------------- helpers


def _load_data(args):
    from keras_dctsparse.experiments import data

    try:
        return data.load_dataset(
            args.dataset,
            args.data_dir,
            validation_split=getattr(args, "validation_split", 0.0),
            seed=getattr(args, "seed", 0),
            download=args.download,
            tfds_data_dir=args.tfds_data_dir,
        )
    except data.DatasetUnavailableError as error:
        raise CLIError(
            f"{error} On the command line: --data-dir DIR (original files), "
            "--tfds-data-dir DIR (prepared TFDS copy) or --download.",
            status=2,
        ) from None
    except FileNotFoundError as error:
        raise CLIError(f"{error} (check --data-dir)", status=2) from None
    except ValueError as error:  # corrupt or malformed dataset files
        raise CLIError(f"cannot read the {args.dataset} data: {error}", status=2) from None


def _optimizer(name, lr, schedule="constant", total_steps=None):
    import keras

    if schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps)

    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(lr)
    return keras.optimizers.SGD(lr, momentum=0.9)


def _outputs_probabilities(model):
    """Whether the model ends in a softmax (else its outputs are taken as logits)."""
    import keras

    layer = model.layers[-1] if getattr(model, "layers", None) else None
    if layer is None:
        return True
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") == "softmax"


def _atomic_save_keras(model, path):
    from keras_dctsparse import atomic

    atomic.write_file(path, lambda temporary: model.save(temporary, overwrite=True), ".keras")


def _export_savedmodel(model, path, overwrite=False, check=True):
    from keras_dctsparse import atomic

    if check:
        atomic.check_target(path, atomic.is_savedmodel, "a SavedModel", overwrite)
    atomic.replace_directory(path, lambda temporary: model.export(temporary, verbose=False))


def _write_text(path, text):
    from keras_dctsparse import atomic

    atomic.write_text(path, text)


def _load_model(path):
    import keras

    import keras_dctsparse

    keras_dctsparse._import_public_api()  # registers the layers with Keras

    if not os.path.exists(path):
        raise CLIError(f"--model-path {path!r} does not exist", status=2)
    try:
        return keras.saving.load_model(path)
    except Exception as error:
        raise CLIError(f"cannot load --model-path {path!r}: {error}") from error


# ---------------------------------------------------------------- commands


def _check_run_config(out, config):
    try:
        return runs.check_run_config(out, config)
    except runs.RunConfigError as error:
        raise CLIError(str(error), status=2) from None


def _prepare_out(path, name="--out"):
    """Creates the output folder `path`; clear errors for files and permissions."""
    out = os.path.abspath(path)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise CLIError(f"{name} {path!r} is an existing file, not a folder", status=2)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise CLIError(
            f"cannot create {name} {path!r}: {error.strerror or error}", status=2
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CLIError(f"{name} {path!r} is not writable", status=2)
    return out


def _build_model(args, dataset):
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


def _compile(model, args, total_steps):
    """Compiles `model` with the run's optimizer, schedule, loss and metrics."""
    import keras

    compile_args = dict(
        optimizer=_optimizer(args.optimizer, args.lr, args.schedule, total_steps),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=not _outputs_probabilities(model)
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
    base_out = _prepare_out(args.out)
    out = base_out if strategy is None else _prepare_out(worker_directory(base_out, strategy))
    config = runs.run_config(args)
    state = _check_run_config(out, config)

    keras.utils.set_random_seed(args.seed)
    dataset = _load_data(args)
    x_train, y_train = dataset.x_train, dataset.y_train
    if args.train_limit is not None:
        x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]
    steps_per_epoch = -(-len(x_train) // args.batch_size)

    def build():
        return _compile(_build_model(args, dataset), args, steps_per_epoch * args.epochs)

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
            keras.callbacks.BackupAndRestore(backup_dir),
            # After BackupAndRestore: on a resume it reads the restored step count.
            *([] if dynamic is None else [dynamic]),
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
            runs.write_run_state(out, config, elapsed_before + time.time() - started, finished=True)
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
    _write_text(os.path.join(out, "sparsity_report.md"), report.to_table() + "\n")
    _atomic_save_keras(model, os.path.join(out, "model.keras"))
    _export_savedmodel(model, os.path.join(out, "saved_model"), check=False)
    _write_text(os.path.join(out, "results.json"), json.dumps(results, indent=2) + "\n")
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


def evaluate(args):
    from keras_dctsparse.experiments import data

    model = _load_model(args.model_path)
    dataset = _load_data(args)
    expected = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if expected is not None and tuple(dataset.input_shape) != expected:
        raise CLIError(
            f"--model-path {args.model_path!r} takes inputs of shape {expected}, but "
            f"--dataset {args.dataset} has shape {tuple(dataset.input_shape)}",
            status=2,
        )
    if not getattr(model, "compiled", False) or model.loss is None:
        import keras

        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=not _outputs_probabilities(model)
            ),
            metrics=["accuracy"],
        )
    test = data.make_eval_dataset(dataset.x_test, dataset.y_test, args.batch_size)
    metrics = model.evaluate(test, verbose=0, return_dict=True)
    accuracy = float(metrics.get("accuracy", metrics.get("compile_metrics", float("nan"))))
    print(f"test accuracy: {accuracy:.4f}")
    return accuracy


def _check_export_target(args):
    from keras_dctsparse import atomic

    output = args.output
    if args.format == "tflite" and os.path.isdir(output):
        raise CLIError(
            f"--output {output!r} is a folder; TFLite export writes one file "
            f"(for example {os.path.join(output, 'model.tflite')!r})",
            status=2,
        )
    ours, kind = (
        (atomic.is_savedmodel, "a SavedModel") if args.format == "savedmodel"
        else (atomic.is_tflite, "a TFLite file")
    )
    try:
        atomic.check_target(output, ours, kind, getattr(args, "overwrite", False))
    except atomic.OutputExistsError as error:
        raise CLIError(f"--output {error}", status=2) from None


def export(args):
    if args.format == "savedmodel" and (
        args.quantization != "none"
        or args.dct_constants != "stored"
        or args.form != "implicit"
        or args.max_kernel_bytes is not None
    ):
        raise CLIError(
            "--quantization, --dct-constants, --form and --max-kernel-bytes apply to "
            "--format tflite only",
            status=2,
        )
    _check_export_target(args)
    from keras_dctsparse.export.tflite import export_tflite

    model = _load_model(args.model_path)
    try:
        if args.format == "savedmodel":
            _export_savedmodel(model, args.output, check=False)
        else:
            parent = os.path.dirname(os.path.abspath(args.output))
            os.makedirs(parent, exist_ok=True)
            if os.path.lexists(args.output) and not os.path.isfile(args.output):
                raise CLIError(f"--output {args.output!r} is not a file", status=2)
            quantization = None if args.quantization == "none" else args.quantization
            bound = {}
            if args.max_kernel_bytes is not None:
                bound["max_kernel_bytes"] = args.max_kernel_bytes
            export_tflite(
                model,
                args.output,
                quantization=quantization,
                dct_constants=args.dct_constants,
                form=args.form,
                **bound,
            )
    except (NotImplementedError, ValueError) as error:
        raise CLIError(f"export to {args.format} failed: {error}") from error
    print(f"exported {args.format} to {args.output}")


def _run_name(density, offset, seed, sparse_training="static"):
    """`d<density>_<offset>_s<seed>`, with `_<sparse training>` before `_s` unless static."""
    method = "" if sparse_training == "static" else f"_{sparse_training}"
    return f"d{density:g}_{offset}{method}_s{seed}"


def _sweep_grid(densities, offsets, seeds, sparse_trainings=("static",)):
    """The `(density, offset, sparse_training, seed)` runs of a sweep.

    Density 1 is the dense baseline: it runs once per seed with offset "none"
    and static positions (a DCT offset on a fully dense S is neither the
    baseline nor sparse, and a dense S has no positions to move), whatever
    `offsets` and `sparse_trainings` say.
    """
    grid = []
    for density in densities:
        if density == 1.0:
            variants = [("none", "static")]
        else:
            variants = [(o, t) for o in offsets for t in sparse_trainings]
        for offset, method in variants:
            grid.extend((density, offset, method, seed) for seed in seeds)
    return grid


def sweep(args):
    import keras

    from keras_dctsparse.experiments import tables as sweep_tables

    out = _prepare_out(args.out)
    rows = []
    grid = _sweep_grid(
        args.densities, args.offsets, args.seeds,
        getattr(args, "sparse_trainings", [DEFAULT_SPARSE_TRAINING]),
    )
    for density, offset, method, seed in grid:
        run_dir = os.path.join(out, _run_name(density, offset, seed, method))
        result_path = os.path.join(run_dir, "results.json")
        run_args = argparse.Namespace(**vars(args))
        for name in ("densities", "offsets", "seeds", "sparse_trainings"):
            if hasattr(run_args, name):
                delattr(run_args, name)
        run_args.density, run_args.offset, run_args.seed = density, offset, seed
        run_args.sparse_training = method
        run_args.out, run_args.distribute = run_dir, "none"
        if os.path.isdir(run_dir):
            _check_run_config(run_dir, runs.run_config(run_args))
        if os.path.exists(result_path):
            with open(result_path) as file:
                result = json.load(file)
            print(f"[sweep] {run_dir}: done already")
        else:
            extra = "" if method == "static" else f" sparse_training={method}"
            print(f"[sweep] density={density:g} offset={offset}{extra} seed={seed}")
            keras.backend.clear_session()
            result = train(run_args)
        rows.append((density, offset, seed, result, method))
    summary = sweep_tables.summarise(rows)
    total_run_time = sum(row[3]["wall_time_s"] for row in rows)
    sweep_tables.write_sweep_tables(
        out, summary, args, getattr(args, "command_line", None), total_run_time
    )
    sweep_tables.plot(out, summary, args.model)
    return summary


# ---------------------------------------------------------------- entry point


@contextlib.contextmanager
def _quiet_stderr():
    """Sends file descriptor 2 to a temporary file; replays it if an error escapes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _import_tensorflow():
    """Imports TensorFlow and Keras with the start-up logging silenced.

    TensorFlow 2.21 prints its start-up lines (oneDNN, CUDA, CPU features)
    through absl before `TF_CPP_MIN_LOG_LEVEL` applies, so they are captured
    while TensorFlow loads and finds its devices. Set `TF_CPP_MIN_LOG_LEVEL`
    yourself (for example to 0) to see them.
    """
    import keras_dctsparse

    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        keras_dctsparse._import_public_api()
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _quiet_stderr():
        import tensorflow as tf

        keras_dctsparse._import_public_api()  # also registers the layers for loading
        tf.config.list_physical_devices()


def main(argv=None):
    """Runs the CLI with `argv` (default `sys.argv[1:]`); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    args.command_line = "dctsparse " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    if getattr(args, "verbose", 0) is None:
        # Progress bars only on a terminal: redirected logs get one line per epoch.
        args.verbose = 1 if sys.stdout.isatty() else 2
    command = {"train": train, "evaluate": evaluate, "export": export, "sweep": sweep}
    try:
        _import_tensorflow()
        command[args.command](args)
    except CLIError as error:
        print(f"dctsparse {args.command}: error: {error}", file=sys.stderr)
        return error.status
    except OSError as error:  # a full disk, a permission, a vanished file
        where = f" ({error.filename})" if error.filename else ""
        message = error.strerror or errno.errorcode.get(error.errno, "") or str(error)
        print(f"dctsparse {args.command}: error: {message}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"dctsparse {args.command}: interrupted; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    return 0
