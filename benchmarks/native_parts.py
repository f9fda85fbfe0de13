"""Two native building blocks against the TensorFlow ops they replace, interleaved.

1. `D x` alone: `keras_dctsparse.ops.native_matmul.native_dct_offset` against
   `keras_dctsparse.ops.transforms.dct_offset` (`tf.signal`'s real FFT, Makhoul), the
   offset of the materialized dense kernel where native ops may run.
2. The fused conv path's temporary kernel `alpha * Kd + S` and its gradient (values and
   alpha): `keras_dctsparse.ops.native_kernel.native_scatter_kernel` against
   `keras_dctsparse.ops.sparse_conv.scatter_kernel` (`SparseToDense`, transposed on
   large dense-enough kernels, plus the scaled offset), on the matrix views of 3x3
   kernels (4608 x 512 is 3x3x512x512).

3. The native dense product's three ops one at a time (`DctSparseMatmul`, its input
   gradient `DctSparseMatmulInputGrad`, its value gradient `DctSparseMatmulValueGrad`)
   against `x @ W` with a dense `W` of the same shape (best ms of interleaved runs).

Run:
    python benchmarks/native_parts.py [--repeats 15] [--parts offset kernel products]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import interleaved_ms  # noqa: E402
from common import markdown_table  # noqa: E402
from keras_dctsparse.native import library  # noqa: E402
from keras_dctsparse.ops.native_kernel import native_scatter_kernel  # noqa: E402
from keras_dctsparse.ops.native_matmul import native_dct_offset  # noqa: E402
from keras_dctsparse.ops.sparse_conv import scatter_kernel  # noqa: E402
from keras_dctsparse.ops.support import num_nonzeros  # noqa: E402
from keras_dctsparse.ops.support import sample_support  # noqa: E402
from keras_dctsparse.ops.transforms import dct_offset  # noqa: E402

LENGTHS, BATCHES = (256, 1024, 4096), (1, 32, 256)
KERNELS, DENSITIES = ((4608, 512), (2304, 256), (1152, 128), (576, 64)), (1.0, 0.3, 0.1)
PRODUCTS = ((4096, 256, 0.1), (4096, 256, 0.01), (1024, 256, 0.3), (1024, 32, 0.3),
            (256, 32, 0.3))  # (width, batch, density) of square layers


def offset_rows(repeats):
    rows = []
    for length in LENGTHS:
        for batch in BATCHES:
            x = tf.random.normal((batch, length))
            stock = tf.function(lambda x: dct_offset(x, length)[0, 0])
            native = tf.function(lambda x: native_dct_offset(x, length)[0, 0])
            ms = interleaved_ms({"tf.signal": lambda: stock(x), "native": lambda: native(x)},
                                repeats)
            rows.append([length, batch, f"{ms['tf.signal'][1]:.3f}", f"{ms['native'][1]:.3f}",
                         f"{ms['native'][1] / ms['tf.signal'][1]:.2f}"])
    return rows


def kernel_rows(repeats):
    rng = np.random.default_rng(0)
    rows = []
    for n, m in KERNELS:
        for density in DENSITIES:
            nnz = int(round(density * n * m))
            keys = np.sort(rng.choice(n * m, nnz, replace=False))  # column-major order
            cols, positions_rows = np.divmod(keys, n)
            positions = tf.constant(np.stack([positions_rows, cols]).astype(np.int32))
            row_t, col_t = tf.unstack(positions)
            base = tf.constant(rng.standard_normal((n, m)), tf.float32)
            values = tf.Variable(rng.standard_normal(nnz).astype(np.float32))
            alpha = tf.Variable(0.7)
            dkernel = tf.constant(rng.standard_normal((n, m)), tf.float32)

            def step(build):
                @tf.function
                def run():
                    with tf.GradientTape() as tape:
                        kernel = build()
                    dalpha, dvalues = tape.gradient(kernel, [alpha, values],
                                                    output_gradients=dkernel)
                    return dalpha + dvalues[0] + kernel[0, 0]

                return run

            stock = step(lambda: scatter_kernel(values, row_t, col_t, (n, m), alpha * base,
                                                column_major=True))
            native = step(lambda: native_scatter_kernel(base, alpha, values, positions))
            ms = interleaved_ms({"stock": stock, "native": native}, repeats)
            rows.append([f"{n} x {m}", f"{density:g}", f"{ms['stock'][1]:.2f}",
                         f"{ms['native'][1]:.2f}", f"{ms['native'][1] / ms['stock'][1]:.2f}"])
    return rows


def product_rows(repeats):
    ops = library.load()
    rng = np.random.default_rng(0)
    rows = []
    for width, batch, density in PRODUCTS:
        nnz = num_nonzeros(width * width, density)
        positions = tf.constant(np.stack(sample_support((width, width), nnz, seed=0)), tf.int32)
        values = tf.constant(rng.standard_normal(nnz), tf.float32)
        x = tf.constant(rng.standard_normal((batch, width)), tf.float32)
        dy = tf.constant(rng.standard_normal((batch, width)), tf.float32)
        dense = tf.constant(rng.standard_normal((width, width)), tf.float32)
        alpha = tf.constant(0.7)
        ms = interleaved_ms({
            "forward": tf.function(lambda: ops.dct_sparse_matmul(
                x, alpha, values, positions, units=width, with_offset=True,
                offset_output=False)[0][0, 0]),
            "input gradient": tf.function(lambda: ops.dct_sparse_matmul_input_grad(
                dy, alpha, values, positions, input_dim=width, with_offset=True)[0, 0]),
            "value gradient": tf.function(
                lambda: ops.dct_sparse_matmul_value_grad(x, dy, positions)[0]),
            "x @ W": tf.function(lambda: tf.matmul(x, dense)[0, 0]),
        }, repeats)
        rows.append([f"{width} x {width}", batch, f"{density:g}"]
                    + [f"{ms[name][0]:.2f}" for name in
                       ("forward", "input gradient", "value gradient", "x @ W")])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--parts", nargs="+", choices=("offset", "kernel", "products"),
                        default=("offset", "kernel", "products"))
    args = parser.parse_args()
    if "offset" in args.parts:
        print("`D x` (forward), median ms of interleaved runs:\n")
        print(markdown_table(["N", "batch", "tf.signal", "native", "native / tf.signal"],
                             offset_rows(args.repeats)))
    if "kernel" in args.parts:
        print("\n`alpha * Kd + S` and its gradient (values, alpha), median ms of interleaved "
              "runs:\n")
        print(markdown_table(["kernel matrix", "density", "TensorFlow ops", "native",
                              "native / TensorFlow"], kernel_rows(args.repeats)))
    if "products" in args.parts:
        print("\nThe native dense product's ops one at a time (alpha * D x + x @ S and its "
              "gradients) and x @ W, best ms of interleaved runs:\n")
        print(markdown_table(["layer", "batch", "density", "forward", "input gradient",
                              "value gradient", "x @ W"], product_rows(args.repeats)))


if __name__ == "__main__":
    main()
