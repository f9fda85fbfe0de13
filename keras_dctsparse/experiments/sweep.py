"""The `dctsparse sweep` command: train every density x offset x sparse training x seed."""

import argparse
import json
import os

from keras_dctsparse.experiments import common
from keras_dctsparse.experiments import runs
from keras_dctsparse.experiments import train
from keras_dctsparse.experiments.recipe import DEFAULT_SPARSE_TRAINING

__all__ = [
    "run_name",
    "sweep",
    "sweep_grid",
]


def run_name(density, offset, seed, sparse_training="static"):
    """`d<density>_<offset>_s<seed>`, with `_<sparse training>` before `_s` unless static."""
    method = "" if sparse_training == "static" else f"_{sparse_training}"
    return f"d{density:g}_{offset}{method}_s{seed}"


def sweep_grid(densities, offsets, seeds, sparse_trainings=("static",)):
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

    out = common.prepare_out(args.out)
    rows = []
    grid = sweep_grid(
        args.densities, args.offsets, args.seeds,
        getattr(args, "sparse_trainings", [DEFAULT_SPARSE_TRAINING]),
    )
    for density, offset, method, seed in grid:
        run_dir = os.path.join(out, run_name(density, offset, seed, method))
        result_path = os.path.join(run_dir, "results.json")
        run_args = argparse.Namespace(**vars(args))
        for name in ("densities", "offsets", "seeds", "sparse_trainings"):
            if hasattr(run_args, name):
                delattr(run_args, name)
        run_args.density, run_args.offset, run_args.seed = density, offset, seed
        run_args.sparse_training = method
        run_args.out, run_args.distribute = run_dir, "none"
        if os.path.isdir(run_dir):
            common.check_run_config(run_dir, runs.run_config(run_args))
        if os.path.exists(result_path):
            with open(result_path) as file:
                result = json.load(file)
            print(f"[sweep] {run_dir}: done already")
        else:
            extra = "" if method == "static" else f" sparse_training={method}"
            print(f"[sweep] density={density:g} offset={offset}{extra} seed={seed}")
            keras.backend.clear_session()
            result = train.train(run_args)
        rows.append((density, offset, seed, result, method))
    summary = sweep_tables.summarise(rows)
    total_run_time = sum(row[3]["wall_time_s"] for row in rows)
    sweep_tables.write_sweep_tables(
        out, summary, args, getattr(args, "command_line", None), total_run_time
    )
    sweep_tables.plot(out, summary, args.model)
    return summary
