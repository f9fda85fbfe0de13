"""Quick start: a DCTpS LeNet-300-100 at 10% density on scikit-learn's bundled digits.

The same recipe as `dctsparse train`'s defaults (README "Results: MNIST"): nonzeros spread
equally over the layers (EPL), Adam 1e-2 with cosine decay, and RigL moving the positions of
S every 50 steps. The same split, model and settings as the README's quick-start command
`dctsparse train --model lenet300100 --dataset digits --density 0.1 --epochs 30
--batch-size 32`.

Run: python examples/quickstart.py [--epochs 30]
"""

import argparse
import math

import keras
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_dctsparse
from keras_dctsparse import DCTSparseDense

parser = argparse.ArgumentParser(description="DCTpS LeNet-300-100 on digits")
parser.add_argument("--epochs", type=int, default=30)
args = parser.parse_args()

digits = load_digits()
x = (digits.data / 16.0).astype("float32")
x_train, x_test, y_train, y_test = train_test_split(
    x, digits.target, test_size=0.2, random_state=0, stratify=digits.target
)
keras.utils.set_random_seed(0)

# 10% of all kernel entries, the same number in each layer (EPL).
units = [300, 100, 10]
shapes = list(zip([x.shape[1]] + units[:-1], units))
densities = keras_dctsparse.allocate_densities(shapes, 0.1, method="epl").densities
model = keras.Sequential([keras.Input((x.shape[1],))])
for width, density in zip(units, densities):
    activation = "softmax" if width == units[-1] else "relu"
    model.add(DCTSparseDense(width, density=density, activation=activation))

batch_size = 32
train_data = (
    tf.data.Dataset.from_tensor_slices((x_train, y_train))
    .shuffle(len(x_train), seed=0)
    .batch(batch_size)
)
steps = args.epochs * math.ceil(len(x_train) / batch_size)
model.compile(
    keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-2, steps)),
    "sparse_categorical_crossentropy",
    metrics=["accuracy"],
)
rigl = keras_dctsparse.RigL(train_data, update_every=50, drop_fraction=0.5)
model.fit(train_data, epochs=args.epochs, verbose=2, callbacks=[rigl])
print("test accuracy:", round(model.evaluate(x_test, y_test, verbose=0)[1], 4))
print("trainable sparse entries:", sum(layer.nnz for layer in model.layers))
print("position updates:", len({update["step"] for update in rigl.updates}))
