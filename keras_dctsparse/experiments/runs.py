"""The configuration and progress of a `dctsparse train` run, stored in its folder.

`OUT/run_config.json` holds the arguments that define the run (`RUN_CONFIG_KEYS`),
the wall time spent so far and whether the run finished. A rerun into the same
folder must use the same arguments: resuming with another density, seed or
learning rate would silently mix two runs.
"""

import json
import os
import time

from keras_dctsparse import atomic

__all__ = [
    "RUN_CONFIG_FILE",
    "RUN_CONFIG_KEYS",
    "RunConfigError",
    "check_run_config",
    "elapsed_callback",
    "flag",
    "run_config",
    "write_run_state",
]

# The `train` arguments that define a run (stored in OUT/run_config.json and
# compared on resume). --out, --data-dir, --download and --verbose do not.
RUN_CONFIG_KEYS = (
    "model", "dataset", "density", "offset", "seed", "distribution", "epochs",
    "optimizer", "lr", "schedule", "validation_split", "augment", "train_limit",
    "batch_size", "distribute", "sparse_training", "update_every", "drop_fraction",
    "end_fraction",
)

# The settings of --sparse-training rigl/set; a static run stores None for them
# (they do not change it).
DYNAMIC_SPARSITY_KEYS = ("update_every", "drop_fraction", "end_fraction")

# What a run_config.json written before a key existed means by its absence: runs
# from before dynamic sparse training were static.
LEGACY_VALUES = {"sparse_training": "static", **{key: None for key in DYNAMIC_SPARSITY_KEYS}}

RUN_CONFIG_FILE = "run_config.json"


class RunConfigError(ValueError):
    """The run folder holds a run with other arguments (or an unreadable record)."""


def run_config(args):
    """The arguments that define a `train` run (see `RUN_CONFIG_KEYS`).

    A static run (`sparse_training` "static" or absent) records None for the
    `DYNAMIC_SPARSITY_KEYS`, which do not affect it.
    """
    config = {key: getattr(args, key, None) for key in RUN_CONFIG_KEYS}
    if config["sparse_training"] in (None, "static"):
        config["sparse_training"] = "static"
        config.update({key: None for key in DYNAMIC_SPARSITY_KEYS})
    return config


def flag(key):
    """The command-line flag of a `RUN_CONFIG_KEYS` entry (`lr` -> `--lr`)."""
    return "--" + key.replace("_", "-")


def check_run_config(out, config):
    """Compares `config` with the one stored in `out`; returns the stored state.

    Args:
        out: The run folder.
        config: `run_config(args)` of this invocation.

    Returns:
        The stored state dict (`config`, `elapsed_s`, `finished`), or None when
        `out` holds no run yet.

    Raises:
        RunConfigError: If the stored run used other arguments (naming each of
            them with its stored and given value), or the file is unreadable.
    """
    path = os.path.join(out, RUN_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as file:
            state = json.load(file)
        stored = {**LEGACY_VALUES, **dict(state["config"])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunConfigError(
            f"cannot read {path} ({error}); use a new --out (or delete {out}) to start afresh"
        ) from None
    differing = [
        f"{flag(key)} {stored[key]!r} (stored) vs {config[key]!r} (given)"
        for key in RUN_CONFIG_KEYS
        if key in stored and stored[key] != config.get(key)
    ]
    if differing:
        raise RunConfigError(
            f"{out} holds a run with other arguments: {'; '.join(differing)}. Rerun with "
            "the stored arguments to resume it, or use a new --out (or delete "
            f"{out}) to start afresh"
        )
    return state


def write_run_state(out, config, elapsed_s, finished=False, **extra):
    """Writes OUT/run_config.json: `config`, the wall time so far, `finished` and `extra`.

    Args:
        out: The run folder.
        config: `run_config(args)`.
        elapsed_s: Wall time of the run so far (all its parts).
        finished: Whether the run is done.
        **extra: More JSON-serialisable entries of the state (for example the
            position updates of a dynamic sparse run, added up over resumes).
    """
    state = {"config": config, "elapsed_s": elapsed_s, "finished": finished, **extra}
    atomic.write_text(os.path.join(out, RUN_CONFIG_FILE), json.dumps(state, indent=2) + "\n")


def elapsed_callback(out, config, started, elapsed_before, extra_state=None):
    """A callback storing the run's total wall time after every epoch.

    Args:
        out: The run folder.
        config: `run_config(args)`.
        started: `time.time()` when this part of the run started.
        elapsed_before: Wall time of the earlier parts (resumed runs).
        extra_state: Optional function returning a dict stored with the state
            (see `write_run_state`).
    """
    import keras

    class StoreElapsed(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            extra = extra_state() if extra_state is not None else {}
            write_run_state(out, config, elapsed_before + time.time() - started, **extra)

    return StoreElapsed()
