"""The price of sparse, in one table: layers and whole models against their dense baselines.

Runs, in one process and with every candidate interleaved with its baseline:

1. `DCTSparseDense` (default `sparse_kernel="auto"`) against `keras.layers.Dense` and the
   masked dense layer, widths 256/1024/4096, batches 1/32/256, densities 1 to 0.001; the
   train step includes the input gradient (`benchmarks/dense_layer.py`).
2. The 4096-4096-4096-10 MLP (Adam, batch 256) against its Dense version.
3. `DCTSparseConv2D` (default `sparse_kernel="auto"`) against `keras.layers.Conv2D` and the
   masked layer, 3x3 "same", 64-512 channels, maps 8-32, batches 32/128
   (`benchmarks/conv_layer.py`).
4. `model.fit` epochs of the zoo LeNet-300-100, LeNet-5 and VGG19 (32x32x3) at 10%, 1% and 0.1%
   (EPL) against the dense zoo models, batch 128 (`benchmarks/models.py`).

Then it prints every issue-10 target with the measured worst case and whether it is met.
With `--readme README.md` it rewrites the part of the README between
`<!-- price:begin -->` and `<!-- price:end -->` with the tables of this run.

Like the `dctsparse` command line, it runs with TensorFlow's BFC CPU allocator
(`keras_dctsparse.use_bfc_cpu_allocator`, README "TensorFlow's CPU allocator") unless the
environment sets `TF_CPU_ALLOCATOR_USE_BFC` (`false`: `malloc`), for the baselines and
the DCTpS layers alike; the first line of the output names the allocator.

Run:
    python benchmarks/price.py --readme README.md      # everything (about an hour on 2 cores)
    python benchmarks/price.py --quick                 # a few of each, minutes
    TF_CPU_ALLOCATOR_USE_BFC=false python benchmarks/price.py   # with malloc
"""

import argparse
import io
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # before TensorFlow's first tensor
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import conv_layer  # noqa: E402
import dense_layer  # noqa: E402
import models  # noqa: E402
from common import markdown_table  # noqa: E402
from keras_dctsparse.cpu_allocator import bfc_cpu_allocator_active  # noqa: E402

BEGIN, END = "<!-- price:begin -->", "<!-- price:end -->"


def _worst(rows, key, select):
    values = [row[key] for row in rows if key in row and select(row)]
    return max(values) if values else None


def _target_rows(dense, mlp, conv, model_table):
    """`[what, measured worst, target, met]` for every issue-10 target measured here."""
    targets = []

    def add(what, value, bound):
        if value is None:
            return
        # Three decimals where two would round a miss onto the bound (0.124 as "0.12").
        text = f"{value:.2f}x" if value <= bound or round(value, 2) > bound else f"{value:.3f}x"
        targets.append([what, text, f"<= {bound}x", "met" if value <= bound else "NOT met"])

    auto = [r for r in dense if r["kind"] == "auto"]
    add("DCTSparseDense forward, every shape/batch/density", _worst(auto, "forward_ratio",
        lambda r: True), 1.1)
    add("DCTSparseDense train step (with dx), every shape/batch/density",
        _worst(auto, "train_ratio", lambda r: True), 1.1)
    big = lambda d: (lambda r: r["width"] == 4096 and r["batch"] == 256 and r["density"] == d)
    add("4096 wide, batch 256, 1%: forward", _worst(auto, "forward_ratio", big(0.01)), 0.2)
    add("4096 wide, batch 256, 1%: train step", _worst(auto, "train_ratio", big(0.01)), 0.25)
    add("4096 wide, batch 256, 0.1%: forward", _worst(auto, "forward_ratio", big(0.001)), 0.1)
    add("4096 wide, batch 256, 0.1%: train step", _worst(auto, "train_ratio", big(0.001)),
        0.12)
    add("MLP 4096-4096-4096-10 forward, every density", _worst(mlp, "forward_ratio",
        lambda r: True), 1.1)
    add("MLP 4096-4096-4096-10 train step, every density", _worst(mlp, "train_ratio",
        lambda r: True), 1.1)
    conv_auto = [r for r in conv if r["layer"] == "auto"]
    add("DCTSparseConv2D forward, every shape/batch/density",
        _worst(conv_auto, "forward_ratio", lambda r: True), 1.0)
    add("DCTSparseConv2D train step, every shape/batch/density",
        _worst(conv_auto, "train_ratio", lambda r: True), 1.0)
    wide = lambda r: r["density"] == 0.001 and int(r["shape"].split("->")[1]) >= 128
    add("DCTSparseConv2D 0.1%, >= 128 channels: forward",
        _worst(conv_auto, "forward_ratio", wide), 0.5)
    add("DCTSparseConv2D 0.1%, >= 128 channels: train step",
        _worst(conv_auto, "train_ratio", wide), 0.6)
    bounds = {("lenet300100", "DCTpS 0.01"): 1.0, ("lenet5", "DCTpS 0.01"): 1.0,
              ("vgg19", "DCTpS 0.01"): 0.9, ("vgg19", "DCTpS 0.001"): 0.5}
    for name, variant, _, _, ratio in model_table:
        if (name, variant) in bounds:
            add(f"{name} model.fit epoch, {variant}", float(ratio), bounds[(name, variant)])
    return targets


