"""Shared test helper: one training step on random data must give a finite loss."""

import numpy as np


def train_step(model, input_shape=(32, 32, 3), num_classes=10, batch=2):
    rng = np.random.RandomState(0)
    x = rng.rand(batch, *input_shape).astype("float32")
    y = np.arange(batch) % num_classes
    model.compile("sgd", "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=1, batch_size=batch, verbose=0)
    assert np.isfinite(history.history["loss"][0])
