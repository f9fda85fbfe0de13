"""What the commands of the `dctsparse` command line share.

`CLIError` is an error reported to the user as one message with an exit
status; the helpers load datasets and saved models with such errors, create
output folders and write outputs atomically (a full disk keeps the previous
version).
"""

import os

from keras_dctsparse.experiments import runs

__all__ = [
    "CLIError",
    "atomic_save_keras",
    "check_run_config",
    "export_savedmodel",
    "load_data",
    "load_model",
    "outputs_probabilities",
    "prepare_out",
    "write_text",
]


class CLIError(Exception):
    """An error reported to the user as one message, with an exit status."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


def load_data(args):
    """The dataset of `args` (`--dataset`, `--data-dir`, ...); `CLIError` if unavailable."""

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


def outputs_probabilities(model):
    """Whether the model ends in a softmax (else its outputs are taken as logits)."""
    import keras

    layer = model.layers[-1] if getattr(model, "layers", None) else None
    if layer is None:
        return True
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") == "softmax"


def atomic_save_keras(model, path):
    """Saves `model` to the `.keras` file `path`; a failed save keeps the previous file."""

    from keras_dctsparse import atomic

    atomic.write_file(path, lambda temporary: model.save(temporary, overwrite=True), ".keras")


def export_savedmodel(model, path, overwrite=False, check=True):
    """Exports `model` as a SavedModel folder `path`, replacing a previous export atomically.

    With `check`, a `path` that exists and is not a SavedModel is refused unless
    `overwrite`.
    """

    from keras_dctsparse import atomic

    if check:
        atomic.check_target(path, atomic.is_savedmodel, "a SavedModel", overwrite)
    atomic.replace_directory(path, lambda temporary: model.export(temporary, verbose=False))


def write_text(path, text):
    """Writes `text` to `path`; a failed write keeps the previous file."""

    from keras_dctsparse import atomic

    atomic.write_text(path, text)


def load_model(path):
    """The `.keras` model at `path` (DCTpS layers registered); `CLIError` if it cannot load."""

    import keras

    import keras_dctsparse

    keras_dctsparse._import_public_api()  # registers the layers with Keras

    if not os.path.exists(path):
        raise CLIError(f"--model-path {path!r} does not exist", status=2)
    try:
        return keras.saving.load_model(path)
    except Exception as error:
        raise CLIError(f"cannot load --model-path {path!r}: {error}") from error


def check_run_config(out, config):
    """`runs.check_run_config`, with a changed configuration reported as a `CLIError`."""

    try:
        return runs.check_run_config(out, config)
    except runs.RunConfigError as error:
        raise CLIError(str(error), status=2) from None


def prepare_out(path, name="--out"):
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
