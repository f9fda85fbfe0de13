"""Helpers shared by the TFLite tests: run a model in ai-edge-litert, check its ops."""

import numpy as np

from keras_dctsparse.export.flatbuffer import tflite_op_names


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


def _schema_model(tflite_bytes):
    from tensorflow.lite.python import schema_py_generated as schema

    return schema, schema.Model.GetRootAs(bytearray(tflite_bytes), 0)


def largest_constant_bytes(tflite_bytes):
    """Size in bytes of the largest data buffer (constant tensor) of a TFLite model."""
    _, model = _schema_model(tflite_bytes)
    return max(
        (model.Buffers(i).DataLength() or model.Buffers(i).Size())
        for i in range(model.BuffersLength())
    )


def subgraph_op_names(tflite_bytes):
    """Builtin operator names of each subgraph, as a list of lists (main graph first)."""
    schema, model = _schema_model(tflite_bytes)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    result = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        ops = []
        for o in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(o).OpcodeIndex())
            ops.append(names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
        result.append(ops)
    return result
