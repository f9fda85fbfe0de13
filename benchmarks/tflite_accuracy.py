"""Test accuracy of exported TFLite files against the Keras model they come from.

For each trained `.keras` model given (for example from `dctsparse train` or
`dctsparse sweep`), exports it with `keras_dctsparse.export_tflite` as float32,
float16 and dynamic-range int8 (`quantization=`) in the implicit form, as
float32, float16 and dynamic-range int8 with `form="built_once"`, and as float32
with `form="built_at_load"` (the Dense layers; convolutions are then built
once) and `form="auto"` (per layer, `export.tflite.layer_form`), runs the MNIST test set
through the `ai-edge-litert` interpreter and prints a table: file size, test
accuracy, its change from Keras, and the largest absolute difference of the
output probabilities.

Run (after the README's sweeps, which write these models):
    python benchmarks/tflite_accuracy.py --data-dir ../shared/data/mnist \\
        runs/mnist_lenet300100/d0.01_dct_s0/model.keras \\
        runs/mnist_lenet5/d0.01_dct_s0/model.keras
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from common import markdown_table  # noqa: E402
import keras_dctsparse  # noqa: E402,F401  (registers the layers)
from keras_dctsparse.experiments import data  # noqa: E402
from keras_dctsparse.export import export_tflite  # noqa: E402


EXPORTS = (
    ("implicit", None),
    ("implicit", "float16"),
    ("implicit", "dynamic_int8"),
    ("built_once", None),
    ("built_once", "float16"),
    ("built_once", "dynamic_int8"),
    ("built_at_load", None),
    ("auto", None),
)


def interpreter_outputs(path, x, batch=1000):
    interpreter = Interpreter(model_path=path)
    index = interpreter.get_input_details()[0]["index"]
    output = interpreter.get_output_details()[0]["index"]
    outputs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        interpreter.resize_tensor_input(index, chunk.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, chunk)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output).copy())
    return np.concatenate(outputs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help=".keras files trained on MNIST")
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    args = parser.parse_args()
    dataset = data.load_dataset("mnist", args.data_dir)
    x, y = dataset.x_test.astype(np.float32), dataset.y_test
    rows = []
    for model_path in args.models:
        model = keras.saving.load_model(model_path)
        expected = model.predict(x, batch_size=1000, verbose=0)
        keras_accuracy = float(np.mean(expected.argmax(-1) == y))
        name = os.path.relpath(model_path)
        rows.append([name, "Keras", "-", f"{100 * keras_accuracy:.2f}", "-", "-"])
        with tempfile.TemporaryDirectory() as folder:
            for form, quantization in EXPORTS:
                path = os.path.join(folder, f"{form}_{quantization}.tflite")
                export_tflite(model, path, quantization=quantization, form=form)
                actual = interpreter_outputs(path, x)
                accuracy = float(np.mean(actual.argmax(-1) == y))
                rows.append(
                    [
                        name,
                        f"TFLite {quantization or 'float32'}"
                        + ("" if form == "implicit" else f", {form}"),
                        f"{os.path.getsize(path) / 1024:.1f}",
                        f"{100 * accuracy:.2f}",
                        f"{100 * (accuracy - keras_accuracy):+.2f}",
                        f"{np.abs(actual - expected).max():.1e}",
                    ]
                )
    header = ["model", "format", "size KB", "test acc. (%)", "change (points)", "max |dp|"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
