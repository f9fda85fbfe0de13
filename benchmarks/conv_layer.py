"""DCTSparseConv2D against keras Conv2D and the masked format: forward and train step.

VGG-like 3x3 "same" convolutions (64..512 channels on 32x32 and 8x8 maps). Prints Markdown
tables of median milliseconds and ratios (`x Conv2D`: time of the layer divided by the time
of `keras.layers.Conv2D` of the same shape, measured in the same run; below 1 is faster).
The train step is forward + backward + an SGD apply of the layer's trainable weights.

Layers timed:

- `Conv2D`: `keras.layers.Conv2D` (dense kernel).
- `auto`: `DCTSparseConv2D` at the given density, default `offset_method="auto"` (one conv
  with the temporary kernel `alpha * Kd + S`).
- `matmul`: the same with the offset computed separately by the factored `matmul` variant
  of `keras_dctsparse.ops.conv_offset` plus `conv(x, S)` (shows why `auto` fuses).
- `masked`: `DCTSparseConv2D(sparse_format="masked")` (dense kernel times a fixed mask).

Run:
    python benchmarks/conv_layer.py               # batch 16 (about 1-2 minutes on 2 cores)
    python benchmarks/conv_layer.py --batch 128   # the full setting
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import markdown_table  # noqa: E402
from common import median_ms  # noqa: E402
from keras_dctsparse import DCTSparseConv2D  # noqa: E402

# (map size, input channels, output channels)
SHAPES = [(32, 64, 64), (32, 128, 128), (8, 256, 256), (8, 512, 512)]
KINDS = ["auto", "matmul", "masked"]


def make_layer(kind, filters, density):
    if kind == "Conv2D":
        return keras.layers.Conv2D(filters, 3, padding="same")
    if kind == "masked":
        return DCTSparseConv2D(filters, 3, padding="same", density=density,
                               sparse_format="masked")
    return DCTSparseConv2D(filters, 3, padding="same", density=density, offset_method=kind)


def timings(kind, size, c_in, c_out, density, batch, repeats):
    """(forward ms, train step ms) of one layer."""
    layer = make_layer(kind, c_out, density)
    layer.build((None, size, size, c_in))
    if kind != "Conv2D":
        # Nonzero values, as after training.
        weight = layer.sparse_weight
        variable = weight.values if weight.values is not None else weight.masked_kernel
        variable.assign(np.random.default_rng(0).standard_normal(variable.shape) * 0.01)
        weight.enforce_mask()
    optimizer = keras.optimizers.SGD(1e-6)
    optimizer.build(layer.trainable_weights)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((batch, size, size, c_in)), tf.float32)
    dy = tf.constant(rng.standard_normal((batch, size, size, c_out)), tf.float32)

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


HEADER = ["shape", "density", "layer", "forward ms", "x Conv2D", "train step ms", "x Conv2D"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; "
          f"batch {args.batch}, median of {args.repeats} runs, ms", flush=True)
    rows = []
    for size, c_in, c_out in SHAPES:
        shape = f"{size}x{size}x{c_in}->{c_out}"
        dense_fwd, dense_train = timings("Conv2D", size, c_in, c_out, 1.0, args.batch,
                                         args.repeats)
        rows.append([shape, "-", "Conv2D", f"{dense_fwd:.2f}", "1.00",
                     f"{dense_train:.2f}", "1.00"])
        for kind in KINDS:
            fwd, train = timings(kind, size, c_in, c_out, args.density, args.batch,
                                 args.repeats)
            rows.append([shape, f"{args.density:g}", kind, f"{fwd:.2f}",
                         f"{fwd / dense_fwd:.2f}", f"{train:.2f}",
                         f"{train / dense_train:.2f}"])
        print(markdown_table(HEADER, rows[-len(KINDS) - 1:]), flush=True)
    print("\n" + markdown_table(HEADER, rows))


if __name__ == "__main__":
    main()
