"""TFLite file size and latency: DCTpS models against dense and masked dense ones.

Two tables, float32, builtin ops only, `ai-edge-litert` interpreter:

LeNet-300-100 (784-300-100-10, relu, relu, softmax):

- `Dense`: `keras.layers.Dense` layers, converted normally.
- `masked 1% + SPARSITY`: the same dense model with every kernel zeroed outside
  a random 1% mask, converted with
  `converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]`
  (TFLite's own sparse tensor encoding and sparse fully-connected kernel).
- `DCTpS d`: `DCTSparseDense` layers at density `d`, exported with
  `keras_dctsparse.export_tflite` (fast DCT + gather/segment-sum sparse part;
  positions as 16-bit gaps where they fit, `narrow_positions`).
- `..., int32 positions`: `narrow_positions=False`, one int32 per nonzero.
- `DCTpS 0.01, form=built_once`: each layer's kernel `alpha * D + S` built
  once by the interpreter at the first call (resource variables), then plain
  `FULLY_CONNECTED` / `CONV_2D`; the file still holds only the nonzeros
  (with `dynamic_int8`: the nonzeros as int8, the kernels still float32).
- `DCTpS 0.01, form=built_at_load`: each layer is `x @ (alpha * D)`, with a
  `FULLY_CONNECTED` weight the interpreter builds when it allocates tensors
  (no per-call copy), plus `x @ S` by a `FULLY_CONNECTED` with a CSR sparse
  weight. `ablation: alpha*D at load, no S` is the same model without the
  sparse FCs (what the sparse part costs); `form=built_once` reads each kernel
  from a resource variable, which TFLite copies on every call.
- `DCTpS 0.01, sparse_product=csr`: the implicit form (fast DCT) with `S` as a
  `FULLY_CONNECTED` with a CSR sparse weight instead of gather/segment-sum.
- `DCTpS 0.01, form=auto`: per layer (`export.tflite.layer_form`): the
  784 x 300 layer implicit with the CSR product, the 300 x 100 and 100 x 10
  layers (under `AUTO_IMPLICIT_MIN_ELEMENTS` entries) built at load.
- `DCTpS 0.01, dct_constants=computed`: the DCT's tables rebuilt by the
  interpreter on every call instead of stored.
- `DCTpS 0.01, float16` / `dynamic_int8`: values (and, for float16, tables)
  stored as float16 / the values as int8 with one scale per layer.
- `DCTpS 0.01, S as FC + SPARSITY`: the same DCTpS 1% model with its sparse
  part exported the other way, as a `FULLY_CONNECTED` whose constant `n x m`
  kernel holds `S` and is stored with TFLite's sparse encoding (the DCT stays
  the same builtin transform). This needs the dense `S` in memory at
  conversion time, which is why `export_tflite` does not use it.

LeNet-5 (conv 6@5x5 same, pool, conv 16@5x5, pool, 120, 84, 10; the zoo's
`lenet5`, EPL allocation):

- `Dense`, `masked 1% + SPARSITY` as above (every Conv2D/Dense kernel masked).
- `Dense, XNNPACK off`: the same dense file run by TFLite's own kernels
  (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`), which is how it runs
  convolutions whose filter is not a stored constant.
- `DCTpS 0.01`: the zoo's DCTpS LeNet-5 at global density 1% (convs exported as
  one CONV_2D with `alpha * Kd + S` rebuilt at run time).
- `form=auto`: the Dense layers built at load time, the convolutions built once.
- `ablation: alpha*D at load, no S`: every layer's offset alone, built at load
  time (`dct_kernel_at_load`): XNNPACK does not take a `CONV_2D` whose filter is
  not a stored constant, so this is as slow as the built-once convolutions.
- `ablation: Dense, each conv twice`: the dense model with every convolution
  done twice with stored filters, the least `conv(x, alpha * Kd) + conv(x, S)`
  can cost with both filters static.

One 4096 x 4096 layer at density 0.1% (`--big-repeats` calls; the issue's target
for the implicit form: file <= 1.5 x nnz x 8 B + 16 KB, latency <= 0.5x dense):

- `Dense`: `keras.layers.Dense(4096)` (64 MB file).
- `DCTpS 0.001` (implicit, the default), with int32 positions, with
  `sparse_product=csr`, and
  `form=built_at_load` (for comparison: `auto` keeps this layer implicit, its
  dense kernel is over the default 8 MiB bound).

With `--layers`, instead: one `DCTSparseDense` layer at density 0.01 per shape
(the shapes behind `export.tflite.AUTO_IMPLICIT_MIN_ELEMENTS`), as `Dense`,
`form=built_at_load` and the implicit form with `sparse_product=csr` (what
`form="auto"` exports at or above that bound, with `dct_constants=at_load`).

Latency: best and median of `Interpreter.invoke()` at batch 1 (default
delegates, `num_threads` threads), input set once, after 20 warm-up calls; the
calls of all files of a table are interleaved (A, B, C, A, B, C, ...), so
machine noise hits them alike. Ratios are to `Dense` of the same table.
`load ms`: `allocate_tensors()` at batch 1 (where a built-at-load file builds
its kernels); `first call ms`: the first `invoke()` alone (where a built-once
file builds its kernels); one sample each, indicative.

Run:
    python benchmarks/tflite.py [--repeats 2000] [--big-repeats 200] [--threads 1]
"""

