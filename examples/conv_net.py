"""Convolutions at the price of sparse: a small DCTpS conv net on scikit-learn's digits.

Every Conv2D and Dense kernel is `alpha * D + S` with 10% of its entries trainable; each
conv layer picks its path (`sparse_kernel="auto"`: a fused dense kernel at this density, the
sparse conv path at low densities on big layers). Adam at 1e-2, the learning rate of the
README's MNIST results: at 1e-3 the DCTpS net starts from a large coefficient-0 output and
learns slowly.

Run: python examples/conv_net.py [--epochs 15]
"""

import argparse

import keras
from sklearn.datasets import load_digits

import keras_dctsparse
from keras_dctsparse import DCTSparseConv2D
from keras_dctsparse import DCTSparseDense

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=15)
args = parser.parse_args()

digits = load_digits()
x, y = (digits.images / 16.0)[..., None], digits.target  # (1797, 8, 8, 1)
model = keras.Sequential(
    [
        keras.Input((8, 8, 1)),
        # BatchNorm after each conv, as in the paper's VGG/ResNets: the DCT offset puts the
        # mean of its (non-negative, post-ReLU) inputs into coefficient 0, which BN recenters.
        DCTSparseConv2D(16, 3, padding="same", density=0.1),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        DCTSparseConv2D(32, 3, padding="same", density=0.1),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        DCTSparseDense(10, density=0.1, activation="softmax"),
    ]
)
model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x[:1400], y[:1400], epochs=args.epochs, batch_size=32, verbose=2)
print(keras_dctsparse.sparsity_report(model))
print("test accuracy:", model.evaluate(x[1400:], y[1400:], verbose=0)[1])
