"""Quick start: a DCTpS LeNet-300-100 at 10% density on scikit-learn's bundled digits.

Run: python examples/quickstart.py
"""

import keras
from sklearn.datasets import load_digits

import keras_dctsparse
from keras_dctsparse import DCTSparseDense

digits = load_digits()
x, y = digits.data / 16.0, digits.target
model = keras.Sequential(
    [
        keras.Input((64,)),
        DCTSparseDense(300, density=0.1, activation="relu"),
        DCTSparseDense(100, density=0.1, activation="relu"),
        DCTSparseDense(10, density=0.1, activation="softmax"),
    ]
)
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x[:1400], y[:1400], epochs=20, batch_size=32, verbose=2,
          callbacks=[keras_dctsparse.EnforceSparsity()])
print("test accuracy:", model.evaluate(x[1400:], y[1400:], verbose=0)[1])
print("trainable sparse entries:", sum(layer.nnz for layer in model.layers))