import argparse
import functools
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from ai_edge_litert.interpreter import OpResolverType  # noqa: E402
from tensorflow.python.framework.convert_to_constants import (  # noqa: E402
    convert_variables_to_constants_v2,
)

from common import markdown_table  # noqa: E402
from keras_dctsparse import DCTSparseDense  # noqa: E402
from keras_dctsparse import models  # noqa: E402
from keras_dctsparse.export import convert_tflite  # noqa: E402
from keras_dctsparse.export.tflite import sparse_entries  # noqa: E402
from keras_dctsparse.layers import DCTSparseLayer  # noqa: E402
from keras_dctsparse.export.builtin_ops import dct_kernel_at_load  # noqa: E402
from keras_dctsparse.export.builtin_ops import load_time_int  # noqa: E402
from keras_dctsparse.export.builtin_ops import dct_offset_builtin  # noqa: E402
from keras_dctsparse.export.flatbuffer import tflite_constant_bytes  # noqa: E402
from keras_dctsparse.export.flatbuffer import tflite_op_names  # noqa: E402

SIZES = (784, 300, 100, 10)
ACTIVATIONS = ("relu", "relu", "softmax")
SPARSITY = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]


def mask_kernels(model, density, seed=0):
    """Zeroes every Dense/Conv kernel of `model` outside a random `density` mask."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if getattr(layer, "kernel", None) is not None:
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            layer.kernel.assign(kernel * (rng.random(kernel.shape) < density))
    return model


def dense_lenet():
    layers = [keras.Input((SIZES[0],))]
    layers += [keras.layers.Dense(m, activation=a) for m, a in zip(SIZES[1:], ACTIVATIONS)]
    return keras.Sequential(layers)


def randomize(model, seed=0):
    """Nonzero sparse values and alpha != 1, as after training."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, DCTSparseLayer):
            weight = layer.sparse_weight
            weight.values.assign(rng.standard_normal(weight.nnz).astype(np.float32) * 0.05)
            if layer.alpha is not None:
                layer.alpha.assign(0.8)
    return model


def dctps_lenet(density, seed=0):
    layers = [keras.Input((SIZES[0],))]
    layers += [
        DCTSparseDense(m, density=density, activation=a, seed=seed + i)
        for i, (m, a) in enumerate(zip(SIZES[1:], ACTIVATIONS))
    ]
    return randomize(keras.Sequential(layers), seed)


def convert_function(function, spec, optimizations=None):
    """Builtins-only conversion of `function` traced at `spec`, variables frozen."""
    traced = tf.function(function, input_signature=[spec])
    # Frozen explicitly: otherwise this converter keeps the Dense kernels as
    # uninitialized resource variables (a 4 KB file without weights).
    frozen = convert_variables_to_constants_v2(traced.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if optimizations:
        converter.optimizations = optimizations
    return converter.convert()


def convert_standard(model, optimizations=None):
    """The usual builtins-only conversion of a standard Keras model."""
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)
    return convert_function(lambda x: model(x, training=False), spec, optimizations)


def convert_fc_sparsity(model):
    """A DCTpS Dense model with each S as a sparse-encoded FULLY_CONNECTED kernel."""
    layers = []
    for layer in model.layers:
        values, rows, cols = sparse_entries(layer)
        kernel = np.zeros(layer.sparse_weight.matrix_shape, np.float32)
        kernel[rows, cols] = values
        alpha = np.float32(keras.ops.convert_to_numpy(layer.alpha))
        bias = keras.ops.convert_to_numpy(layer.bias)
        layers.append((kernel, alpha, bias, layer.activation))

    def forward(x):
        for kernel, alpha, bias, activation in layers:
            offset = dct_offset_builtin(x, kernel.shape[1])
            x = activation(tf.matmul(x, tf.constant(kernel)) + alpha * offset + bias)
        return x

    return convert_function(forward, tf.TensorSpec([None, SIZES[0]], tf.float32), SPARSITY)