def run(args):
    out = io.StringIO()

    def emit(text=""):
        print(text, flush=True)
        out.write(text + "\n")

    start = time.perf_counter()
    dense = dense_layer.layer_rows(args.widths, args.densities, args.batches, args.repeats,
                                   kinds=("auto", "masked"))
    mlp = dense_layer.mlp_rows(args.densities, 256, args.repeats)
    conv = conv_layer.conv_layer_rows(args.conv_shapes, args.densities, args.conv_batches,
                                      args.repeats, log=None, kinds=("auto", "masked"))
    model_table = []
    for name in args.models:
        examples = args.vgg19_examples if name == "vgg19" else None
        model_table += models.model_rows([name], (0.1, 0.01, 0.001), 128, args.model_repeats,
                                         examples=args.examples or examples)
    minutes = (time.perf_counter() - start) / 60

    allocator = "BFC" if bfc_cpu_allocator_active() else "malloc"
    emit(f"Measured with `python benchmarks/price.py {' '.join(args.argv)}` "
         f"(TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
         f"{allocator} CPU allocator, {minutes:.0f} min). Ratios are DCTpS time over the "
         "dense baseline's time measured interleaved in the same run; below 1 is cheaper.")
    emit()
    emit("Targets (issue 10):")
    emit()
    emit(markdown_table(["target", "measured (worst case)", "target", ""],
                        _target_rows(dense, mlp, conv, model_table)))
    emit()
    emit("Whole models, `model.fit` epoch time (best of interleaved epochs, batch 128):")
    emit()
    emit(markdown_table(models.HEADER, model_table))
    emit()
    emit("`DCTSparseDense` (`auto`: the kernel it chose in brackets) and the masked layer "
         "against `keras.layers.Dense` (best of interleaved runs; the train step computes "
         "the input gradient too):")
    emit()
    emit(markdown_table(dense_layer.HEADER, [dense_layer._cells(r) for r in dense]))
    emit()
    emit("4096-4096-4096-10 MLP (Adam, batch 256) against its Dense version:")
    emit()
    emit(markdown_table(dense_layer.MLP_HEADER, [dense_layer._mlp_cells(r) for r in mlp]))
    emit()
    emit("`DCTSparseConv2D` (`auto`; `path`: what it chose, `s_path/offset_method`, with "
         "`fwd ..., train ...` where the forward alone and the train step differ) and the "
         "masked layer against `keras.layers.Conv2D`, 3x3 \"same\" (median (best) ms of "
         "interleaved runs):")
    emit()
    emit(markdown_table(conv_layer.HEADER, [conv_layer._cells(r) for r in conv]))
    return out.getvalue()


def update_readme(path, text):
    """Replaces the text between the price markers of `path` (atomically)."""
    with open(path) as file:
        readme = file.read()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} section to update.")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        file.write(head + BEGIN + "\n" + text + END + tail)
    os.replace(temporary, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few shapes of each kind, 3 repeats, LeNet-300-100 only")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model-repeats", type=int, default=4)
    parser.add_argument("--vgg19-examples", type=int, default=None,
                        help="VGG19 examples per timed epoch (default: benchmarks/models.py's)")
    parser.add_argument("--readme", default=None,
                        help="rewrite the price section of this README with the tables")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    args.densities = [1.0, 0.3, 0.1, 0.01, 0.001]
    args.widths, args.batches = [256, 1024, 4096], [1, 32, 256]
    args.conv_shapes, args.conv_batches = conv_layer.SHAPES, [32, 128]
    args.models, args.examples = list(models.MODEL_SETTINGS), None
    if args.quick:
        args.widths, args.batches, args.repeats, args.model_repeats = [256, 1024], [1, 32], 3, 2
        args.densities = [1.0, 0.1, 0.01, 0.001]
        args.conv_shapes, args.conv_batches = conv_layer.QUICK_SHAPES, [32]
        args.models, args.examples = ["lenet300100"], 20_000
    text = run(args)
    if args.readme:
        update_readme(args.readme, text)
        print(f"\nUpdated {args.readme}.")


if __name__ == "__main__":
    main()
