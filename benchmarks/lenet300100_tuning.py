"""What each training choice does to DCTpS LeNet-300-100 on MNIST (one seed per cell).

Trains LeNet-300-100 (the zoo's `lenet300100`) for the listed configurations
at densities 0.01 and 0.001 and prints the final-epoch test accuracy of each:
one change at a time from the issue's prototype setting (EPL allocation,
Adam 1e-3 constant, batch 128, 10 epochs) and from the setting the README's
results table uses (EPL, Adam 1e-2 with cosine decay). Seed 0 only: these
numbers show directions; the spread over seeds is in the results table.

Run (about 25 minutes on 2 CPU cores):
    python benchmarks/lenet300100_tuning.py --data-dir ../shared/data/mnist
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from common import markdown_table  # noqa: E402
from keras_dctsparse.experiments import data  # noqa: E402
from keras_dctsparse import models  # noqa: E402
from keras_dctsparse.callbacks import EnforceSparsity  # noqa: E402

BASE = dict(
    offset="dct", distribution="epl", optimizer="adam", lr=1e-2, schedule="cosine",
    epochs=10, batch_size=128, alpha=None, alpha_trainable=True, standardize=False,
)
PROTOTYPE = dict(BASE, lr=1e-3, schedule="constant")
CONFIGS = [
    ("prototype: Adam 1e-3 constant", PROTOTYPE),
    ("Adam 3e-3 constant", dict(PROTOTYPE, lr=3e-3)),
    ("Adam 1e-2 constant", dict(PROTOTYPE, lr=1e-2)),
    ("**Adam 1e-2 cosine (results table)**", BASE),
    ("Adam 3e-2 cosine", dict(BASE, lr=3e-2)),
    ("Adam 3e-3 cosine, batch 32", dict(BASE, lr=3e-3, batch_size=32)),
    ("SGD momentum 0.9, 0.1 cosine", dict(BASE, optimizer="sgd", lr=0.1)),
    ("ERK allocation", dict(BASE, distribution="erk")),
    ("uniform allocation", dict(BASE, distribution="uniform")),
    ("alpha initialized to 2", dict(BASE, alpha=2.0)),
    ("alpha frozen at 1", dict(BASE, alpha_trainable=False)),
    ("standardized input", dict(BASE, standardize=True)),
    ("30 epochs", dict(BASE, epochs=30)),
    ("plain sparse (no offset)", dict(BASE, offset=None)),
]
DENSE = [("dense, Adam 1e-3 constant", PROTOTYPE), ("dense, Adam 1e-2 cosine", BASE)]


def train(dataset, density, config, seed=0):
    keras.utils.set_random_seed(seed)
    model = models.build_model(
        "lenet300100", input_shape=dataset.input_shape, num_classes=dataset.num_classes,
        density=density, distribution=config["distribution"], offset=config["offset"],
        seed=seed,
    )
    for layer in model.layers:
        if getattr(layer, "alpha", None) is not None:
            if config["alpha"] is not None:
                layer.alpha.assign(config["alpha"])
            layer.alpha.trainable = config["alpha_trainable"]
    x_train, x_test = dataset.x_train, dataset.x_test
    if config["standardize"]:
        mean, std = x_train.mean(), x_train.std()
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    steps = config["epochs"] * -(-len(x_train) // config["batch_size"])
    lr = config["lr"]
    if config["schedule"] == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, steps)
    optimizer = (
        keras.optimizers.Adam(lr)
        if config["optimizer"] == "adam"
        else keras.optimizers.SGD(lr, momentum=0.9)
    )
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    train_data = data.make_train_dataset(x_train, dataset.y_train, config["batch_size"], seed=seed)
    model.fit(train_data, epochs=config["epochs"], verbose=0, callbacks=[EnforceSparsity()])
    test_data = data.make_eval_dataset(x_test, dataset.y_test, 1000)
    return model.evaluate(test_data, verbose=0, return_dict=True)["accuracy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.001])
    args = parser.parse_args()
    dataset = data.load_dataset("mnist", args.data_dir)
    start = time.time()
    rows = []
    for name, config in CONFIGS:
        cells = [f"{100 * train(dataset, d, config):.2f}" for d in args.densities]
        rows.append([name] + cells)
        print(" | ".join(rows[-1]), flush=True)
    header = ["LeNet-300-100, seed 0"] + [f"density {d:g}" for d in args.densities]
    print()
    print(markdown_table(header, rows))
    dense = [f"{name}: {100 * train(dataset, 1.0, dict(config, offset=None)):.2f}"
             for name, config in DENSE]
    print("\nDense baseline (density 1), test accuracy (%): " + "; ".join(dense))
    print(f"\nwall time {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
