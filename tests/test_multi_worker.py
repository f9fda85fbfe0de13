"""Multi-worker training: two worker processes on 127.0.0.1 (keras_dctsparse.training).

Each test starts real worker processes (MultiWorkerMirroredStrategy needs one
process per worker), on free local ports, with a time limit, and kills any
process still running when the test ends.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse import training
from keras_dctsparse.experiments import cli, common, data
from keras_dctsparse.experiments import train as train_command
from keras_dctsparse.native import policy

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "multi_worker_cli.py")
TIMEOUT_S = 150


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_workers(command, tmp_path, ports, env=None, tag="run"):
    """Starts one process per port running `command` with its TF_CONFIG."""
    addresses = [f"127.0.0.1:{port}" for port in ports]
    processes = []
    for index in range(len(ports)):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        worker_env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), **STOCK_KERNELS,
                          **(env or {}))
        log = open(tmp_path / f"{tag}-worker{index}.log", "w")
        processes.append(
            subprocess.Popen(command, env=worker_env, stdout=log, stderr=subprocess.STDOUT)
        )
        log.close()
    return processes


def stop(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def wait_all(processes, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
    return codes


def log_text(tmp_path, tag, index):
    return (tmp_path / f"{tag}-worker{index}.log").read_text()


def read_losses(path):
    with open(path) as file:
        rows = list(csv.DictReader(file))
    return [int(r["epoch"]) for r in rows], np.array([float(r["loss"]) for r in rows])


def load_weights(path):
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def train_argv(out, epochs=3):
    return [
        "train", "--model", "lenet300100", "--dataset", "digits", "--train-limit", "256",
        "--density", "0.1", "--epochs", str(epochs), "--batch-size", "64", "--lr", "0.01",
        "--schedule", "constant",  # the single-process check below runs 1 of 3 epochs
        "--seed", "0", "--verbose", "2", "--out", str(out),
    ]


# The comparison with one process below is exact to rounding, so both runs must compute
# with the same kernels. With "auto", a worker's replica (batch 32) and the one process
# (batch 64) can choose different kernels, whose rounding differs; on the digits images
# some DCT coefficients are exactly zero in exact arithmetic, so their ReLU gradient then
# flips between 0 and 1 and Adam carries the difference through training (measured: one
# fc1 unit, pre-activation 4e-9). The native kernels stay off in both runs here; their
# training under a tf.distribute replica context is tested in tests/native/test_policy.py.
STOCK_KERNELS = {"KERAS_DCTSPARSE_NATIVE_KERNELS": "never"}


@pytest.fixture(autouse=True)
def _stock_kernels_in_this_process():
    with policy.native_kernels(STOCK_KERNELS["KERAS_DCTSPARSE_NATIVE_KERNELS"]):
        yield


def reference_losses(argv):
    """Per-epoch losses of one process on the same global batches (same loop, default strategy)."""
    args = cli.build_parser().parse_args(argv)
    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    dataset = common.load_data(args)
    x, y = dataset.x_train[: args.train_limit], dataset.y_train[: args.train_limit]
    steps = -(-len(x) // args.batch_size)
    train_data = data.make_train_dataset(x, y, args.batch_size, seed=args.seed)
    result = training.fit_multi_worker(
        tf.distribute.get_strategy(),
        lambda: train_command.compile_model(train_command.build_model(args, dataset), args, steps * args.epochs),
        train_data,
        args.epochs,
        os.path.join(args.out, "reference-checkpoints"),
        verbose=0,
    )
    return np.array(result.history["loss"]), result.model.get_weights()


def test_two_workers_train_like_one_process(tmp_path):
    out = tmp_path / "run"
    argv = train_argv(out) + ["--distribute", "multi-worker"]
    env = {"DCTSPARSE_TEST_WEIGHTS": str(tmp_path / "weights-{index}.npz")}
    processes = start_workers([sys.executable, DRIVER, *argv], tmp_path, free_ports(2), env)
    try:
        codes = wait_all(processes)
    finally:
        stop(processes)
    assert codes == [0, 0], log_text(tmp_path, "run", 0) + log_text(tmp_path, "run", 1)

    # Identical final weights on both workers.
    chief, other = load_weights(tmp_path / "weights-0.npz"), load_weights(tmp_path / "weights-1.npz")
    assert len(chief) == len(other) > 0
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)

    # The chief writes the run's outputs, worker 1 only its metrics.
    for name in ("results.json", "metrics.csv", "model.keras", "sparsity_report.md",
                 "run_config.json", "saved_model/saved_model.pb", "logs"):
        assert (out / name).exists(), name
    assert sorted(os.listdir(out / "worker-1")) == ["metrics.csv", "run_config.json"]
    assert not (out / "checkpoints").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["args"]["distribute"] == "multi-worker" and results["resumed"] is False

    # Per-epoch loss equals one process on the same global batches.
    epochs, losses = read_losses(out / "metrics.csv")
    assert epochs == [0, 1, 2]
    np.testing.assert_array_equal(losses, read_losses(out / "worker-1" / "metrics.csv")[1])
    expected_losses, expected_weights = reference_losses(train_argv(tmp_path / "reference"))
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    for a, b in zip(chief, expected_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    # The saved model is the trained one.
    saved = keras.saving.load_model(out / "model.keras")
    for a, b in zip(saved.get_weights(), chief):
        np.testing.assert_array_equal(a, b)

    # model.fit in one process (dctsparse train without --distribute): same first epoch.
    single = tmp_path / "single"
    # Multi-worker training is static; the single-process default (RigL) is not.
    assert cli.main(train_argv(single, epochs=1) + ["--sparse-training", "static"]) == 0
    np.testing.assert_allclose(read_losses(single / "metrics.csv")[1], losses[:1], rtol=1e-5)


def test_killed_worker_resumes_from_last_epoch(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, DRIVER, *train_argv(out), "--distribute", "multi-worker"]
    ports = free_ports(2)
    processes = start_workers(command, tmp_path, ports, {"DCTSPARSE_TEST_KILL": "1:0"}, "killed")
    try:
        assert processes[1].wait(timeout=TIMEOUT_S) == -signal.SIGKILL
        try:  # the chief stops on its own when it notices, or is killed here
            processes[0].wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    finally:
        stop(processes)
    assert not (out / "results.json").exists()
    assert read_losses(out / "metrics.csv")[0] == [0]
    first_epoch_loss = read_losses(out / "metrics.csv")[1][0]

    env = {"DCTSPARSE_TEST_WEIGHTS": str(tmp_path / "weights-{index}.npz")}
    processes = start_workers(command, tmp_path, ports, env, "rerun")
    try:
        codes = wait_all(processes)
    finally:
        stop(processes)
    logs = [log_text(tmp_path, "rerun", i) for i in range(2)]
    assert codes == [0, 0], "\n".join(logs)
    for text in logs:
        assert "Resuming from" in text and "(epoch 1)" in text, text
    epochs, losses = read_losses(out / "metrics.csv")
    assert epochs == [0, 1, 2] and losses[0] == first_epoch_loss
    assert read_losses(out / "worker-1" / "metrics.csv")[0] == [0, 1, 2]
    assert json.loads((out / "results.json").read_text())["resumed"] is True
    for a, b in zip(load_weights(tmp_path / "weights-0.npz"), load_weights(tmp_path / "weights-1.npz")):
        np.testing.assert_array_equal(a, b)


def test_multi_worker_needs_tf_config(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    argv = train_argv(tmp_path / "run") + ["--distribute", "multi-worker"]
    assert cli.main(argv) == 2
    assert "TF_CONFIG" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
