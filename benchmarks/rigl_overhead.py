"""What RigL and SET add to the time of a `model.fit` epoch (zoo LeNets on MNIST).

For each model, three copies train side by side, one epoch at a time, interleaved
(static, RigL, SET, static, RigL, SET, ...): fixed positions, `RigL(update_every=...)`
and `SET(update_every=...)`, with updates active for the whole run. The first
round (tracing) is discarded; the table reports the median epoch time of each and
the ratio to static, measured in the same run.

Run (about 3 minutes on 2 CPU cores):
    python benchmarks/rigl_overhead.py --data-dir ../shared/data/mnist
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from common import markdown_table  # noqa: E402
from keras_dctsparse.experiments import data  # noqa: E402
from keras_dctsparse import models  # noqa: E402
from keras_dctsparse.dynamic_sparsity import DynamicSparsity  # noqa: E402


def build(model_name, dataset, density):
    keras.utils.set_random_seed(0)
    model = models.build_model(
        model_name, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
        density=density, distribution="epl", seed=0,
    )
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--models", nargs="+", default=["lenet300100", "lenet5"])
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--update-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs of each")
    args = parser.parse_args()
    dataset = data.load_dataset("mnist", args.data_dir)
    train_data = data.make_train_dataset(dataset.x_train, dataset.y_train, args.batch_size, seed=0)
    rows = []
    for model_name in args.models:
        methods = ("static", "rigl", "set")
        trainees = {}
        for method in methods:
            callbacks = []
            if method != "static":
                callbacks.append(DynamicSparsity(
                    method, data=train_data if method == "rigl" else None,
                    update_every=args.update_every, end_step=10**9,
                ))
            trainees[method] = (build(model_name, dataset, args.density), callbacks)
        times = {method: [] for method in methods}
        updates = {}
        for round_index in range(args.rounds + 1):
            for method in methods:
                model, callbacks = trainees[method]
                started = time.perf_counter()
                model.fit(train_data, epochs=1, verbose=0, callbacks=callbacks)
                if round_index:
                    times[method].append(time.perf_counter() - started)
                if callbacks:
                    updates[method] = len({u["step"] for u in callbacks[0].updates})
        static = statistics.median(times["static"])
        for method in methods:
            median = statistics.median(times[method])
            rows.append([
                model_name, method, updates.get(method, 0), f"{1000 * median:.0f}",
                f"{median / static:.3f}",
            ])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(f"density {args.density:g}, batch {args.batch_size}, "
          f"update_every {args.update_every}, median of {args.rounds} interleaved epochs")
    print(markdown_table(
        ["model", "positions", "updates (all epochs)", "epoch (ms)", "ratio to static"], rows
    ))


if __name__ == "__main__":
    main()
