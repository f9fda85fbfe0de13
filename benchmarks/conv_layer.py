"""DCTSparseConv2D against keras Conv2D: forward and train step, paths and densities.

3x3 "same" convolutions (other sizes and "valid": `--kernel-size`, `--padding`), VGG-like
shapes (64..512 channels, 8..32 maps), batches 32 and 128, densities 1, 0.1, 0.01, 0.001.
For every (shape, batch, density) the candidates are
timed interleaved (A, B, C, A, B, C, ...; `common.interleaved_ms`) and reported as the
median (and best) milliseconds and the ratio to `keras.layers.Conv2D` of the same shape
measured in the same group (`x Conv2D`, below 1 is faster).

Forward is `layer(x)`. The train step is forward + backward for the input (every conv
but the first of a network needs it) and the trainable weights + an SGD apply. Both run
as Keras runs its `predict`/`fit` steps (`common.keras_step`), where the native kernels
may run.

Candidates:

- `Conv2D`: `keras.layers.Conv2D` (dense kernel, the baseline).
- `auto`: `DCTSparseConv2D` defaults (`sparse_kernel="auto"`: `choose_conv_plan` picks
  the fused dense path or the sparse path; the `path` column says which).
- `fused`: `sparse_kernel="dense"`: one conv with `alpha * Kd + S`.
- `sparse`: `sparse_kernel="sparse"`: `ops.sparse_conv` for S plus the factored offset
  (densities <= 1% only).
- `native`: `sparse_kernel="native"`: the native ops of `ops.native_conv` (densities <=
  30% only).
- `masked`: `sparse_format="masked"` (dense kernel times a fixed mask, the usual
  emulation of sparsity).

Run:
    python benchmarks/conv_layer.py --quick     # a few minutes on 2 cores
    python benchmarks/conv_layer.py             # all shapes, batches 32 and 128 (long)
    python benchmarks/conv_layer.py --vgg19     # zoo VGG19 train step, dense vs 1% / 0.1%
    python benchmarks/conv_layer.py --shapes 112,64,64 --batch 8 --forward-only   # inference
    python benchmarks/conv_layer.py --shapes 28,1,6 --kernel-size 5 --batch 128 \
        --density 0.8 0.1   # LeNet-5's first conv ("+direct": the native direct conv)

`conv_layer_rows(...)` and `vgg19_rows(...)` return the rows (dicts) for other scripts
(benchmarks/price.py).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import interleaved_ms  # noqa: E402
from common import layer_step_functions  # noqa: E402
from common import markdown_table  # noqa: E402
from keras_dctsparse import DCTSparseConv2D  # noqa: E402

# (map size, input channels, output channels)
SHAPES = [(32, 64, 64), (32, 128, 128), (16, 128, 128), (16, 256, 256), (8, 256, 256),
          (8, 512, 512)]
QUICK_SHAPES = [(16, 128, 128), (8, 256, 256)]
DENSITIES = [1.0, 0.1, 0.01, 0.001]
BATCHES = [32, 128]


def _candidates(density):
    kinds = ["Conv2D", "auto", "fused", "masked"]
    if density <= 0.01:
        kinds.insert(3, "sparse")
    if density <= 0.3:
        kinds.insert(3, "native")
    return kinds


def _make_layer(kind, filters, density, kernel_size=3, padding="same"):
    if kind == "Conv2D":
        return keras.layers.Conv2D(filters, kernel_size, padding=padding)
    options = {"fused": dict(sparse_kernel="dense"), "sparse": dict(sparse_kernel="sparse"),
               "native": dict(sparse_kernel="native"), "masked": dict(sparse_format="masked"),
               "auto": {}}[kind]
    return DCTSparseConv2D(filters, kernel_size, padding=padding, density=density, seed=0,
                           **options)


def _path(layer, x, padding="same"):
    """The layer's plan (`s_path/offset_method`, `+direct` where the fused conv is the native
    direct convolution); `fwd ..., train ...` where the two differ.

    A call traced with no gradient tape (the forward rows) may plan otherwise
    than the train step, which records the gradient.
    """
    if not hasattr(layer, "_plan"):
        return "-"

    def plan():
        s_path, method = layer._plan(x, padding)
        direct = s_path == "dense" and method in (None, "fused") and (
            layer.fused_conv_is_direct(x))
        return f"{s_path}/{method}" + ("+direct" if direct else "")

    forward = plan()  # eager, as a Keras step: native ops may run
    with tf.GradientTape():
        train = plan()
    return forward if forward == train else f"fwd {forward}, train {train}"


def conv_layer_rows(shapes=SHAPES, densities=DENSITIES, batches=BATCHES, repeats=7,
                    log=print, kinds=None, forward_only=False, kernel_size=3, padding="same"):
    """Times every candidate; returns one dict per (shape, batch, density, candidate).

    Args:
        shapes: `(map size, c_in, c_out)` tuples.
        densities: Densities of S.
        batches: Batch sizes.
        repeats: Interleaved rounds per group (median and best are reported).
        log: Called with a Markdown table after each group (None: silent).
        kinds: None (every candidate) or the candidates to time (`Conv2D` is always timed).
        forward_only: Time the forward alone (the train keys are then None).
        kernel_size: Square kernel size of every layer.
        padding: `"same"` or `"valid"`.

    Returns:
        A list of dicts with keys `shape`, `batch`, `density`, `layer`, `path`,
        `forward_ms`, `forward_best_ms`, `forward_ratio`, `train_ms`, `train_best_ms`,
        `train_ratio` (ratios of medians to `Conv2D` in the same group).
    """
    rows = []
    rng = np.random.default_rng(1)
    for size, c_in, c_out in shapes:
        for batch in batches:
            x = tf.constant(rng.standard_normal((batch, size, size, c_in)), tf.float32)
            out = size if padding == "same" else size - kernel_size + 1
            dy = tf.constant(rng.standard_normal((batch, out, out, c_out)), tf.float32)
            for density in densities:
                functions, paths = {}, {}
                for kind in _candidates(density):
                    if kinds is not None and kind != "Conv2D" and kind not in kinds:
                        continue
                    layer = _make_layer(kind, c_out, density, kernel_size, padding)
                    layer.build(x.shape)
                    if kind != "Conv2D":
                        weight = layer.sparse_weight
                        variable = (weight.values if weight.values is not None
                                    else weight.masked_kernel)
                        variable.assign(rng.standard_normal(variable.shape) * 0.01)
                        weight.enforce_mask()
                    forward, train_step = layer_step_functions(layer, x, dy)
                    functions[kind + "/forward"] = forward
                    if not forward_only:
                        functions[kind + "/train"] = train_step
                    paths[kind] = _path(layer, x, padding)
                times = interleaved_ms(functions, repeats)
                base_fwd = times["Conv2D/forward"][1]
                base_train = None if forward_only else times["Conv2D/train"][1]
                group = []
                for kind in paths:
                    fwd = times[kind + "/forward"]
                    train = (None, None) if forward_only else times[kind + "/train"]
                    group.append({
                        "shape": f"{size}x{size}x{c_in}->{c_out}" + (
                            "" if (kernel_size, padding) == (3, "same")
                            else f" {kernel_size}x{kernel_size} {padding}"),
                        "batch": batch,
                        "density": density, "layer": kind, "path": paths[kind],
                        "forward_ms": fwd[1], "forward_best_ms": fwd[0],
                        "forward_ratio": fwd[1] / base_fwd,
                        "forward_best_ratio": fwd[0] / times["Conv2D/forward"][0],
                        "train_ms": train[1], "train_best_ms": train[0],
                        "train_ratio": None if forward_only else train[1] / base_train,
                    })
                rows += group
                if log is not None:
                    log(markdown_table(HEADER, [_cells(row) for row in group]))
    return rows


def vgg19_rows(batch=128, densities=(0.01, 0.001), repeats=5, log=print):
    """Train step (`train_on_batch`) of the zoo VGG19 (32x32x3, ERK densities, SGD) against
    the dense zoo VGG19, interleaved; one dict per model with the path of every conv."""
    from keras_dctsparse.models import build_model

    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((batch, 32, 32, 3)), tf.float32)
    y = tf.constant(rng.integers(0, 10, batch))
    functions, paths = {}, {}
    for density in (1.0, *densities):
        name = "dense" if density == 1.0 else f"DCTpS {density:g}"
        kwargs = dict(density=1.0, offset=None) if density == 1.0 else dict(
            density=density, seed=0)
        model = build_model("vgg19", **kwargs)
        model.compile(keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy")
        functions[name] = lambda model=model: model.train_on_batch(x, y)
        paths[name] = " ".join(
            _path(layer, tf.zeros((batch, *layer.input.shape[1:]))).split("/")[0][0]
            for layer in model.layers if hasattr(layer, "_plan")
        ) or "-"
    times = interleaved_ms(functions, repeats)
    rows = [{"model": name, "batch": batch, "paths": paths[name],
             "train_ms": times[name][1], "train_best_ms": times[name][0],
             "train_ratio": times[name][1] / times["dense"][1],
             "train_best_ratio": times[name][0] / times["dense"][0]} for name in functions]
    if log is not None:
        log(markdown_table(
            ["VGG19", "batch", "conv paths (d=dense, s=sparse)", "train step ms (best)",
             "x dense (median)", "x dense (best)"],
            [[r["model"], r["batch"], r["paths"],
              f"{r['train_ms']:.0f} ({r['train_best_ms']:.0f})",
              f"{r['train_ratio']:.2f}", f"{r['train_best_ratio']:.2f}"] for r in rows]))
    return rows


HEADER = ["shape", "batch", "density", "layer", "path", "forward ms (best)",
          "x Conv2D (best)", "train step ms (best)", "x Conv2D"]


def _cells(row):
    train = ["-", "-"] if row["train_ms"] is None else [
        f"{row['train_ms']:.2f} ({row['train_best_ms']:.2f})", f"{row['train_ratio']:.2f}"]
    return [row["shape"], row["batch"], f"{row['density']:g}", row["layer"], row["path"],
            f"{row['forward_ms']:.2f} ({row['forward_best_ms']:.2f})",
            f"{row['forward_ratio']:.2f} ({row['forward_best_ratio']:.2f})", *train]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="two shapes, batch 32, densities 0.01 and 0.001")
    parser.add_argument("--batch", type=int, nargs="*", default=None)
    parser.add_argument("--density", type=float, nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--kinds", nargs="*", default=None,
                        help="candidates besides Conv2D (auto fused sparse native masked)")
    parser.add_argument("--shapes", nargs="*", default=None, metavar="SIZE,C_IN,C_OUT",
                        help="maps to time instead of the default ones, e.g. 4,512,512")
    parser.add_argument("--kernel-size", type=int, default=3,
                        help="square kernel size of every layer (default 3)")
    parser.add_argument("--padding", choices=("same", "valid"), default="same")
    parser.add_argument("--forward-only", action="store_true",
                        help="time the forward alone (no train step)")
    parser.add_argument("--vgg19", action="store_true",
                        help="only the zoo VGG19 train step (batch 128 unless --batch)")
    args = parser.parse_args()
    if args.vgg19:
        vgg19_rows(batch=(args.batch or [128])[0], repeats=args.repeats or 5)
        return
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        try:
            shapes = [tuple(int(v) for v in shape.split(",")) for shape in args.shapes]
        except ValueError:
            shapes = []
        if any(len(shape) != 3 or min(shape) < 1 for shape in shapes) or not shapes:
            parser.error(f"--shapes takes SIZE,C_IN,C_OUT triples of positive ints; "
                         f"received {args.shapes}")
    batches = args.batch or ([32] if args.quick else BATCHES)
    densities = args.density or ([0.01, 0.001] if args.quick else DENSITIES)
    repeats = args.repeats or (5 if args.quick else 7)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; "
          f"interleaved, {repeats} rounds, median (best) ms", flush=True)
    rows = conv_layer_rows(shapes, densities, batches, repeats,
                           log=lambda table: print(table + "\n", flush=True), kinds=args.kinds,
                           forward_only=args.forward_only, kernel_size=args.kernel_size,
                           padding=args.padding)
    print(markdown_table(HEADER, [_cells(row) for row in rows]))


if __name__ == "__main__":
    main()
