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
    "csr_sparsify_constants",
    "float16_constants",
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


# Operator version of FULLY_CONNECTED with a sparse weight (TFLite's op versioning).
SPARSE_OPERATOR_VERSION = 8


def _index_vector(values):
    """A TFLite sparsity index vector (union type, object) of the narrowest unsigned type."""
    from tensorflow.lite.python import schema_py_generated as schema

    values = np.asarray(values, dtype=np.int64)
    peak = int(values.max()) if values.size else 0
    if peak <= np.iinfo(np.uint8).max:
        vector = schema.Uint8VectorT()
        vector.values = values.astype(np.uint8)
        return schema.SparseIndexVector.Uint8Vector, vector
    if peak <= np.iinfo(np.uint16).max:
        vector = schema.Uint16VectorT()
        vector.values = values.astype(np.uint16)
        return schema.SparseIndexVector.Uint16Vector, vector
    vector = schema.Int32VectorT()
    vector.values = values.astype(np.int32)
    return schema.SparseIndexVector.Int32Vector, vector


def csr_sparsify_constants(tflite_bytes, replacements):
    """Stores named-by-content 2-D float32 constants in TFLite's sparse (CSR) encoding.

    TFLite tensors may carry `SparsityParameters`; with a dense first and a
    `SPARSE_CSR` second dimension (no blocks), the interpreter's
    `FULLY_CONNECTED` runs its sparse kernel on such a weight, from
    `nnz` float32 values, `nnz` column indices and `rows + 1` row segments
    (stored as uint8 / uint16 where they fit). The converter only writes its own
    1x4-block encoding (`Optimize.EXPERIMENTAL_SPARSITY`, four values per
    block). This rewrites each constant whose data equals a given placeholder
    (a `(rows, cols)` float32 array traced into the graph in its place) as the
    given CSR matrix.

    Args:
        tflite_bytes: A serialized TFLite model.
        replacements: List of `(placeholder, values, segments, indices)`:
            `placeholder` a float32 numpy array of shape `(rows, cols)` whose
            bytes identify the constant (use distinct random numbers), and the
            CSR matrix: float32 `values` in row-major order, int `segments` of
            length `rows + 1` (row `r` holds entries `segments[r] ..
            segments[r + 1] - 1`) and int column `indices`.

    Returns:
        The rewritten model as `bytes`.

    Raises:
        ValueError: if a placeholder is the data of no buffer, or the CSR
            arrays do not describe a matrix of its shape.

    Example:

    >>> f = tf.function(lambda x: tf.matmul(x, tf.constant([[0.5, 0.25]]), transpose_b=True),
    ...                 autograph=False, input_signature=[tf.TensorSpec([None, 2])])
    >>> converter = tf.lite.TFLiteConverter.from_concrete_functions(
    ...     [f.get_concrete_function()], f)
    >>> placeholder = np.array([[0.5, 0.25]], np.float32)
    >>> data = csr_sparsify_constants(converter.convert(), [
    ...     (placeholder, np.array([3.0], np.float32), [0, 1], [1])])
    >>> tflite_constant_bytes(data)  # one float32 value (the indices are metadata)
    4
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    sparse_tensors = set()
    by_bytes = {}
    for index, buffer in enumerate(model.buffers):
        if buffer.data is not None and len(buffer.data):
            by_bytes.setdefault(bytes(np.asarray(buffer.data, np.uint8)), []).append(index)
    for placeholder, values, segments, indices in replacements:
        placeholder = np.ascontiguousarray(placeholder, dtype=np.float32)
        rows, cols = placeholder.shape
        found = by_bytes.get(placeholder.tobytes(), [])
        if not found:
            raise ValueError(
                f"A ({rows}, {cols}) placeholder constant is the data of no buffer of "
                "the converted model; expected at least one."
            )
        segments = np.asarray(segments, np.int64)
        indices = np.asarray(indices, np.int64)
        if (
            segments.shape != (rows + 1,)
            or segments[-1] != len(indices)
            or len(indices) != len(values)
        ):
            raise ValueError(
                f"CSR arrays do not describe a ({rows}, {cols}) matrix: "
                f"{len(segments)} segments, {len(indices)} indices, {len(values)} values."
            )
        data = np.frombuffer(
            np.ascontiguousarray(values, dtype=np.float32).tobytes(), dtype=np.uint8
        )
        for index in found:  # one per use of the constant (a layer called twice)
            model.buffers[index].data = data
        dense = schema.DimensionMetadataT()
        dense.format = schema.DimensionType.DENSE
        dense.denseSize = rows
        sparse = schema.DimensionMetadataT()
        sparse.format = schema.DimensionType.SPARSE_CSR
        sparse.arraySegmentsType, sparse.arraySegments = _index_vector(segments)
        sparse.arrayIndicesType, sparse.arrayIndices = _index_vector(indices)
        sparsity = schema.SparsityParametersT()
        sparsity.traversalOrder = np.array([0, 1], dtype=np.int32)
        sparsity.dimMetadata = [dense, sparse]
        for subgraph in model.subgraphs:
            for position, tensor in enumerate(subgraph.tensors):
                if tensor.buffer in found:
                    tensor.sparsity = sparsity
                    sparse_tensors.add((id(subgraph), position))
    # Operators reading a sparse weight get their own operator code of version 8
    # (the converter's version for sparse FULLY_CONNECTED weights): delegates that
    # do not run sparse weights (XNNPACK) decline it by that version instead of
    # reading the CSR values as a dense matrix.
    versioned = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if not any((id(subgraph), int(i)) in sparse_tensors for i in op.inputs if i >= 0):
                continue
            code = model.operatorCodes[op.opcodeIndex]
            if code.version >= SPARSE_OPERATOR_VERSION:
                continue
            if op.opcodeIndex not in versioned:
                sparse_code = schema.OperatorCodeT()
                sparse_code.builtinCode = code.builtinCode
                sparse_code.deprecatedBuiltinCode = code.deprecatedBuiltinCode
                sparse_code.customCode = code.customCode
                sparse_code.version = SPARSE_OPERATOR_VERSION
                model.operatorCodes.append(sparse_code)
                versioned[op.opcodeIndex] = len(model.operatorCodes) - 1
            op.opcodeIndex = versioned[op.opcodeIndex]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# Operator version of DEQUANTIZE with a float16 input (what the converter writes).
FLOAT16_DEQUANTIZE_VERSION = 3


def float16_constants(tflite_bytes, min_elements=2):
    """Stores a TFLite model's float32 constants as float16, each `DEQUANTIZE`d in its subgraph.

    What the converter's float16 quantization does (`supported_types =
    [tf.float16]`), with two differences: scalars (fewer than `min_elements`
    numbers) stay float32, so angle scales such as `pi / (2N)` keep float32
    precision (in float16 they are off by up to 5e-4, which a `COS` of
    angles up to `2 pi` turns into 3e-3 errors); and it applies to every
    subgraph, including `IF` branches that build kernels once (each
    `DEQUANTIZE` is placed first in the subgraph of its constant's users,
    after a leading `CALL_ONCE`, so it runs when that subgraph does). Sparse
    tensors are left as they are.

    Args:
        tflite_bytes: A serialized float32 TFLite model.
        min_elements: Constants with fewer elements keep float32.

    Returns:
        `(new_bytes, count)`: the rewritten model and the number of constants
        stored as float16.

    Example:

    >>> kernel = np.ones((4, 3), np.float32)
    >>> f = tf.function(lambda x: tf.matmul(x, kernel), autograph=False,
    ...                 input_signature=[tf.TensorSpec([None, 4])])
    >>> converter = tf.lite.TFLiteConverter.from_concrete_functions(
    ...     [f.get_concrete_function()], f)
    >>> data, count = float16_constants(converter.convert())
    >>> count, tflite_constant_bytes(data), tflite_op_names(data)
    (1, 24, ['DEQUANTIZE', 'FULLY_CONNECTED'])
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    dequantize = None
    for index, code in enumerate(model.operatorCodes):
        if (
            max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE
            and code.version == FLOAT16_DEQUANTIZE_VERSION
        ):
            dequantize = index
    def codes_of(op):
        code = model.operatorCodes[op.opcodeIndex]
        return max(code.builtinCode, code.deprecatedBuiltinCode)

    count = 0
    replaced = set()
    for subgraph in model.subgraphs:
        inserted = []
        for position, tensor in enumerate(list(subgraph.tensors)):
            if tensor.type != schema.TensorType.FLOAT32 or tensor.isVariable:
                continue
            if tensor.sparsity is not None or not tensor.buffer:
                continue
            data = model.buffers[tensor.buffer].data
            shape = [] if tensor.shape is None else [int(d) for d in tensor.shape]
            if data is None or not len(data) or int(np.prod(shape)) < min_elements:
                continue
            values = np.frombuffer(bytes(np.asarray(data, np.uint8)), dtype=np.float32)
            half = schema.BufferT()
            half.data = np.frombuffer(values.astype(np.float16).tobytes(), dtype=np.uint8)
            model.buffers.append(half)
            stored = schema.TensorT()
            stored.shape = np.array(shape, dtype=np.int32)
            stored.type = schema.TensorType.FLOAT16
            stored.buffer = len(model.buffers) - 1
            subgraph.tensors.append(stored)
            replaced.add(tensor.buffer)
            tensor.buffer = 0  # the empty buffer: now computed by the DEQUANTIZE
            if dequantize is None:
                code = schema.OperatorCodeT()
                code.builtinCode = schema.BuiltinOperator.DEQUANTIZE
                code.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
                code.version = FLOAT16_DEQUANTIZE_VERSION
                model.operatorCodes.append(code)
                dequantize = len(model.operatorCodes) - 1
            op = schema.OperatorT()
            op.opcodeIndex = dequantize
            op.inputs = np.array([len(subgraph.tensors) - 1], dtype=np.int32)
            op.outputs = np.array([position], dtype=np.int32)
            inserted.append(op)
            count += 1
        # After the leading CALL_ONCE (variable initialization), before everything else.
        operators = list(subgraph.operators or [])
        start = 0
        call_once = schema.BuiltinOperator.CALL_ONCE
        while start < len(operators) and codes_of(operators[start]) == call_once:
            start += 1
        subgraph.operators = operators[:start] + inserted + operators[start:]
    # Drop the float32 data that no tensor refers to any more.
    used = {tensor.buffer for subgraph in model.subgraphs for tensor in subgraph.tensors}
    for index in replaced - used:
        model.buffers[index].data = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), count
