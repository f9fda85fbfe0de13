"""Helpers shared by the TFLite tests: run a model in ai-edge-litert, check its ops."""

import numpy as np

from keras_dctsparse.ops.tflite_ops import tflite_op_names


def assert_no_flex_ops(tflite_bytes):
    """Fails if the model has any custom op (Flex ops are custom ops)."""
    names = tflite_op_names(tflite_bytes)
    custom = [name for name in names if name.startswith("CUSTOM") or "Flex" in name]
    assert not custom, f"Non-builtin ops in the model: {sorted(set(custom))}"


def relative_error(actual, expected):
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


def run(interpreter, x):
    """Resizes the interpreter's input to `x.shape`, runs it, returns the output."""
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
