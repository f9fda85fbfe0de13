"""`keras.distribution.DataParallel` training on JAX with two processes on 127.0.0.1.

Two worker processes (`data_parallel_worker.py`, `KERAS_BACKEND=jax`, one CPU device
each, gloo collectives) join one JAX cluster and train the same model, each feeding its
half of every global batch; a third process trains the same model on the same global
batches alone, without distribution. Checked for a DCTpS model of `DCTSparseDense`
layers (values and masked storage), one with a `DCTSparseConv2D`, plain
`keras.layers.Dense` (the control), and the DCTpS model with `seed=None` (its layers
draw their position seeds from Keras's global random state, which
`keras.distribution.initialize` makes equal in every process):

- both processes end with identical weights (bit for bit: two-process all-reduce sums
  are the same on both), and every trainable weight has moved from its initial value;
- the loss of every step equals the one-process loss (rtol 1e-5), and so do the final
  weights (to float32 rounding of a different summation order).

The workers start their own JAX processes whatever the backend of this one, so the test
runs once, in the default (TensorFlow) run; `tests/test_backends.py` also collects this
directory under JAX and PyTorch, where it is skipped.
"""

import importlib.util
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from data_parallel_worker import STEPS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(HERE, "data_parallel_worker.py")
MODELS = ("dense", "dctps", "conv", "dctps_unseeded")
TIMEOUT = 180  # seconds for all three processes (about 15 s on two cores)
# Lines of JAX/TF start-up noise left out of the failure output.
NOISE = ("oneDNN", "cuda", "absl::InitializeLog", "[Gloo] Rank")

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("jax") is None, reason="needs JAX (pip install jax)"
    ),
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="starts its own JAX processes; runs once, in the default (TensorFlow) run",
    ),
]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean(text):
    return "\n".join(line for line in text.splitlines() if not any(n in line for n in NOISE))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs the two workers and the one-process reference; returns their output folder."""
    out = str(tmp_path_factory.mktemp("data_parallel"))
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    common = [sys.executable, WORKER, "--models", ",".join(MODELS), "--out", out]
    port = str(_free_port())
    commands = {
        "process 0": common + ["--processes", "2", "--process-id", "0", "--port", port],
        "process 1": common + ["--processes", "2", "--process-id", "1", "--port", port],
        "reference": common + ["--processes", "1"],
    }
    processes = {
        name: subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        for name, command in commands.items()
    }
    outputs, failures = {}, []
    try:
        for name, process in processes.items():
            try:
                outputs[name], _ = process.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                outputs[name], _ = process.communicate()
                failures.append(f"{name} timed out after {TIMEOUT} s")
            if process.returncode != 0:
                failures.append(f"{name} exited with {process.returncode}")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    if failures:
        report = "\n".join(
            f"---- {name}: {' '.join(commands[name][1:])}\n{_clean(text)[-4000:]}"
            for name, text in outputs.items()
        )
        pytest.fail("; ".join(failures) + "\n" + report)
    return out


def _load(out, model, tag):
    error = os.path.join(out, f"{model}-{tag}.error")
    if os.path.exists(error):
        with open(error) as file:
            pytest.fail(f"{model} failed in process {tag}:\n{_clean(file.read())[-4000:]}")
    with np.load(os.path.join(out, f"{model}-{tag}.npz")) as arrays:
        return {key: arrays[key] for key in arrays.files}


@pytest.mark.parametrize(
    "model",
    MODELS,
)
def test_two_processes_match_one(runs, model):
    first, second, reference = (_load(runs, model, tag) for tag in ("0", "1", "ref"))
    assert sorted(first) == sorted(second) == sorted(reference)
    finals = [key for key in reference if key.startswith("final:")]
    assert finals, sorted(reference)

    # Identical weights in both processes, and the same initial weights everywhere.
    for key in reference:
        if key not in ("losses", "trainable"):
            np.testing.assert_array_equal(first[key], second[key], err_msg=key)
        if key.startswith("initial:"):
            np.testing.assert_array_equal(first[key], reference[key], err_msg=key)

    # Training happened: every float weight that is trained moved.
    moved = [
        key for key in finals
        if not np.array_equal(reference[key], reference["initial:" + key[len("final:"):]])
    ]
    trainable = ["final:" + path for path in reference["trainable"]]
    assert sorted(moved) == sorted(trainable), (moved, trainable)

    # Equal to one process training on the same global batches.
    assert len(reference["losses"]) == STEPS and reference["losses"][-1] > 0
    np.testing.assert_allclose(first["losses"], reference["losses"], rtol=1e-5)
    for key in finals:
        if key not in trainable:  # positions, masks
            np.testing.assert_array_equal(first[key], reference[key], err_msg=key)
        else:
            scale = np.max(np.abs(reference[key]))
            np.testing.assert_allclose(
                first[key], reference[key], rtol=1e-4, atol=1e-5 * scale, err_msg=key
            )
