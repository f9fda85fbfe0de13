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
start-up logging silenced unless ``TF_CPP_MIN_LOG_LEVEL`` is set, and with its
BFC allocator for CPU tensors unless ``TF_CPU_ALLOCATOR_USE_BFC`` is set
(``keras_dctsparse.cpu_allocator``; set it to ``false`` for TensorFlow's default).

Exit status: 0 on success, 2 for bad arguments or an unavailable dataset,
1 for other errors (for example a model that cannot be exported).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import shlex
import sys
import tempfile

from keras_dctsparse.experiments import saved_models
from keras_dctsparse.experiments import sweep
from keras_dctsparse.experiments import train
from keras_dctsparse.experiments.common import CLIError
from keras_dctsparse.experiments.recipe import DATASETS
from keras_dctsparse.experiments.recipe import DEFAULT_BATCH_SIZE
from keras_dctsparse.experiments.recipe import DEFAULT_DISTRIBUTION
from keras_dctsparse.experiments.recipe import DEFAULT_DROP_FRACTION
from keras_dctsparse.experiments.recipe import DEFAULT_END_FRACTION
from keras_dctsparse.experiments.recipe import DEFAULT_LR
from keras_dctsparse.experiments.recipe import DEFAULT_OPTIMIZER
from keras_dctsparse.experiments.recipe import DEFAULT_SCHEDULE
from keras_dctsparse.experiments.recipe import DEFAULT_SPARSE_TRAINING
from keras_dctsparse.experiments.recipe import DISTRIBUTE
from keras_dctsparse.experiments.recipe import DISTRIBUTIONS
from keras_dctsparse.experiments.recipe import MODEL_RECIPES
from keras_dctsparse.experiments.recipe import MODELS
from keras_dctsparse.experiments.recipe import OFFSETS
from keras_dctsparse.experiments.recipe import OPTIMIZERS
from keras_dctsparse.experiments.recipe import SCHEDULES
from keras_dctsparse.experiments.recipe import SPARSE_TRAININGS
from keras_dctsparse.experiments.recipe import recipe_defaults

__all__ = ["build_parser", "main"]


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


def _per_model(name):
    """`" (default X; lenet5: Y)"`: the default of a recipe setting and its per-model ones."""
    own = "; ".join(
        f"{model}: {settings[name]}"
        for model, settings in MODEL_RECIPES.items() if name in settings
    )
    default = recipe_defaults(None)[name]
    return f" (default {default}" + (f"; {own}" if own else "") + ")"


def _add_data_args(parser, need_dataset=True, model_recipe=False):
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
        "--batch-size",
        type=_positive_int("--batch-size"),
        default=None,
        help="batch size" + (_per_model("batch_size") if model_recipe
                             else f" (default {DEFAULT_BATCH_SIZE})"),
    )


def _add_train_args(parser, sweep=False):
    parser.add_argument("--model", required=True, choices=MODELS, help="architecture")
    _add_data_args(parser, model_recipe=True)
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
        default=None,
        help="rigl/set: optimizer steps between position updates" + _per_model("update_every"),
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


class _RecipeParser(argparse.ArgumentParser):
    """Fills `--batch-size` and `--update-every`, where left out, with `--model`'s defaults."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        defaults = recipe_defaults(getattr(parsed, "model", None))
        for name, value in defaults.items():
            if getattr(parsed, name, 0) is None:
                setattr(parsed, name, value)
        return parsed, extras


def build_parser():
    parser = _RecipeParser(
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
        choices=("stored", "computed", "at_load"),
        default="stored",
        help="TFLite only: store the fast DCT's O(N) tables in the file, let the "
        "interpreter compute them on every call (smaller file for large layers, slower), "
        "or build its mixed-radix DFT matrices when the interpreter allocates tensors "
        "(at_load: a smaller file at the same speed; --form auto uses it)",
    )
    export.add_argument(
        "--form",
        choices=("implicit", "built_once", "built_at_load", "auto"),
        default="implicit",
        help="TFLite only: run D as a fast transform on every call (implicit); build "
        "each layer's dense kernel once at the first call (built_once: read back on every "
        "call); build the dense layers' alpha * D when the interpreter allocates tensors "
        "and run S as a sparse FULLY_CONNECTED (built_at_load, float32); or, for the "
        "layers whose kernel fits --max-kernel-bytes, per layer the fastest: implicit with "
        "the CSR product for float32 dense layers of 65536 entries or more, built_at_load "
        "for smaller ones, built_once for convolutions and quantized files (auto); see "
        "keras_dctsparse.export_tflite",
    )
    export.add_argument(
        "--max-kernel-bytes",
        type=int,
        default=None,
        help="TFLite only, --form auto: largest float32 dense kernel (bytes) of a layer "
        "built once or at load, or exported with the CSR product (default 8 MiB)",
    )
    export.add_argument(
        "--sparse-product",
        choices=("gather", "csr"),
        default="gather",
        help="TFLite only, implicit form: S by GATHER/MUL/UNSORTED_SEGMENT_SUM (gather), "
        "or as a FULLY_CONNECTED with a CSR sparse weight (csr: faster, float32 only, "
        "traces an n x m placeholder at export time)",
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
    from keras_dctsparse.cpu_allocator import ALLOCATOR_VARIABLE

    if "tensorflow" not in sys.modules:
        # TensorFlow's BFC allocator for CPU tensors, unless the environment says otherwise
        # (keras_dctsparse.cpu_allocator: large steps fault in fresh pages every step with
        # the default malloc allocator). Read when TensorFlow creates its first tensor; a
        # program that imported TensorFlow before calling the CLI keeps its allocator.
        os.environ.setdefault(ALLOCATOR_VARIABLE, "true")
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
    command = {
        "train": train.train,
        "evaluate": saved_models.evaluate,
        "export": saved_models.export,
        "sweep": sweep.sweep,
    }
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
