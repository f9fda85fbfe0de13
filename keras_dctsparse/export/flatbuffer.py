"""Inspection and rewrites of serialized TFLite models (the flatbuffer).

These read and edit the bytes a `tf.lite.TFLiteConverter` returns, through
the flatbuffer schema that ships with TensorFlow: the operator names of a
model (to check that it uses builtin ops only), the bytes of its constants,
and two size rewrites used by `export_tflite` (dropping the stored initial
values of kernel variables built at the first call, stripping internal
tensor names).
"""

import numpy as np

__all__ = [
    "clear_variable_initial_values",
    "strip_tensor_names",
    "tflite_constant_bytes",
    "tflite_op_names",
]


def tflite_op_names(tflite_bytes):
    """Names of the operators of a TFLite model, one per operator, in graph order.

    Reads the flatbuffer directly, so it also works for models the interpreter
    cannot load (for instance with Flex ops). Builtins are given by their
    `BuiltinOperator` name (`"FULLY_CONNECTED"`, `"RFFT2D"`, ...); custom ops as
    `"CUSTOM:<custom code>"`, so Flex ops appear as `"CUSTOM:Flex..."`.

    Args:
        tflite_bytes: The serialized model (`bytes`).

    Returns:
        List of strings.

    Example:

    >>> f = tf.function(lambda x: tf.nn.relu(x) * 2.0, autograph=False,
    ...                 input_signature=[tf.TensorSpec([None, 4])])
    >>> converter = tf.lite.TFLiteConverter.from_concrete_functions(
    ...     [f.get_concrete_function()], f)
    >>> tflite_op_names(converter.convert())
    ['RELU', 'MUL']
    """
    # The flatbuffer schema ships with TensorFlow (and with ai-edge-litert).
    from tensorflow.lite.python import schema_py_generated as schema

    builtin_names = {
        code: name
        for name, code in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }
    model = schema.Model.GetRootAs(bytearray(tflite_bytes), 0)
    names = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(o).OpcodeIndex())
            # Codes below 127 may live only in the deprecated int8 field.
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = builtin_names.get(builtin, f"UNKNOWN_{builtin}")
            if name == "CUSTOM":
                name = "CUSTOM:" + (code.CustomCode() or b"").decode()
            names.append(name)
    return names


def tflite_constant_bytes(tflite_bytes):
    """Total size in bytes of the constant tensors (weights, tables) of a TFLite model.

    The rest of a file is its graph structure (operators, tensor shapes and
    names, signatures), which grows with the number of ops, not with the
    layer sizes.

    Args:
        tflite_bytes: A serialized TFLite model.

    Returns:
        The sum of the sizes of the data buffers of all tensors (each buffer
        counted once).

    Example:

    >>> kernel = np.arange(12, dtype=np.float32).reshape(4, 3)
    >>> f = tf.function(lambda x: tf.matmul(x, kernel), autograph=False,
    ...                 input_signature=[tf.TensorSpec([None, 4])])
    >>> converter = tf.lite.TFLiteConverter.from_concrete_functions(
    ...     [f.get_concrete_function()], f)
    >>> tflite_constant_bytes(converter.convert())  # the 4 x 3 float32 kernel
    48
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytearray(tflite_bytes), 0)
    used = set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            used.add(subgraph.Tensors(t).Buffer())
    total = 0
    for index in used:
        buffer = model.Buffers(index)
        # Buffers past 2 GB live outside the flatbuffer (offset/size fields).
        total += buffer.DataLength() or buffer.Size()
    return total


def clear_variable_initial_values(tflite_bytes, shared_names):
    """Drops the stored initial values of the named resource variables of a TFLite model.

    Building block of a "built once" export: a kernel variable that the
    graph fills at its first invocation (`ASSIGN_VARIABLE` under an `IF` on a
    "built" flag) must be declared in TensorFlow with its full static shape,
    or the converter types the resource as the shape of its initial value
    and folds reads of it; but then the converter stores that initial value
    (zeros, the size of the kernel) in the `CALL_ONCE` initialization
    subgraph. This rewrites each constant assigned to one of `shared_names`
    there as an empty `[0]` tensor with no data, so the file holds no
    kernel-sized tensor; the variable holds an empty tensor until the graph
    assigns the kernel it builds.

    Only a graph that assigns every listed variable before reading it may be
    rewritten this way (a read before the assignment returns an empty tensor).

    Args:
        tflite_bytes: A serialized TFLite model.
        shared_names: Iterable of variable names (`VAR_HANDLE` shared names,
            which are the `tf.Variable` names).

    Returns:
        `(new_bytes, cleared)`: the rewritten model and the sorted list of
        shared names whose initial values were dropped.

    Example:

    A model without such variables is returned unchanged:

    >>> f = tf.function(lambda x: x * 2.0, autograph=False,
    ...                 input_signature=[tf.TensorSpec([None, 4])])
    >>> converter = tf.lite.TFLiteConverter.from_concrete_functions(
    ...     [f.get_concrete_function()], f)
    >>> data, cleared = clear_variable_initial_values(converter.convert(), ["kernel"])
    >>> cleared
    []

    (`export_tflite(..., form="built_once")` applies it to the layers' kernel
    variables; `tests/export/test_flatbuffer.py` shows a kernel dropped.)
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    wanted = {n.encode() if isinstance(n, str) else bytes(n) for n in shared_names}
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    codes = [
        max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes
    ]
    cleared = set()
    for subgraph in model.subgraphs:
        handles = {}
        for op in subgraph.operators:
            code = codes[op.opcodeIndex]
            if code == schema.BuiltinOperator.VAR_HANDLE:
                name = op.builtinOptions.sharedName
                name = name.encode() if isinstance(name, str) else bytes(name or b"")
                handles[int(op.outputs[0])] = name
            elif code == schema.BuiltinOperator.ASSIGN_VARIABLE:
                name = handles.get(int(op.inputs[0]))
                value = subgraph.tensors[int(op.inputs[1])]
                buffer = model.buffers[value.buffer]
                if name in wanted and buffer.data is not None and len(buffer.data):
                    value.shape = np.array([0], dtype=np.int32)
                    value.shapeSignature = None
                    buffer.data = None
                    cleared.add(name.decode())
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), sorted(cleared)


def strip_tensor_names(tflite_bytes):
    """Removes the names of a TFLite model's internal tensors (a few KB of a small model).

    The converter names every tensor after its TensorFlow op (`sequential_1/
    dct_sparse_dense_1/cond/add_5`, ...). The interpreter needs none of them;
    the names of the main subgraph's inputs and outputs are kept, and so are
    the signatures (which refer to tensors by index), so
    `get_input_details`, `get_output_details` and `get_signature_runner`
    work as before.

    Args:
        tflite_bytes: A serialized TFLite model.

    Returns:
        The rewritten model as `bytes`.

    Example:

    >>> f = tf.function(lambda x: tf.nn.relu(x + 1.0) * 2.0, autograph=False,
    ...                 input_signature=[tf.TensorSpec([None, 4], name="pixels")])
    >>> converter = tf.lite.TFLiteConverter.from_concrete_functions(
    ...     [f.get_concrete_function()], f)
    >>> data = converter.convert()
    >>> smaller = strip_tensor_names(data)
    >>> len(smaller) < len(data), tflite_op_names(smaller) == tflite_op_names(data)
    (True, True)
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    for index, subgraph in enumerate(model.subgraphs):
        keep = set()
        if index == 0:
            keep = {int(i) for i in subgraph.inputs} | {int(i) for i in subgraph.outputs}
        for position, tensor in enumerate(subgraph.tensors):
            if position not in keep:
                tensor.name = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
