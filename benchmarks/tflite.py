"""TFLite file size and latency: DCTpS LeNet-300-100 against dense and masked dense.

Models (784-300-100-10, relu, relu, softmax, float32, builtin ops only):

- `Dense`: `keras.layers.Dense` layers, converted normally.
- `masked 1% + SPARSITY`: the same dense model with every kernel zeroed outside
  a random 1% mask, converted with
  `converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]`.
- `DCTpS d`: `DCTSparseDense` layers at density `d`, exported with
  `keras_dctsparse.export_tflite` (fast DCT + gather/segment-sum sparse part).

Latency: median of `Interpreter.invoke()` at batch 1 (ai-edge-litert, default
delegates, `num_threads` threads), input set once. Ratios are to `Dense`.

Run:
    python benchmarks/tflite.py [--repeats 2000] [--threads 1]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from tensorflow.python.framework.convert_to_constants import (  # noqa: E402
    convert_variables_to_constants_v2,
)

from common import markdown_table  # noqa: E402
from keras_dctsparse import DCTSparseDense  # noqa: E402
from keras_dctsparse.export import convert_tflite  # noqa: E402
from keras_dctsparse.ops.tflite_ops import tflite_op_names  # noqa: E402

SIZES = (784, 300, 100, 10)
ACTIVATIONS = ("relu", "relu", "softmax")


def dense_lenet(mask_density=None, seed=0):
    rng = np.random.default_rng(seed)
    layers = [keras.Input((SIZES[0],))]
    layers += [keras.layers.Dense(m, activation=a) for m, a in zip(SIZES[1:], ACTIVATIONS)]
    model = keras.Sequential(layers)
    if mask_density is not None:
        for layer in model.layers:
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            mask = rng.random(kernel.shape) < mask_density
            layer.kernel.assign(kernel * mask)
    return model


def dctps_lenet(density, seed=0):
    rng = np.random.default_rng(seed)
    layers = [keras.Input((SIZES[0],))]
    layers += [
        DCTSparseDense(m, density=density, activation=a, seed=seed + i)
        for i, (m, a) in enumerate(zip(SIZES[1:], ACTIVATIONS))
    ]
    model = keras.Sequential(layers)
    for layer in model.layers:  # nonzero values, as after training
        layer.sparse_weight.values.assign(
            rng.standard_normal(layer.nnz).astype(np.float32) * 0.05
        )
        layer.alpha.assign(0.8)
    return model


def convert_standard(model, optimizations=None):
    """The usual builtins-only conversion of a standard Keras model."""
    function = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, SIZES[0]], tf.float32)],
    )
    # Frozen explicitly: otherwise this converter keeps the Dense kernels as
    # uninitialized resource variables (a 4 KB file without weights).
    frozen = convert_variables_to_constants_v2(function.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if optimizations:
        converter.optimizations = optimizations
    return converter.convert()


def latency_ms(data, repeats, threads):
    interpreter = Interpreter(model_content=data, num_threads=threads)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    x = np.random.default_rng(1).standard_normal((1, SIZES[0])).astype(np.float32)
    interpreter.set_tensor(index, x)
    for _ in range(20):
        interpreter.invoke()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    dense_params = sum(n * m for n, m in zip(SIZES[:-1], SIZES[1:]))
    entries = [("Dense", dense_params, convert_standard(dense_lenet()))]
    masked = convert_standard(
        dense_lenet(mask_density=0.01), [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    )
    entries.append(("masked 1% + SPARSITY", round(0.01 * dense_params), masked))
    for density in (0.1, 0.01, 0.001):
        model = dctps_lenet(density)
        nnz = sum(layer.nnz for layer in model.layers)
        entries.append((f"DCTpS {density:g}", nnz, convert_tflite(model)))

    rows = []
    base_size = base_time = None
    for name, weights, data in entries:
        assert not [n for n in tflite_op_names(data) if n.startswith("CUSTOM")], name
        size_kb = len(data) / 1024
        ms = latency_ms(data, args.repeats, args.threads)
        if base_size is None:
            base_size, base_time = size_kb, ms
        rows.append(
            [
                name,
                weights,
                f"{size_kb:.1f}",
                f"{size_kb / base_size:.3f}",
                f"{ms:.4f}",
                f"{ms / base_time:.2f}",
            ]
        )
    header = ["model", "weights / nnz", "size KB", "size x Dense", "latency ms", "latency x Dense"]
    print(
        f"LeNet-300-100 TFLite (float32, builtins only), batch 1, "
        f"{args.threads} thread(s), median of {args.repeats}\n"
    )
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
