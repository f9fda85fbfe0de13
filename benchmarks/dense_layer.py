"""DCTSparseDense against keras Dense and a masked dense layer: forward and train step.

Prints a Markdown table of median milliseconds and ratios (`x Dense`: time of
the layer divided by the time of `keras.layers.Dense` of the same shape,
measured in the same run; below 1 is faster). Each sparse kernel
(`csr`, `gather`) and the default `auto` are timed, so the table also shows
why `auto` picks what it picks.

Run:
    python benchmarks/dense_layer.py            # full table (about 10 minutes on 2 cores)
    python benchmarks/dense_layer.py --quick    # 1024 only, fewer repeats
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import markdown_table  # noqa: E402
from common import median_ms  # noqa: E402
from keras_dctsparse import DCTSparseDense  # noqa: E402


def make_layer(kind, units, density):
    if kind == "Dense":
        return keras.layers.Dense(units)
    if kind == "masked":
        return DCTSparseDense(units, density=density, sparse_format="masked")
    return DCTSparseDense(units, density=density, sparse_kernel=kind)


def timings(kind, width, density, batch, repeats):
    """(forward ms, train step ms) of one layer."""
    layer = make_layer(kind, width, density)
    layer.build((None, width))
    if kind != "Dense":
        # Nonzero values, as after training.
        weight = layer.sparse_weight
        variable = weight.values if weight.values is not None else weight.masked_kernel
        variable.assign(np.random.default_rng(0).standard_normal(variable.shape) * 0.01)
    optimizer = keras.optimizers.SGD(1e-6)
    optimizer.build(layer.trainable_weights)
    x = tf.constant(np.random.default_rng(1).standard_normal((batch, width)), tf.float32)
    dy = tf.constant(np.random.default_rng(2).standard_normal((batch, width)), tf.float32)

    @tf.function
    def forward():
        return layer(x)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) * dy)
        grads = tape.gradient(loss, layer.trainable_weights)
        optimizer.apply(grads, layer.trainable_weights)
        return loss

    return median_ms(forward, repeats), median_ms(train_step, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="width 1024 only, 5 repeats")
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.01, 0.001])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.quick:
        args.widths, args.repeats = [1024], 5
    kinds = ["auto", "csr", "gather", "masked"]
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPUs; median of {args.repeats} runs, ms", flush=True)
    rows = []
    for width in args.widths:
        for batch in args.batches:
            dense_fwd, dense_train = timings("Dense", width, 1.0, batch, args.repeats)
            rows.append([f"{width}x{width}", batch, "-", "Dense", f"{dense_fwd:.3f}",
                         "1.00", f"{dense_train:.3f}", "1.00"])
            for density in args.densities:
                for kind in kinds:
                    fwd, train = timings(kind, width, density, batch, args.repeats)
                    rows.append([f"{width}x{width}", batch, f"{density:g}", kind,
                                 f"{fwd:.3f}", f"{fwd / dense_fwd:.2f}",
                                 f"{train:.3f}", f"{train / dense_train:.2f}"])
                print(markdown_table(HEADER, rows[-len(kinds):]), flush=True)
    print("\n" + markdown_table(HEADER, rows))


HEADER = ["shape", "batch", "density", "layer", "forward ms", "x Dense",
          "train step ms", "x Dense"]

if __name__ == "__main__":
    main()