def convert_dct_only_at_load(model):
    """Ablation: the built-at-load DCT FULLY_CONNECTEDs of a DCTpS Dense model, without S."""
    layers = []
    for layer in model.layers:
        n, m = layer.sparse_weight.matrix_shape
        alpha = float(keras.ops.convert_to_numpy(layer.alpha))
        bias = keras.ops.convert_to_numpy(layer.bias)
        layers.append((n, m, alpha, bias, layer.activation))

    def forward(x):
        for n, m, alpha, bias, activation in layers:
            kernel = dct_kernel_at_load(x, m, n, alpha)
            x = activation(tf.matmul(x, kernel, transpose_b=True) + bias)
        return x

    return convert_function(forward, tf.TensorSpec([None, SIZES[0]], tf.float32))


def _frozen(layer, name):
    return keras.ops.convert_to_numpy(getattr(layer, name))


def convert_lenet5_offsets_at_load(model):
    """Ablation: a DCTpS LeNet-5 with every `alpha * D` built at load and no `S` at all.

    Each layer is its DCT offset alone, built by the interpreter in
    `allocate_tensors` (`dct_kernel_at_load`, as `form="built_at_load"` builds
    a Dense layer's): the smallest graph that holds the offsets without storing
    them. Its convolutions show what a filter built at load costs: XNNPACK
    takes a `CONV_2D` only when its filter is a stored constant (or a
    `DENSIFY` / `DEQUANTIZE` of one), so these run in TFLite's own kernels.
    """
    alphas = {layer.name: float(_frozen(layer, "alpha")) for layer in model.layers
              if isinstance(layer, DCTSparseLayer)}
    biases = {name: _frozen(model.get_layer(name), "bias") for name in alphas}

    def forward(x):
        ints = functools.partial(load_time_int, x)
        h = x
        for layer in model.layers:
            if not isinstance(layer, DCTSparseLayer):
                h = layer(h)
                continue
            alpha, bias = alphas[layer.name], biases[layer.name]
            if isinstance(layer, DCTSparseDense):
                kernel = dct_kernel_at_load(x, layer.units, h.shape[-1], alpha, ints)
                y = tf.matmul(h, kernel, transpose_b=True)
            else:
                (kh, kw), c_in = layer.kernel_size, h.shape[-1]
                # (c_out, kh * kw * c_in) is TFLite's (out, kh, kw, in) filter, flattened.
                kernel = dct_kernel_at_load(x, layer.filters, kh * kw * c_in, alpha, ints)
                kernel = tf.transpose(tf.reshape(kernel, [layer.filters, kh, kw, c_in]),
                                      [1, 2, 3, 0])
                y = tf.nn.conv2d(h, kernel, 1, layer.padding.upper())
            h = layer.activation(y + bias)
        return h

    return convert_function(forward, tf.TensorSpec([None, 28, 28, 1], tf.float32))


def convert_convs_twice(model):
    """Ablation: the dense LeNet-5 with each convolution done twice, both filters stored.

    `conv(x, K) + conv(x, K')`: the least a DCTpS conv costs in TFLite when
    XNNPACK runs it, as `conv(x, alpha * Kd) + conv(x, S)` with `alpha * Kd`
    and a `DENSIFY`-ed `S` both static (the sum `alpha * Kd + S` can only be
    one static filter if it is stored densely).
    """
    frozen = {layer.name: (_frozen(layer, "kernel"), _frozen(layer, "bias"))
              for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}

    def forward(x):
        h = x
        for layer in model.layers:
            if not isinstance(layer, keras.layers.Conv2D):
                h = layer(h)
                continue
            kernel, bias = frozen[layer.name]
            padding = layer.padding.upper()
            y = tf.nn.conv2d(h, tf.constant(kernel), 1, padding)
            y = y + tf.nn.conv2d(h, tf.constant(kernel[::-1].copy()), 1, padding)
            h = layer.activation(y + bias)
        return h

    return convert_function(forward, tf.TensorSpec([None, 28, 28, 1], tf.float32))


def lenet5(density, offset):
    model = models.build_model(
        "lenet5", input_shape=(28, 28, 1), density=density, distribution="epl",
        offset=offset, seed=0,
    )
    return randomize(model) if offset == "dct" else model


