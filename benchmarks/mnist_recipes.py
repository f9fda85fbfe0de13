"""Which training recipe gives DCTpS LeNets the best accuracy: chosen on a validation split.

Every configuration trains the zoo's `lenet300100` or `lenet5` on MNIST for 10
epochs and reports the *final-epoch* accuracy on a validation split of 10,000
images held out of the 60,000 training images (fixed split, seed 0; the model
trains on the other 50,000). The test set is not touched here: the README's
final tables (3 seeds, the recipe chosen here, all 60,000 training images) come
from `dctsparse sweep`. Each finished run is appended to `--log` (JSON lines), so
an interrupted search keeps what it measured.

Run (LeNet-300-100, about 15 s per run on 2 CPU cores):
    python benchmarks/mnist_recipes.py --data-dir ../shared/data/mnist \\
        --model lenet300100 --densities 0.01 0.001 --log runs/recipes.jsonl
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from common import markdown_table  # noqa: E402
from keras_dctsparse import models  # noqa: E402
from keras_dctsparse.experiments import data  # noqa: E402
from keras_dctsparse.dynamic_sparsity import DynamicSparsity  # noqa: E402
from keras_dctsparse.layers import DCTSparseLayer  # noqa: E402

BASE = dict(
    offset="dct", distribution="epl", lr=1e-2, schedule="cosine", warmup_epochs=0,
    batch_size=128, sparse_training="static", update_every=100, drop_fraction=0.3,
    end_fraction=0.75, sparse_lr_factor=1.0, standardize=False, epochs=None, layer_nnz=None,
    optimizer="adam", score_batch_size=None,
)
RIGL = dict(BASE, sparse_training="rigl")
CONFIGS = {
    "static (README table recipe)": BASE,
    "RigL": RIGL,
    "SET": dict(BASE, sparse_training="set"),
    "RigL, drop 0.5": dict(RIGL, drop_fraction=0.5),
    "RigL, every 50 steps": dict(RIGL, update_every=50),
    "RigL, every 300 steps": dict(RIGL, update_every=300),
    "RigL, Adam 3e-2": dict(RIGL, lr=3e-2),
    "RigL, ERK": dict(RIGL, distribution="erk"),
    "RigL, 1 epoch warm-up": dict(RIGL, warmup_epochs=1),
    "RigL, S at 3x the lr": dict(RIGL, sparse_lr_factor=3.0),
    "static, S at 3x the lr": dict(BASE, sparse_lr_factor=3.0),
    "static, Adam 3e-2": dict(BASE, lr=3e-2),
    "plain sparse + RigL": dict(RIGL, offset=None),
    "RigL, drop 0.5, every 50": dict(RIGL, drop_fraction=0.5, update_every=50),
    "RigL, drop 0.5, Adam 3e-2": dict(RIGL, drop_fraction=0.5, lr=3e-2),
    "RigL, batch 64": dict(RIGL, batch_size=64),
    "RigL, standardized input": dict(RIGL, standardize=True),
    "RigL, ends at 90%": dict(RIGL, end_fraction=0.9),
    "RigL, S at 1/3 the lr (alpha, biases 3x)": dict(RIGL, lr=3e-2, sparse_lr_factor=1 / 3),
    "RigL, 30 epochs": dict(RIGL, epochs=30),
    "RigL, drop 0.5, every 50, ERK": dict(RIGL, drop_fraction=0.5, update_every=50,
                                          distribution="erk"),
    "RigL, drop 0.5, every 50, Adam 3e-3": dict(RIGL, drop_fraction=0.5, update_every=50,
                                                lr=3e-3),
    "RigL, drop 0.5, every 50, batch 64": dict(RIGL, drop_fraction=0.5, update_every=50,
                                               batch_size=64),
    "static, 30 epochs": dict(BASE, epochs=30),
    "RigL, drop 0.5, every 25": dict(RIGL, drop_fraction=0.5, update_every=25),
    "RigL, drop 0.7, every 50": dict(RIGL, drop_fraction=0.7, update_every=50),
    "RigL, drop 0.5, every 50, scored on 1024 examples": dict(
        RIGL, drop_fraction=0.5, update_every=50, score_batch_size=1024),
    "RigL, drop 0.5, every 50, SGD 0.1 momentum 0.9": dict(
        RIGL, drop_fraction=0.5, update_every=50, optimizer="sgd", lr=0.1),
    "RigL, drop 0.5, every 50, SGD 0.03 momentum 0.9": dict(
        RIGL, drop_fraction=0.5, update_every=50, optimizer="sgd", lr=0.03),
    "RigL, drop 0.5, every 50, AdamW": dict(
        RIGL, drop_fraction=0.5, update_every=50, optimizer="adamw"),
    "RigL, drop 0.5, every 50, batch 32": dict(
        RIGL, drop_fraction=0.5, update_every=50, batch_size=32),
    "RigL, drop 0.5, every 200, batch 32": dict(
        RIGL, drop_fraction=0.5, update_every=200, batch_size=32),
    "RigL, drop 0.5, every 50, 30 epochs": dict(
        RIGL, drop_fraction=0.5, update_every=50, epochs=30),
    "RigL, drop 0.5, every 50, batch 32, scored on 1024 examples": dict(
        RIGL, drop_fraction=0.5, update_every=50, batch_size=32, score_batch_size=1024),
    "RigL, drop 0.5, every 200, batch 32, scored on 1024 examples": dict(
        RIGL, drop_fraction=0.5, update_every=200, batch_size=32, score_batch_size=1024),
    "RigL, drop 0.5, every 50, batch 32, Adam 5e-3": dict(
        RIGL, drop_fraction=0.5, update_every=50, batch_size=32, lr=5e-3),
    "RigL, drop 0.5, every 400, batch 16": dict(
        RIGL, drop_fraction=0.5, update_every=400, batch_size=16),
    "RigL, drop 0.3, every 200, batch 32": dict(
        RIGL, drop_fraction=0.3, update_every=200, batch_size=32),
    "RigL, drop 0.5, every 50, Adam 2e-2": dict(
        RIGL, drop_fraction=0.5, update_every=50, lr=2e-2),
    "RigL, drop 0.5, every 50, Adam 3e-2": dict(
        RIGL, drop_fraction=0.5, update_every=50, lr=3e-2),
    "RigL, drop 0.5, every 200, batch 32, Adam 2e-2, 1 epoch warm-up": dict(
        RIGL, drop_fraction=0.5, update_every=200, batch_size=32, lr=2e-2, warmup_epochs=1),
}


class ScaledAdam(keras.optimizers.Adam):
    """Adam whose step for the values of `S` is `sparse_lr_factor` times the others'."""

    def __init__(self, learning_rate, sparse_lr_factor=1.0, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.sparse_lr_factor = sparse_lr_factor

    def update_step(self, gradient, variable, learning_rate):
        if self.sparse_lr_factor != 1.0 and "sparse_values" in variable.name:
            learning_rate = learning_rate * self.sparse_lr_factor
        super().update_step(gradient, variable, learning_rate)


def _optimizer(config, lr):
    """The recipe's optimizer: Adam (optionally with a separate step for `S`), AdamW or SGD."""
    if config["optimizer"] == "adam":
        return ScaledAdam(lr, config["sparse_lr_factor"])
    if config["sparse_lr_factor"] != 1.0:
        raise ValueError("sparse_lr_factor applies to the Adam recipes only")
    if config["optimizer"] == "adamw":
        return keras.optimizers.AdamW(lr)
    return keras.optimizers.SGD(lr, momentum=0.9)


def model_with_nnz(model_name, input_shape, layer_nnz, offset, seed):
    """The zoo model with the given nonzeros per sparse layer (an allocation outside the four rules).

    Built with the EPL rule, then every DCTpS / sparse layer is cloned with its
    `nnz` replaced (same seed, so the same random stream draws the positions).
    """
    model = models.build_model(
        model_name, input_shape=input_shape, density=0.01, distribution="epl",
        offset=offset, seed=seed,
    )
    sparse = [layer for layer in model.layers if isinstance(layer, DCTSparseLayer)]
    if len(layer_nnz) != len(sparse):
        raise ValueError(
            f"--allocation gives {len(layer_nnz)} numbers; {model_name} has {len(sparse)} "
            f"sparse layers ({', '.join(layer.name for layer in sparse)})."
        )
    nnz_of = {layer.name: nnz for layer, nnz in zip(sparse, layer_nnz)}

    def clone(layer):
        config = layer.get_config()
        if layer.name in nnz_of:
            config.update(nnz=nnz_of[layer.name], density=None)
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def train(model_name, dataset, density, config, seed, epochs):
    epochs = config["epochs"] or epochs
    x_train, x_val = dataset.x_train, dataset.x_val
    if config["standardize"]:
        mean, std = x_train.mean(), x_train.std()
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    keras.utils.set_random_seed(seed)
    if config["layer_nnz"] is not None:
        model = model_with_nnz(
            model_name, dataset.input_shape, config["layer_nnz"], config["offset"], seed
        )
    else:
        model = models.build_model(
            model_name, input_shape=dataset.input_shape, num_classes=dataset.num_classes,
            density=density, distribution=config["distribution"], offset=config["offset"],
            seed=seed,
        )
    steps_per_epoch = -(-len(x_train) // config["batch_size"])
    steps = epochs * steps_per_epoch
    lr = config["lr"]
    if config["schedule"] == "cosine":
        warmup = config["warmup_epochs"] * steps_per_epoch
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else lr, steps - warmup, warmup_target=lr if warmup else None,
            warmup_steps=warmup,
        )
    model.compile(
        _optimizer(config, lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=False),
        metrics=["accuracy"],
    )
    train_data = data.make_train_dataset(
        x_train, dataset.y_train, config["batch_size"], seed=seed
    )
    # RigL's dense gradient is measured on batches of the training data: the training batches,
    # or larger ones (the gradient of several batches at once).
    score_data = train_data
    if config["score_batch_size"]:
        score_data = data.make_train_dataset(
            x_train, dataset.y_train, config["score_batch_size"], seed=seed + 1
        )
    callbacks = []
    if config["sparse_training"] != "static":
        callbacks.append(
            DynamicSparsity(
                config["sparse_training"],
                data=score_data if config["sparse_training"] == "rigl" else None,
                update_every=config["update_every"],
                drop_fraction=config["drop_fraction"],
                end_step=int(config["end_fraction"] * steps),
                seed=seed,
            )
        )
    started = time.time()
    history = model.fit(train_data, epochs=epochs, verbose=0, callbacks=callbacks)
    wall = time.time() - started
    eval_data = data.make_eval_dataset(x_val, dataset.y_val, 1000)
    accuracy = model.evaluate(eval_data, verbose=0, return_dict=True)["accuracy"]
    # Running mean over the last epoch's batches, as Keras reports it.
    return accuracy, history.history["accuracy"][-1], wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--model", default="lenet300100", choices=("lenet300100", "lenet5"))
    parser.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.001])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--log", default=None, help="append each run as a JSON line here")
    parser.add_argument(
        "--allocation", default=None,
        help="nonzeros per sparse layer, e.g. 30,36,200 for lenet300100 (then --densities is "
        "only a label); runs each --configs entry with this allocation instead of its rule",
    )
    args = parser.parse_args()
    if args.allocation:
        layer_nnz = tuple(int(v) for v in args.allocation.split(","))
        for name in args.configs:
            CONFIGS[name] = dict(CONFIGS[name], layer_nnz=layer_nnz)
    dataset = data.load_dataset("mnist", args.data_dir, validation_split=1 / 6, seed=0)
    assert len(dataset.x_train) == 50000 and len(dataset.x_val) == 10000
    start = time.time()
    rows = []
    for name in args.configs:
        cells = []
        for density in args.densities:
            accs = []
            for seed in args.seeds:
                acc, train_acc, wall = train(args.model, dataset, density, CONFIGS[name], seed,
                                             args.epochs)
                accs.append(100 * acc)
                record = dict(model=args.model, config=name, density=density, seed=seed,
                              allocation=args.allocation,
                              val_accuracy=100 * acc, train_accuracy=100 * train_acc,
                              epochs=CONFIGS[name]["epochs"] or args.epochs, fit_s=wall)
                print(json.dumps(record), flush=True)
                if args.log:
                    with open(args.log, "a") as file:
                        file.write(json.dumps(record) + "\n")
            cells.append(f"{sum(accs) / len(accs):.2f}")
        rows.append([name] + cells)
    header = [f"{args.model}, validation acc. (%), seeds {args.seeds}"] + [
        f"density {d:g}" for d in args.densities
    ]
    print()
    print(markdown_table(header, rows))
    print(f"\nwall time {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
