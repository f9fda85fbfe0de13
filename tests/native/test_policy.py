"""Where the native kernels may run (`keras_dctsparse.native.policy`), end to end.

The rule that keeps exports portable: Keras's `fit` / `predict` steps and eager calls
get the native ops; `model.export`, plain `tf.function`s and XLA get stock ops only,
and the exported SavedModel loads and serves in a process that never imports
keras_dctsparse.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse import DCTSparseDense
from keras_dctsparse.native import library
from keras_dctsparse.native import policy
from keras_dctsparse.ops import native_matmul

needs_native = pytest.mark.skipif(
    not library.available(), reason=f"native kernels unavailable: {library.unavailable_reason()}"
)


@pytest.fixture
def restore_mode():
    previous = policy.get_native_kernels()
    yield
    policy.set_native_kernels(previous)


def test_modes_and_their_errors(restore_mode):
    assert policy.get_native_kernels() in policy.MODES
    assert policy.set_native_kernels("NEVER") in policy.MODES
    assert policy.get_native_kernels() == "never"
    with policy.native_kernels("always"):
        assert policy.get_native_kernels() == "always"
    assert policy.get_native_kernels() == "never"
    with pytest.raises(ValueError, match=r"`mode` must be one of .*received mode='sometimes'"):
        policy.set_native_kernels("sometimes")


def test_mode_from_the_environment():
    code = "from keras_dctsparse.native import policy; print(policy.get_native_kernels())"
    env = dict(os.environ, KERAS_DCTSPARSE_NATIVE_KERNELS="never")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "never"
    env["KERAS_DCTSPARSE_NATIVE_KERNELS"] = "bogus"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "KERAS_DCTSPARSE_NATIVE_KERNELS='bogus'" in out.stderr


def _where_allowed():
    """allowed_here() eagerly, in a plain tf.function, in strategy.run and under XLA."""
    seen = {}

    def probe(key):
        def body():
            seen[key] = policy.allowed_here()
            return tf.constant(0)
        return body

    seen["eager"] = policy.allowed_here()
    tf.function(probe("function"))()
    tf.function(lambda: tf.distribute.get_strategy().run(probe("replica")))()
    tf.function(probe("xla"), jit_compile=True)()
    return seen


def test_auto_allows_eager_and_replica_steps_only(restore_mode):
    policy.set_native_kernels("auto")
    assert _where_allowed() == {"eager": True, "function": False, "replica": True, "xla": False}


def test_always_and_never(restore_mode):
    policy.set_native_kernels("always")
    assert _where_allowed() == {"eager": True, "function": True, "replica": True, "xla": False}
    policy.set_native_kernels("never")
    assert not any(_where_allowed().values())


def test_no_native_kernels_where_a_gpu_is_visible(restore_mode, monkeypatch):
    policy.set_native_kernels("auto")
    monkeypatch.setattr(policy, "_gpu_visible", lambda: True)
    assert not policy.allowed_here()


def _model():
    # Wide and sparse enough that "auto" takes the native kernel (kernel_choice).
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((64,)),
        DCTSparseDense(1024, density=0.01, activation="relu"),
        DCTSparseDense(10, density=0.2),
    ])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


@needs_native
def test_fit_and_predict_use_native_ops_and_export_does_not(tmp_path, monkeypatch, restore_mode):
    policy.set_native_kernels("auto")
    calls = []
    original = native_matmul.native_offset_matmul

    def recording(*args, **kwargs):
        calls.append(tf.executing_eagerly())
        return original(*args, **kwargs)

    monkeypatch.setattr(native_matmul, "native_offset_matmul", recording)
    model = _model()
    x = np.random.default_rng(0).standard_normal((32, 64)).astype("float32")
    y = np.random.default_rng(1).standard_normal((32, 10)).astype("float32")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert calls, "model.fit traced no native product"
    calls.clear()
    model.predict(x, verbose=0)
    assert calls, "model.predict traced no native product"
    calls.clear()
    model.export(str(tmp_path / "served"), verbose=False)
    assert not calls, "model.export traced a native product"
    graph = (tmp_path / "served" / "saved_model.pb").read_bytes()
    assert b"DctSparse" not in graph


@needs_native
def test_exported_model_serves_without_keras_dctsparse(tmp_path, restore_mode):
    policy.set_native_kernels("auto")
    model = _model()
    x = np.random.default_rng(0).standard_normal((8, 64)).astype("float32")
    model.fit(x, np.zeros((8, 10), "float32"), epochs=1, verbose=0)  # nonzero values
    model.export(str(tmp_path / "served"), verbose=False)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"served = tf.saved_model.load({str(tmp_path / 'served')!r})\n"
        f"y = served.serve(np.load({str(tmp_path / 'x.npy')!r})).numpy()\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
        "assert 'keras_dctsparse' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