def _ready_interpreter(data, threads, xnnpack=True):
    options = {} if xnnpack else dict(
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter = Interpreter(model_content=data, num_threads=threads, **options)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [1, *detail["shape"][1:]])
    start = time.perf_counter()
    interpreter.allocate_tensors()  # a built-at-load file builds its kernels here
    load_ms = 1000.0 * (time.perf_counter() - start)
    x = np.random.default_rng(1).standard_normal([1, *detail["shape"][1:]]).astype(np.float32)
    interpreter.set_tensor(detail["index"], x)
    start = time.perf_counter()
    interpreter.invoke()  # a built-once file builds its kernels here
    first_ms = 1000.0 * (time.perf_counter() - start)
    for _ in range(20):
        interpreter.invoke()
    return interpreter, load_ms, first_ms


def latencies_ms(files, repeats, threads, xnnpack=None):
    """`(load, first, best, median)` ms per file, the files' calls interleaved.

    `xnnpack`: None (the default delegates for every file), or one bool per file
    (False: TFLite's own kernels only, no XNNPACK).
    """
    xnnpack = xnnpack or [True] * len(files)
    ready = [_ready_interpreter(data, threads, on) for data, on in zip(files, xnnpack)]
    times = [[] for _ in files]
    for _ in range(repeats):
        for (interpreter, _, _), spent in zip(ready, times):
            start = time.perf_counter()
            interpreter.invoke()
            spent.append(time.perf_counter() - start)
    return [
        (load, first, 1000.0 * min(t), 1000.0 * float(np.median(t)))
        for (_, load, first), t in zip(ready, times)
    ]


def table(entries, repeats, threads):
    xnnpack = ["XNNPACK off" not in name for name, _, _ in entries]
    for name, _, data in entries:
        assert not [n for n in tflite_op_names(data) if n.startswith("CUSTOM")], name
    timings = latencies_ms([data for _, _, data in entries], repeats, threads, xnnpack)
    base_size = len(entries[0][2]) / 1024
    _, _, base_best, base_median = timings[0]
    rows = []
    for (name, weights, data), (load, first, best, median) in zip(entries, timings):
        size_kb = len(data) / 1024
        rows.append(
            [
                name,
                weights,
                f"{size_kb:.1f}",
                f"{tflite_constant_bytes(data) / 1024:.1f}",
                f"{size_kb / base_size:.3f}",
                f"{load:.3f}",
                f"{first:.3f}",
                f"{best:.4f}",
                f"{median:.4f}",
                f"{best / base_best:.2f}",
                f"{median / base_median:.2f}",
            ]
        )
    header = [
        "model", "weights / nnz", "size KB", "constants KB", "size x Dense", "load ms",
        "first call ms",
        "best ms",
        "median ms", "best x Dense", "median x Dense",
    ]
    return markdown_table(header, rows)


def kernel_weights(model):
    return sum(
        int(np.prod(layer.kernel.shape))
        for layer in model.layers
        if getattr(layer, "kernel", None) is not None
    )


def nnz(model):
    return sum(layer.nnz for layer in model.layers if isinstance(layer, DCTSparseLayer))


LAYER_SHAPES = ((256, 256), (300, 100), (400, 120), (512, 512), (784, 300), (1000, 1000))


