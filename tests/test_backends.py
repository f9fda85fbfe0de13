"""The layers under every Keras backend, each in its own process (KERAS_BACKEND is read
when Keras is imported).

- `tests/backends` (forward and gradients against numpy/scipy, training, `.keras` round
  trips) under JAX and PyTorch; the default run already covers TensorFlow.
- A `.keras` file written under each backend loads under each backend (itself included)
  with the same weights and outputs (`tests/backends/cross_backend.py`).
"""

import importlib.util
import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
BACKENDS = ("tensorflow", "jax", "torch")
MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def _installed(backend):
    return importlib.util.find_spec(MODULES[backend]) is not None


def _run(backend, *args, timeout=900):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT, TESTS] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr


def _require(backend):
    if not _installed(backend):
        pytest.skip(f"{backend} is not installed (pip install -e '.[test]' installs it)")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_layer_reference_suite_under_backend(backend):
    _require(backend)
    code, output = _run(
        backend, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        os.path.join(TESTS, "backends"),
    )
    assert code == 0, output[-6000:]
    assert " passed" in output and " failed" not in output, output[-3000:]


def test_keras_files_load_across_backends(tmp_path):
    backends = [b for b in BACKENDS if _installed(b)]
    if len(backends) < 2:
        pytest.skip(f"needs two backends installed; found {backends}")
    script = os.path.join(TESTS, "backends", "cross_backend.py")
    directories = [str(tmp_path / backend) for backend in backends]
    for backend, directory in zip(backends, directories):
        code, output = _run(backend, script, "save", directory)
        assert code == 0, f"saving under {backend}:\n{output[-4000:]}"
    for backend in backends:
        code, output = _run(backend, script, "load", *directories)
        assert code == 0, f"loading under {backend}:\n{output[-4000:]}"
        for source in backends:
            assert f"{source} -> {backend}: relative error" in output, output[-4000:]
