"""The four ways to apply a dense kernel stored transposed, against `x @ K`, interleaved.

The materialized dense kernel builds `K^T` (shape `(units, input_dim)`: the column-major
positions of `S` are its row-major order) and applies it in the form
`keras_dctsparse.ops.kernel_choice.product_form` picks. Which form oneDNN runs fastest
depends on the CPU: this script times them all on this machine, with `x @ K` (`K`
stored, what `keras.layers.Dense` runs) as the baseline, and marks the form the rule
picks here (`cpu_features.has_avx512()`).

- `transpose_b`: `tf.matmul(x, K^T, transpose_b=True)`
- `transposed`: `tf.transpose(tf.matmul(K^T, x, transpose_b=True))`
- `batched`: `tf.raw_ops.BatchMatMulV2(x=x, y=K^T, adj_y=True)`

Run:
    python benchmarks/matmul_forms.py [--shapes 4096,4096 1024,1024] [--batches 8 64 256]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402

from common import interleaved_ms  # noqa: E402
from common import markdown_table  # noqa: E402
from keras_dctsparse.ops import cpu_features  # noqa: E402
from keras_dctsparse.ops import kernel_choice  # noqa: E402

FORMS = {
    "x @ K": lambda x, kernel, transposed: tf.matmul(x, kernel),
    "transpose_b": lambda x, kernel, transposed: tf.matmul(x, transposed, transpose_b=True),
    "transposed": lambda x, kernel, transposed: tf.transpose(
        tf.matmul(transposed, x, transpose_b=True)
    ),
    "batched": lambda x, kernel, transposed: tf.raw_ops.BatchMatMulV2(
        x=x, y=transposed, adj_y=True
    ),
}


def form_rows(shapes, batches, repeats):
    avx512 = cpu_features.has_avx512()
    rows = []
    for input_dim, units in shapes:
        kernel = tf.random.normal((input_dim, units))
        transposed = tf.transpose(kernel)
        for batch in batches:
            x = tf.random.normal((batch, input_dim))
            # One element of the result: no timing includes copying the output to the host.
            steps = {
                name: tf.function(lambda form=form: form(x, kernel, transposed)[0, 0])
                for name, form in FORMS.items()
            }
            timings = interleaved_ms(steps, repeats)
            base = timings["x @ K"][0]
            picked = kernel_choice.product_form(input_dim, units, batch, avx512=avx512)
            cells = [
                f"{timings[name][0]:.3f} ({timings[name][0] / base:.2f}x)"
                + (" *" if name == picked else "")
                for name in FORMS
            ]
            rows.append([f"{input_dim}x{units}", batch, *cells])
            print(markdown_table(["shape", "batch", *FORMS], rows[-1:]).splitlines()[-1],
                  flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["512,512", "2048,2048", "4096,1024",
                                                        "4096,4096"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shapes = [tuple(int(part) for part in shape.split(",")) for shape in args.shapes]
    rows = form_rows(shapes, args.batches, args.repeats)
    print(f"\nAVX-512: {cpu_features.has_avx512()}; best ms of interleaved runs (x `x @ K`), "
          "* = the form `product_form` picks here\n")
    print(markdown_table(["shape", "batch", *FORMS], rows))


if __name__ == "__main__":
    main()
