"""DCTSparseDense against keras Dense and a masked dense layer: forward and train step.

Prints Markdown tables of milliseconds (best of interleaved runs) and ratios
(`x Dense`: time of the layer divided by the time of `keras.layers.Dense` of
the same shape, measured in the same run, interleaved A, B, A, B; below 1 is
faster). The train step computes the gradients of the input (as every layer
but the first needs) and of all weights, and applies SGD. Each kernel
(`csr`, `gather`, `materialized`), the default `auto` and the masked-dense
baseline are timed, so the table also shows what `auto` picks. A kernel whose
work (`batch * nnz` gathers) would take seconds is skipped ("-").

A second table times a 4096-4096-4096-10 MLP (Adam, batch 256) against its
Dense counterpart.

Run:
    python benchmarks/dense_layer.py            # full tables (30+ min on 2 cores)
    python benchmarks/dense_layer.py --widths 4096 --kinds auto masked  # the 4096 rows
    python benchmarks/dense_layer.py --quick    # 256/1024, batches 1/32, MLP at 1% (~1 min)

`layer_rows` and `mlp_rows` return the rows for other scripts.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import interleaved_ms  # noqa: E402
from common import first_element  # noqa: E402
from common import keras_step  # noqa: E402
from common import layer_step_functions  # noqa: E402
from common import markdown_table  # noqa: E402
from keras_dctsparse import DCTSparseDense  # noqa: E402
from keras_dctsparse.ops import kernel_choice  # noqa: E402
from keras_dctsparse.ops.sparse_matmul import resolve_kernel  # noqa: E402
from keras_dctsparse.ops.support import num_nonzeros  # noqa: E402

KINDS = ("auto", "csr", "gather", "materialized", "native", "masked")
# Skip a kernel when its sparse work (batch * nnz element operations) exceeds this.
MAX_GATHER_WORK = 3e8


def make_layer(kind, units, density):
    if kind == "Dense":
        return keras.layers.Dense(units)
    if kind == "masked":
        return DCTSparseDense(units, density=density, sparse_format="masked")
    return DCTSparseDense(units, density=density, sparse_kernel=kind)


def layer_steps(kind, width, density, batch):
    """`(forward, train_step)` tf.functions of one `width x width` layer."""
    layer = make_layer(kind, width, density)
    layer.build((None, width))
    if kind != "Dense":
        # Nonzero values, as after training.
        weight = layer.sparse_weight
        variable = weight.values if weight.values is not None else weight.masked_kernel
        variable.assign(np.random.default_rng(0).standard_normal(variable.shape) * 0.01)
    x = tf.constant(np.random.default_rng(1).standard_normal((batch, width)), tf.float32)
    dy = tf.constant(np.random.default_rng(2).standard_normal((batch, width)), tf.float32)
    return layer_step_functions(layer, x, dy)


def _skipped(kind, width, density, batch):
    nnz = num_nonzeros(width * width, density)
    if kind == "gather":
        return batch * nnz > MAX_GATHER_WORK
    if kind == "csr":
        return batch * nnz > 4 * MAX_GATHER_WORK
    if kind == "materialized":
        return not kernel_choice.materialized_allowed(width, width)
    return False


def layer_rows(widths, densities, batches, repeats, kinds=KINDS):
    """Timings of single layers; one dict per (width, batch, density, kind).

    Keys: width, batch, density, kind, chosen (what `auto` runs), forward_ms,
    train_ms, forward_ratio, train_ratio (over Dense of the same run).
    """
    rows = []
    for width in widths:
        for batch in batches:
            for density in densities:
                candidates = {"Dense": layer_steps("Dense", width, 1.0, batch)}
                for kind in kinds:
                    if not _skipped(kind, width, density, batch):
                        candidates[kind] = layer_steps(kind, width, density, batch)
                forward = interleaved_ms({k: v[0] for k, v in candidates.items()}, repeats)
                train = interleaved_ms({k: v[1] for k, v in candidates.items()}, repeats)
                nnz = num_nonzeros(width * width, density)
                chosen = resolve_kernel("auto", width, width, nnz, batch)
                # A forward step records no gradient and may choose differently.
                forward_kernel = resolve_kernel("auto", width, width, nnz, batch,
                                                forward_only=True)
                if forward_kernel != chosen:
                    chosen = f"forward {forward_kernel}, train {chosen}"
                for kind in ("Dense",) + tuple(kinds):
                    row = dict(width=width, batch=batch, density=density, kind=kind,
                               chosen=chosen if kind == "auto" else "")
                    if kind in candidates:
                        row.update(
                            forward_ms=forward[kind][0], train_ms=train[kind][0],
                            forward_ratio=forward[kind][0] / forward["Dense"][0],
                            train_ratio=train[kind][0] / train["Dense"][0],
                        )
                    rows.append(row)
                print(markdown_table(HEADER, [_cells(r) for r in rows[-len(kinds) - 1:]]),
                      flush=True)
    return rows


def _mlp(density, dense):
    layers = [keras.Input((4096,))]
    for units, activation in ((4096, "relu"), (4096, "relu"), (10, None)):
        if dense:
            layers.append(keras.layers.Dense(units, activation=activation))
        else:
            layers.append(DCTSparseDense(units, density=density, activation=activation))
    model = keras.Sequential(layers)
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_weights)
    return model, optimizer


def mlp_steps(density, dense, batch):
    model, optimizer = _mlp(density, dense)
    x = tf.constant(np.random.default_rng(1).standard_normal((batch, 4096)), tf.float32)
    y = tf.constant(np.random.default_rng(2).integers(0, 10, batch))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def forward():
        return first_element(model(x))

    def train_step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
        return loss

    return keras_step(forward), keras_step(train_step)


def mlp_rows(densities, batch, repeats):
    """4096-4096-4096-10 MLP (Adam) against Dense; one dict per density."""
    rows = []
    for density in densities:
        candidates = {"Dense": mlp_steps(1.0, True, batch),
                      "DCTpS": mlp_steps(density, False, batch)}
        forward = interleaved_ms({k: v[0] for k, v in candidates.items()}, repeats)
        train = interleaved_ms({k: v[1] for k, v in candidates.items()}, repeats)
        rows.append(dict(
            density=density, batch=batch,
            dense_forward_ms=forward["Dense"][0], dense_train_ms=train["Dense"][0],
            forward_ms=forward["DCTpS"][0], train_ms=train["DCTpS"][0],
            forward_ratio=forward["DCTpS"][0] / forward["Dense"][0],
            train_ratio=train["DCTpS"][0] / train["Dense"][0],
        ))
        print(markdown_table(MLP_HEADER, [_mlp_cells(rows[-1])]), flush=True)
    return rows


HEADER = ["shape", "batch", "density", "layer", "forward ms", "x Dense",
          "train step ms", "x Dense"]
MLP_HEADER = ["density", "batch", "Dense fwd ms", "DCTpS fwd ms", "x Dense",
              "Dense train ms", "DCTpS train ms", "x Dense"]


def _cells(row):
    kind = row["kind"] + (f" ({row['chosen']})" if row["chosen"] else "")
    if "forward_ms" not in row:
        return [f"{row['width']}x{row['width']}", row["batch"], f"{row['density']:g}",
                kind, "-", "-", "-", "-"]
    return [f"{row['width']}x{row['width']}", row["batch"], f"{row['density']:g}", kind,
            f"{row['forward_ms']:.3f}", f"{row['forward_ratio']:.2f}",
            f"{row['train_ms']:.3f}", f"{row['train_ratio']:.2f}"]


def _mlp_cells(row):
    return [f"{row['density']:g}", row["batch"], f"{row['dense_forward_ms']:.2f}",
            f"{row['forward_ms']:.2f}", f"{row['forward_ratio']:.2f}",
            f"{row['dense_train_ms']:.2f}", f"{row['train_ms']:.2f}",
            f"{row['train_ratio']:.2f}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="widths 256 and 1024, batches 1 and 32, 5 repeats, MLP at 1%%")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--densities", type=float, nargs="+",
                        default=[1.0, 0.3, 0.1, 0.01, 0.001])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS))
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--mlp-densities", type=float, nargs="*", default=[0.01, 0.001, 0.1])
    args = parser.parse_args()
    if args.quick:
        args.widths, args.batches, args.repeats = [256, 1024], [1, 32], 5
        args.mlp_densities = [0.01]
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPUs; best of {args.repeats} interleaved runs, ms", flush=True)
    rows = layer_rows(args.widths, args.densities, args.batches, args.repeats,
                      tuple(args.kinds))
    mlp = mlp_rows(args.mlp_densities, 256, args.repeats) if args.mlp_densities else []
    print("\n" + markdown_table(HEADER, [_cells(r) for r in rows]))
    if mlp:
        print("\n4096-4096-4096-10 MLP, Adam\n")
        print(markdown_table(MLP_HEADER, [_mlp_cells(r) for r in mlp]))


if __name__ == "__main__":
    main()
