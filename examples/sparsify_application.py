"""Sparsify a `keras.applications` model: every Conv2D / Dense becomes DCT-plus-sparse.

Builds MobileNetV2 (random weights, 32x32 inputs: no download), converts it with
`keras_dctsparse.sparsify` at a global density of 1% (ERK allocation over the layers), prints
the sparsity report and trains a few steps on random data to show the result is an ordinary
Keras model.

Run: python examples/sparsify_application.py [--density 0.01]
"""

import argparse

import keras
import numpy as np

import keras_dctsparse

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--density", type=float, default=0.01)
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

dense = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10)
model = keras_dctsparse.sparsify(dense, args.density, distribution="erk", seed=0)
print(keras_dctsparse.sparsity_report(model))

model.compile("adam", "sparse_categorical_crossentropy")
rng = np.random.default_rng(0)
x = rng.standard_normal((32 * args.steps, 32, 32, 3)).astype(np.float32)
y = rng.integers(0, 10, len(x))
history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
print("loss after one epoch:", history.history["loss"][-1])
print("trainable parameters:", sum(int(np.prod(w.shape)) for w in model.trainable_weights),
      "of", sum(int(np.prod(w.shape)) for w in dense.trainable_weights), "in the dense model")
