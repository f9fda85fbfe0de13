"""Whole models: `model.fit` epoch time of DCTpS zoo models against their dense versions.

For each zoo model (LeNet-300-100 and LeNet-5 on 28x28x1, VGG19 on 32x32x3) the dense model
(`density=1, offset=None`) and the DCTpS models at the given densities (EPL allocation) are
compiled alike (Adam, sparse categorical cross-entropy, accuracy) and trained on the same
random data of the real input shape (timing does not depend on the values). After one
warm-up epoch each, epochs are timed *interleaved* (dense, DCTpS 1%, DCTpS 0.1%, dense, ...)
and the best epoch of each is kept: on this kind of shared machine epochs fall into a fast
and a slow mode whatever the model, so only interleaved best-of-N ratios are meaningful.

The ratio column is DCTpS epoch time / dense epoch time (below 1 is faster).

Run:
    python benchmarks/models.py                         # LeNet-300-100, LeNet-5, VGG19
    python benchmarks/models.py --models lenet300100 --repeats 3
    python benchmarks/models.py --jit-compile           # whole train step under XLA
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import markdown_table  # noqa: E402
from keras_dctsparse.models import build_model  # noqa: E402

#: Zoo model -> (input shape, examples per timed epoch at batch 128). The LeNets use
#: MNIST's 60,000 training images; VGG19 a 4,096-image slice (a CIFAR epoch would take
#: minutes per candidate on 2 cores): the ratio is per step either way.
MODEL_SETTINGS = {
    "lenet300100": ((28, 28, 1), 60_000),
    "lenet5": ((28, 28, 1), 60_000),
    "vgg19": ((32, 32, 3), 4_096),
}


def _compiled(name, input_shape, density, jit_compile):
    if density is None:
        model = build_model(name, input_shape=input_shape, density=1.0, offset=None, seed=0)
    else:
        model = build_model(
            name, input_shape=input_shape, density=density, distribution="epl", seed=0
        )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def model_rows(names, densities=(0.01, 0.001), batch_size=128, repeats=4,
               jit_compile="auto", examples=None):
    """Times `model.fit` epochs of dense and DCTpS zoo models, interleaved.

    Args:
        names: Zoo model names (keys of `MODEL_SETTINGS`).
        densities: Global densities of the DCTpS models (EPL allocation).
        batch_size: Batch size.
        repeats: Timed epochs per candidate (after one warm-up epoch each).
        jit_compile: Passed to `model.compile` for every candidate.
        examples: Examples per epoch (None: `MODEL_SETTINGS`).

    Returns:
        A list of table rows `[model, variant, best epoch s, median epoch s, x dense]`.
    """
    rows = []
    for name in names:
        input_shape, default_examples = MODEL_SETTINGS[name]
        count = examples or default_examples
        rng = np.random.default_rng(0)
        x = rng.standard_normal((count, *input_shape)).astype(np.float32)
        y = rng.integers(0, 10, count)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache()
        variants = {"dense": None}
        variants.update({f"DCTpS {d:g}": d for d in densities})
        models = {
            label: _compiled(name, input_shape, density, jit_compile)
            for label, density in variants.items()
        }
        for model in models.values():
            model.fit(dataset, epochs=1, verbose=0)  # warm-up: tracing, compilation
        times = {label: [] for label in models}
        for _ in range(repeats):
            for label, model in models.items():
                start = time.perf_counter()
                model.fit(dataset, epochs=1, verbose=0)
                times[label].append(time.perf_counter() - start)
        dense_best = min(times["dense"])
        for label, values in times.items():
            best = min(values)
            rows.append([name, label, f"{best:.2f}", f"{np.median(values):.2f}",
                         f"{best / dense_best:.2f}"])
        print(markdown_table(HEADER, rows[-len(models):]), flush=True)
    return rows


HEADER = ["model", "variant", "best epoch s", "median epoch s", "x dense (best)"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_SETTINGS),
                        choices=list(MODEL_SETTINGS))
    parser.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.001])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--examples", type=int, default=None,
                        help="examples per epoch (default: 60000 for the LeNets, 4096 VGG19)")
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile every model with jit_compile=True (whole step in XLA)")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; "
          f"batch {args.batch_size}, best and median of {args.repeats} interleaved epochs",
          flush=True)
    rows = model_rows(args.models, args.densities, args.batch_size, args.repeats,
                      True if args.jit_compile else "auto", args.examples)
    print("\n" + markdown_table(HEADER, rows))


if __name__ == "__main__":
    main()
