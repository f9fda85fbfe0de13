"""Shared test helper: one training step on random data must give a finite loss."""

import numpy as np


def train_step(model, input_shape=(32, 32, 3), num_classes=10, batch=2):
    rng = np.random.RandomState(0)
    x = rng.rand(batch, *input_shape).astype("float32")
    y = np.arange(batch) % num_classes
    model.compile("sgd", "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=1, batch_size=batch, verbose=0)
    assert np.isfinite(history.history["loss"][0])


_MIRRORED_HARNESS = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
{setup}
single = build()
weights = single.get_weights()
losses_single = single.fit(x, y, epochs=3, batch_size={batch_size}, shuffle=False,
                           verbose=0).history["loss"]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
with strategy.scope():
    mirrored = build()
mirrored.set_weights(weights)
losses_mirrored = mirrored.fit(x, y, epochs=3, batch_size={batch_size}, shuffle=False,
                               verbose=0).history["loss"]
print("LOSSES", losses_single, losses_mirrored)
np.testing.assert_allclose(losses_mirrored, losses_single, rtol={loss_rtol})
for a, b in zip(single.get_weights(), mirrored.get_weights()):
    np.testing.assert_allclose(a, b, rtol={weight_rtol}, atol={weight_atol})
print("MIRRORED OK")
"""


def assert_mirrored_matches_single(setup, batch_size, loss_rtol, weight_rtol, weight_atol):
    """Trains the model of `setup` on one device and under MirroredStrategy over two
    logical CPUs (in a fresh process, since devices are fixed at TF start-up) and
    asserts the same losses and weights.

    `setup` is Python source (not indented) defining `x`, `y` and `build()`.
    """
    import os
    import subprocess
    import sys

    script = _MIRRORED_HARNESS.format(
        setup=setup, batch_size=batch_size, loss_rtol=loss_rtol,
        weight_rtol=weight_rtol, weight_atol=weight_atol,
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert "MIRRORED OK" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
