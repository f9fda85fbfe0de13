"""Which TFLite operators the interpreter evaluates when it prepares the graph.

The TFLite runtime computes some operators once, in `allocate_tensors`, when
all their inputs are constants or tensors computed that way, and keeps the
result read-only (`export.builtin_ops`'s kernels "built at load" rely on it).
This script converts, for each operator, a small graph whose inputs are int32
index ranges that start from `load_time_int` (not foldable by the converter,
known when the graph is prepared), and checks whether the operator's output
already holds the right values after `allocate_tensors`, before any call.

Run:
    python benchmarks/tflite_load_time_ops.py [--ops NAME ...]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from common import markdown_table  # noqa: E402
from keras_dctsparse.export.builtin_ops import load_time_int  # noqa: E402
from keras_dctsparse.export.flatbuffer import tflite_op_names  # noqa: E402

# Each case maps a = [0 .. 5] and b = [3 .. 8] (int32, built at load) to the tested op's output.
CASES = {
    "RANGE": lambda a, b: a,
    "MUL": lambda a, b: a * b,
    "GATHER": lambda a, b: tf.gather(b, a[::-1]),
    "TILE": lambda a, b: tf.tile(a, [2]),
    "CONCATENATION": lambda a, b: tf.concat([a, b], 0),
    "RESHAPE": lambda a, b: tf.reshape(a, [2, 3]),
    "ADD": lambda a, b: a + b,
    "SUB": lambda a, b: a - b,
    "NEG": lambda a, b: -a,
    "MAXIMUM": lambda a, b: tf.maximum(a, 2),
    "FLOOR_DIV": lambda a, b: a // 2,
    "FLOOR_MOD": lambda a, b: a % 4,
    "EQUAL + CAST": lambda a, b: tf.cast(tf.equal(a, 2), tf.int32),
    "SELECT_V2": lambda a, b: tf.where(a > 2, a, b),
    "ONE_HOT": lambda a, b: tf.one_hot(a, 6, dtype=tf.int32),
    "CUMSUM": lambda a, b: tf.cumsum(a),
    "CAST": lambda a, b: tf.cast(a, tf.float32),
    "PACK": lambda a, b: tf.stack([a, b]),
    "TRANSPOSE": lambda a, b: tf.transpose(tf.reshape(a, [2, 3])),
    "BROADCAST_TO": lambda a, b: tf.broadcast_to(a, [2, 6]),
    "SCATTER_ND": lambda a, b: tf.scatter_nd(tf.constant([[1], [3]]), a[:2] * 5, [6]),
    "GATHER_ND": lambda a, b: tf.gather_nd(tf.reshape(a, [2, 3]), tf.constant([[1, 2], [0, 1]])),
    "SLICE": lambda a, b: tf.slice(a, [1], [3]),
    "PAD": lambda a, b: tf.pad(a, [[2, 1]]),
    "REVERSE_V2": lambda a, b: tf.reverse(a, [0]),
    "SQUARED_DIFFERENCE": lambda a, b: tf.math.squared_difference(a, b),
    "SEGMENT_SUM": lambda a, b: tf.math.segment_sum(a, tf.constant([0, 0, 1, 1, 2, 2])),
    "UNSORTED_SEGMENT_SUM": lambda a, b: tf.math.unsorted_segment_sum(
        a, tf.constant([0, 0, 1, 1, 2, 2]), 3),
    "FILL": lambda a, b: tf.fill(tf.reshape(a[2], [1]), 7),
    "SUM (2 outputs)": lambda a, b: tf.reduce_sum(tf.reshape(a, [2, 3]), 1),
    "SUM (12 outputs)": lambda a, b: tf.reduce_sum(tf.reshape(tf.tile(a, [4]), [12, 2]), 1),
    "REDUCE_PROD (2 outputs)": lambda a, b: tf.reduce_prod(tf.reshape(b, [2, 3]), 1),
    "REDUCE_PROD (12 outputs)": lambda a, b: tf.reduce_prod(
        tf.reshape(tf.tile(b, [4]), [12, 2]), 1),
    "SPLIT": lambda a, b: tf.split(a, 2)[1],
    "ARG_MAX": lambda a, b: tf.argmax(tf.reshape(a, [2, 3]), 1, output_type=tf.int32),
    "BITCAST": lambda a, b: tf.bitcast(a, tf.float32),
}
SETUP_OPS = {"SHAPE", "STRIDED_SLICE", "RESHAPE", "RANGE"}


def evaluated_at_load(case):
    """`(operators, at_load)`: the case's operators, and whether its output is ready early."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)], autograph=False)
    def graph(x):
        a = tf.range(load_time_int(x, 0), 6)
        b = tf.range(load_time_int(x, 3), 9)
        return case(a, b)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [graph.get_concrete_function()], graph)
    data = converter.convert()
    operators = [n for n in tflite_op_names(data) if n not in SETUP_OPS] or ["-"]
    interpreter = Interpreter(model_content=data, num_threads=1)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [1, 3])
    interpreter.allocate_tensors()
    out = interpreter.get_output_details()[0]
    try:
        early = np.array(interpreter.get_tensor(out["index"]))
    except ValueError:  # no buffer yet (a dynamic tensor)
        early = None
    interpreter.set_tensor(detail["index"], np.ones((1, 3), np.float32))
    interpreter.invoke()
    computed = np.array(interpreter.get_tensor(out["index"]))
    at_load = early is not None and early.shape == computed.shape and bool(
        np.array_equal(early, computed))
    return operators, at_load


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    rows = []
    for name in args.ops:
        operators, at_load = evaluated_at_load(CASES[name])
        rows.append([name, " ".join(operators), "yes" if at_load else "no"])
    print(markdown_table(["case", "operators (besides the index setup)", "at load"], rows))


if __name__ == "__main__":
    main()
