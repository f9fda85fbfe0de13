"""Export a DCTpS model to TFLite (builtin ops only) and run it with ai-edge-litert.

Trains a small DCTpS MLP on scikit-learn's digits, writes three `.tflite` files (the implicit
form, where the DCT stays a fast transform; `form="built_once"`, where the interpreter
builds each dense kernel once at the first call; `form="built_at_load"`, where it builds
each DCT kernel when it allocates its tensors and multiplies by S with a sparse
FULLY_CONNECTED), runs them in the interpreter and compares them with Keras.

Run: python examples/tflite_export.py [--out DIR]   (needs `pip install ai-edge-litert`)
"""

import argparse
import os
import tempfile

import keras
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_digits

import keras_dctsparse
from keras_dctsparse import DCTSparseDense

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default=tempfile.mkdtemp(prefix="dctsparse-tflite-"))
parser.add_argument("--epochs", type=int, default=10)
args = parser.parse_args()

digits = load_digits()
x, y = (digits.data / 16.0).astype(np.float32), digits.target
model = keras.Sequential(
    [
        keras.Input((64,)),
        DCTSparseDense(128, density=0.05, activation="relu"),
        DCTSparseDense(10, density=0.05, activation="softmax"),
    ]
)
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x[:1400], y[:1400], epochs=args.epochs, batch_size=32, verbose=0)
expected = model.predict(x[1400:], verbose=0)

os.makedirs(args.out, exist_ok=True)
for form in ("implicit", "built_once", "built_at_load"):
    path = os.path.join(args.out, f"digits_{form}.tflite")
    keras_dctsparse.export_tflite(model, path, form=form)
    interpreter = Interpreter(model_path=path)
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, x[1400:].shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_index, x[1400:])
    interpreter.invoke()
    probabilities = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == y[1400:]))
    print(f"{form}: {path} {os.path.getsize(path)} bytes, test accuracy {accuracy:.4f}, "
          f"max |TFLite - Keras| {np.max(np.abs(probabilities - expected)):.2e}")
