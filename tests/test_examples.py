"""The scripts in examples/ run as documented (small data where they take options)."""

import csv
import os
import subprocess
import sys


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name, *args, timeout=180):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    return subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_quickstart():
    proc = run_example("quickstart.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    accuracy = float(next(l for l in lines if l.startswith("test accuracy:")).split()[-1])
    assert accuracy > 0.5
    assert int(lines[-1].split()[-1]) > 0  # trainable sparse entries


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
