"""Writes and reads `.keras` files of DCTpS models under the backend of KERAS_BACKEND.

Run by tests/test_backends.py, once per backend (the backend is fixed when Keras is
imported, so each backend needs its own process):

    python tests/backends/cross_backend.py save DIR
        builds a model of every DCTpS layer type (values and masked storage), with random
        S, alpha and bias, and writes DIR/model.keras, DIR/inputs.npy, DIR/outputs.npy and
        DIR/weights.json (name, shape, dtype of every weight).
    python tests/backends/cross_backend.py load DIR [DIR ...]
        loads each DIR/model.keras and checks its weights' names, shapes and dtypes and its
        outputs on DIR/inputs.npy against what the writing backend recorded. Exits 1 with
        the differences otherwise.
"""

import json
import os
import sys

import keras
import numpy as np

import keras_dctsparse  # noqa: F401 (registers the layers for loading)
from keras_dctsparse import DCTSparseConv1D
from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense
from keras_dctsparse import DCTSparseDepthwiseConv2D

# Outputs are float32 from different kernels (TF CSR/XLA, keras.ops on JAX or PyTorch).
RTOL = 1e-5


def build_model(seed):
    rng = np.random.default_rng(seed)
    inputs = keras.Input((9, 9, 4))
    x = DCTSparseConv2D(8, 3, padding="same", density=0.2, activation="relu")(inputs)
    x = DCTSparseConv2D(8, 3, groups=2, strides=2, density=0.3, sparse_format="masked")(x)
    x = DCTSparseDepthwiseConv2D(3, depth_multiplier=2, padding="same", density=0.5)(x)
    x = keras.layers.Reshape((16, 16))(x)
    x = DCTSparseConv1D(6, 3, padding="causal", dilation_rate=2, density=0.3)(x)
    x = keras.layers.Flatten()(x)
    x = DCTSparseDense(40, density=0.05, activation="tanh")(x)
    x = DCTSparseDense(7, density=0.2, sparse_format="masked", offset=None)(x)
    outputs = DCTSparseDense(5, density=0.3, sparse_kernel="gather")(x)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        weight = getattr(layer, "sparse_weight", None)
        if weight is None:
            continue
        variable = weight.values if weight.values is not None else weight.masked_kernel
        mask = 1.0 if weight.mask is None else keras.ops.convert_to_numpy(weight.mask)
        variable.assign((rng.standard_normal(variable.shape) * 0.3 * mask).astype("float32"))
        layer.bias.assign(rng.standard_normal(layer.bias.shape).astype("float32"))
        if layer.alpha is not None:
            layer.alpha.assign(float(rng.uniform(0.5, 1.5)))
    return model


def describe(model):
    return [[w.path, list(w.shape), w.dtype] for w in model.weights]


def save(directory):
    os.makedirs(directory, exist_ok=True)
    model = build_model(seed=("tensorflow", "jax", "torch").index(keras.backend.backend()))
    x = np.random.default_rng(1).standard_normal((3, 9, 9, 4)).astype("float32")
    model.save(os.path.join(directory, "model.keras"))
    np.save(os.path.join(directory, "inputs.npy"), x)
    np.save(os.path.join(directory, "outputs.npy"), model.predict(x, verbose=0))
    with open(os.path.join(directory, "weights.json"), "w") as file:
        json.dump({"backend": keras.backend.backend(), "weights": describe(model)}, file)


def load(directory):
    """Returns a list of problems (empty when the file loads with equal outputs)."""
    with open(os.path.join(directory, "weights.json")) as file:
        written = json.load(file)
    source = f"{written['backend']} -> {keras.backend.backend()}"
    model = keras.models.load_model(os.path.join(directory, "model.keras"))
    problems = []
    if describe(model) != written["weights"]:
        problems.append(f"{source}: weights {describe(model)} != {written['weights']}")
    x = np.load(os.path.join(directory, "inputs.npy"))
    expected = np.load(os.path.join(directory, "outputs.npy"))
    actual = model.predict(x, verbose=0)
    error = np.max(np.abs(actual - expected)) / np.max(np.abs(expected))
    if not error <= RTOL:
        problems.append(f"{source}: outputs differ, relative error {error:.3g} > {RTOL}")
    print(f"{source}: relative error {error:.3g}")
    return problems


def main(argv):
    command, directories = argv[1], argv[2:]
    if command == "save":
        save(directories[0])
        return 0
    problems = [problem for directory in directories for problem in load(directory)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
