"""The scripts in examples/ run as documented (small data where they take options)."""

import csv
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name, *args, timeout=180):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    return subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_quickstart():
    proc = run_example("quickstart.py", "--epochs", "8")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()

    def value(prefix):
        return float(next(l for l in lines if l.startswith(prefix)).split()[-1])

    assert value("test accuracy:") > 0.5
    assert value("trainable sparse entries:") == round(0.1 * (64 * 300 + 300 * 100 + 100 * 10))
    # 8 epochs of 45 steps; RigL moves positions every 50 steps until 75% of them.
    assert value("position updates:") == 5


def test_multi_worker_two_processes_on_localhost(tmp_path):
    out = tmp_path / "run"
    proc = run_example("multi_worker.py", "--epochs", "2", "--train-limit", "600", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "worker exit codes: [0, 0]" in proc.stdout
    assert (out / "model.keras").is_file()
    with open(out / "metrics.csv") as file:
        chief = list(csv.DictReader(file))
    with open(out / "worker-1" / "metrics.csv") as file:
        worker = list(csv.DictReader(file))
    assert [row["epoch"] for row in chief] == ["0", "1"] and chief == worker
    accuracy = float(next(l for l in proc.stdout.splitlines() if l.startswith("test accuracy:")).split()[-1])
    assert accuracy > 0.2  # 10 classes: chance is 0.1


def test_jax_data_parallel_two_processes_on_localhost(tmp_path):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("needs JAX (pip install jax)")
    out = tmp_path / "run"
    proc = run_example("jax_data_parallel.py", "--epochs", "2", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "process exit codes: [0, 0]" in proc.stdout
    lines = proc.stdout.splitlines()

    def reported(process):
        prefix = f"process {process}: "
        return sorted(l[len(prefix):] for l in lines if l.startswith(prefix))

    # Both processes report the same loss in every epoch and the same final weights.
    assert len(reported(0)) == 3 and reported(0) == reported(1)
    assert (out / "model.keras").is_file() and (out / "process-1" / "model.keras").is_file()
    # The model trained on JAX, loaded here under the test run's backend.
    assert _accuracy(proc.stdout) > 0.5


def _accuracy(stdout):
    return float(next(l for l in stdout.splitlines() if l.startswith("test accuracy")).split()[-1])


def test_conv_net():
    proc = run_example("conv_net.py", "--epochs", "4")
    assert proc.returncode == 0, proc.stderr
    assert _accuracy(proc.stdout) > 0.5
    assert "DCTSparseConv2D" in proc.stdout  # the sparsity report lists the layers


def test_tflite_export_runs_every_form(tmp_path):
    proc = run_example("tflite_export.py", "--out", str(tmp_path), "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    for form in ("implicit", "built_once", "built_at_load"):
        line = next(l for l in proc.stdout.splitlines() if l.startswith(form + ":"))
        assert float(line.split()[-1]) < 1e-4  # TFLite matches Keras
        assert (tmp_path / f"digits_{form}.tflite").is_file()


def test_sparsify_application():
    proc = run_example("sparsify_application.py", "--steps", "1", timeout=300)
    assert proc.returncode == 0, proc.stderr
    words = next(l for l in proc.stdout.splitlines() if l.startswith("trainable")).split()
    assert int(words[2]) < int(words[4]) / 20  # far fewer trainable parameters than dense
    loss = float(next(l for l in proc.stdout.splitlines() if l.startswith("loss")).split()[-1])
    assert np.isfinite(loss)