def layer_tables(repeats, threads, caption):
    """One table per `LAYER_SHAPES` entry: Dense, built at load, implicit with CSR."""
    for input_dim, units in LAYER_SHAPES:
        dense = keras.Sequential([keras.Input((input_dim,)), keras.layers.Dense(units)])
        model = randomize(keras.Sequential(
            [keras.Input((input_dim,)), DCTSparseDense(units, density=0.01, seed=0)]
        ))
        entries = [
            ("Dense", input_dim * units, convert_standard(dense)),
            ("DCTpS 0.01, form=built_at_load", nnz(model),
             convert_tflite(model, form="built_at_load")),
            ("DCTpS 0.01, sparse_product=csr, dct_constants=at_load", nnz(model),
             convert_tflite(model, sparse_product="csr", dct_constants="at_load")),
        ]
        print(f"\n{input_dim} x {units} layer TFLite " + caption)
        print(table(entries, repeats, threads))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--big-repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", action="store_true",
                        help="time single layers (LAYER_SHAPES) instead of the models")
    args = parser.parse_args()
    caption = (
        f"(float32, builtins only), batch 1, {args.threads} thread(s), "
        f"best / median of {args.repeats} interleaved calls\n"
    )
    if args.layers:
        layer_tables(args.repeats, args.threads, caption)
        return

    dense_params = sum(n * m for n, m in zip(SIZES[:-1], SIZES[1:]))
    entries = [("Dense", dense_params, convert_standard(dense_lenet()))]
    masked = convert_standard(mask_kernels(dense_lenet(), 0.01), SPARSITY)
    entries.append(("masked 1% + SPARSITY", round(0.01 * dense_params), masked))
    for density in (0.1, 0.01, 0.001):
        model = dctps_lenet(density)
        entries.append((f"DCTpS {density:g}", nnz(model), convert_tflite(model)))
    model = dctps_lenet(0.01)
    entries.append(
        ("DCTpS 0.01, int32 positions", nnz(model),
         convert_tflite(model, narrow_positions=False))
    )
    entries.append(
        ("DCTpS 0.01, form=built_once", nnz(model), convert_tflite(model, form="built_once"))
    )
    entries.append(
        ("DCTpS 0.01, form=built_once, int32 positions", nnz(model),
         convert_tflite(model, form="built_once", narrow_positions=False))
    )
    entries.append(
        ("DCTpS 0.01, form=built_at_load", nnz(model),
         convert_tflite(model, form="built_at_load"))
    )
    entries.append(
        ("ablation: alpha*D at load, no S", 0, convert_dct_only_at_load(model))
    )
    entries.append(
        ("DCTpS 0.01, sparse_product=csr", nnz(model), convert_tflite(model, sparse_product="csr"))
    )
    entries.append(("DCTpS 0.01, form=auto", nnz(model), convert_tflite(model, form="auto")))
    entries.append(
        ("DCTpS 0.01, form=built_once, dynamic_int8", nnz(model),
         convert_tflite(model, form="built_once", quantization="dynamic_int8"))
    )
    entries.append(
        ("DCTpS 0.01, dct_constants=computed", nnz(model),
         convert_tflite(model, dct_constants="computed"))
    )
    for quantization in ("float16", "dynamic_int8"):
        entries.append(
            (f"DCTpS 0.01, {quantization}", nnz(model),
             convert_tflite(model, quantization=quantization))
        )
    entries.append(("DCTpS 0.01, S as FC + SPARSITY", nnz(model), convert_fc_sparsity(model)))
    print("LeNet-300-100 TFLite " + caption)
    print(table(entries, args.repeats, args.threads))

    dense = lenet5(1.0, None)
    entries = [("Dense", kernel_weights(dense), convert_standard(dense))]
    entries.append(("Dense, XNNPACK off", kernel_weights(dense), entries[0][2]))
    masked = convert_standard(mask_kernels(lenet5(1.0, None), 0.01), SPARSITY)
    entries.append(("masked 1% + SPARSITY", round(0.01 * kernel_weights(dense)), masked))
    model = lenet5(0.01, "dct")
    entries.append(("DCTpS 0.01", nnz(model), convert_tflite(model)))
    entries.append(
        ("DCTpS 0.01, form=built_once", nnz(model), convert_tflite(model, form="built_once"))
    )
    entries.append(
        ("DCTpS 0.01, form=built_once, int32 positions", nnz(model),
         convert_tflite(model, form="built_once", narrow_positions=False))
    )
    entries.append(("DCTpS 0.01, form=auto", nnz(model), convert_tflite(model, form="auto")))
    entries.append(
        ("ablation: alpha*D at load, no S", 0, convert_lenet5_offsets_at_load(model))
    )
    entries.append(
        ("ablation: Dense, each conv twice", kernel_weights(dense), convert_convs_twice(dense))
    )
    print("\nLeNet-5 TFLite " + caption)
    print(table(entries, args.repeats, args.threads))

    size = 4096
    dense = keras.Sequential([keras.Input((size,)), keras.layers.Dense(size)])
    entries = [("Dense", size * size, convert_standard(dense))]
    model = randomize(
        keras.Sequential([keras.Input((size,)), DCTSparseDense(size, density=0.001, seed=0)])
    )
    entries.append(("DCTpS 0.001", nnz(model), convert_tflite(model)))
    entries.append(
        ("DCTpS 0.001, int32 positions", nnz(model),
         convert_tflite(model, narrow_positions=False))
    )
    entries.append(
        ("DCTpS 0.001, sparse_product=csr", nnz(model),
         convert_tflite(model, sparse_product="csr"))
    )
    entries.append(
        ("DCTpS 0.001, form=built_at_load", nnz(model),
         convert_tflite(model, form="built_at_load"))
    )
    target_kb = (1.5 * nnz(model) * 8 + 16 * 1024) / 1024
    print(
        f"\n{size} x {size} layer TFLite (target for the implicit form: <= {target_kb:.1f} KB, "
        f"<= 0.5x dense) " + caption.replace(f"{args.repeats} ", f"{args.big_repeats} ")
    )
    print(table(entries, args.big_repeats, args.threads))


if __name__ == "__main__":
    main()
