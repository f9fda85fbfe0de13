"""One process of the two-process JAX data-parallel test (`test_data_parallel.py`).

Trains a small model with `keras.distribution.DataParallel` on CPU devices and writes
what the test compares: the loss of every step and every weight before and after
training, in `DIR/{model}-{process}.npz` (`{model}-ref.npz` for the one-process run).
Models: `dense` (plain `keras.layers.Dense`, the control), `dctps` (`DCTSparseDense`,
values and masked storage, explicit position seeds), `conv` (`DCTSparseConv2D` +
`DCTSparseDense`), `dctps_unseeded` (`dctps` with `seed=None`: positions drawn under
`keras.utils.set_random_seed` only). One process trains them one after another (JAX and
the cluster start once); a model that raises leaves its traceback in
`DIR/{model}-{process}.error` and the next model runs.

    KERAS_BACKEND=jax python tests/backends/data_parallel_worker.py \
        --models dense,dctps,conv --processes 2 --process-id 0 --port 12345 --out DIR

With `--processes 2`, process `i` joins a JAX cluster on 127.0.0.1:PORT
(`keras.distribution.initialize`, gloo CPU collectives), and in every global batch of
`GLOBAL_BATCH` rows it feeds rows `[i * half, (i + 1) * half)`
(`DataParallel(auto_shard_dataset=False)`; Keras assembles the global batch from the
processes' shards in process order). With `--processes 1` it trains the same model on
the same global batches in one process, without any distribution: the reference.

Every process builds the same model (same layer seeds, same Keras seed) and sees the
same data, generated from a fixed seed.
"""

import argparse
import os
import sys
import traceback

GLOBAL_BATCH = 16
STEPS = 6
FEATURES = 24
CLASSES = 5


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dense,dctps,conv,dctps_unseeded")
    parser.add_argument("--processes", type=int, choices=[1, 2], required=True)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def make_data(model_kind):
    """`STEPS` global batches of inputs and integer labels (fixed seed)."""
    import numpy as np

    rng = np.random.default_rng(1234)
    shape = (8, 8, 2) if model_kind == "conv" else (FEATURES,)
    x = rng.standard_normal((STEPS * GLOBAL_BATCH, *shape)).astype("float32")
    y = rng.integers(0, CLASSES, STEPS * GLOBAL_BATCH).astype("int32")
    return x, y


def local_shard(array, process_id, processes):
    """This process's rows of every global batch, in step order."""
    batches = array.reshape(STEPS, GLOBAL_BATCH, *array.shape[1:])
    size = GLOBAL_BATCH // processes
    shard = batches[:, process_id * size : (process_id + 1) * size]
    return shard.reshape(STEPS * size, *array.shape[1:])


def build_model(model_kind):
    import keras

    from keras_dctsparse import DCTSparseConv2D
    from keras_dctsparse import DCTSparseDense

    if model_kind == "dense":
        layers = [
            keras.Input((FEATURES,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(CLASSES),
        ]
    elif model_kind in ("dctps", "dctps_unseeded"):
        # The positions must be the same in every process: explicit seeds, or (unseeded)
        # drawn from the global random state that set_random_seed fixes in each process.
        seeds = (0, 1, 2) if model_kind == "dctps" else (None, None, None)
        layers = [
            keras.Input((FEATURES,)),
            DCTSparseDense(32, density=0.2, activation="relu", seed=seeds[0]),
            DCTSparseDense(
                16, density=0.3, sparse_format="masked", activation="relu", seed=seeds[1]
            ),
            DCTSparseDense(CLASSES, density=0.5, seed=seeds[2]),
        ]
    else:
        layers = [
            keras.Input((8, 8, 2)),
            DCTSparseConv2D(4, 3, padding="same", density=0.3, activation="relu", seed=0),
            keras.layers.Flatten(),
            DCTSparseDense(CLASSES, density=0.2, seed=1),
        ]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def loss_recorder():
    """A callback appending the loss after every training step to its `losses` list.

    Keras reports the running mean of the epoch, which is what the processes compare.
    """
    import keras

    class LossRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    return LossRecorder()


def train(model_kind, process_id, processes):
    """Trains one model.

    Returns:
        `(step losses, initial weights, final weights, trainable weight paths)`, the
        weights as dicts path -> numpy array.
    """
    import keras
    import numpy as np

    def snapshot(model):
        weights = {}
        for weight in model.weights:
            value = weight.value
            if processes > 1:
                # DataParallel replicates every weight: this process's copy is all of it.
                assert value.is_fully_replicated, (weight.path, value.sharding)
                value = value.addressable_data(0)
            weights[weight.path] = np.asarray(value)
        return weights

    keras.utils.set_random_seed(7)  # the same initial weights in every process
    x, y = make_data(model_kind)
    x = local_shard(x, process_id, processes)
    y = local_shard(y, process_id, processes)
    model = build_model(model_kind)
    initial = snapshot(model)
    recorder = loss_recorder()
    model.fit(
        x, y, batch_size=GLOBAL_BATCH // processes, epochs=1, shuffle=False, verbose=0,
        callbacks=[recorder],
    )
    trainable = [weight.path for weight in model.trainable_weights]
    return np.asarray(recorder.losses), initial, snapshot(model), trainable


def main(argv):
    args = parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax

    jax.config.update("jax_platforms", "cpu")
    # Cross-process collectives on CPU devices (JAX's default CPU client has none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np

    if keras.backend.backend() != "jax":
        print(f"needs KERAS_BACKEND=jax; it is {keras.backend.backend()!r}", file=sys.stderr)
        return 2
    if args.processes > 1:
        keras.distribution.initialize(
            job_addresses=f"127.0.0.1:{args.port}",
            num_processes=args.processes,
            process_id=args.process_id,
        )
        devices = keras.distribution.list_devices("cpu")
        assert len(devices) == args.processes, devices
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        )

    os.makedirs(args.out, exist_ok=True)
    tag = "ref" if args.processes == 1 else str(args.process_id)
    for model_kind in args.models.split(","):
        try:
            losses, initial, final, trainable = train(
                model_kind, args.process_id, args.processes
            )
        except Exception:  # recorded for the test, which fails with it
            with open(os.path.join(args.out, f"{model_kind}-{tag}.error"), "w") as file:
                file.write(traceback.format_exc())
            print(f"process {tag}: {model_kind}: failed:\n{traceback.format_exc()[-3000:]}")
            continue
        arrays = {"losses": losses, "trainable": np.asarray(trainable)}
        arrays.update({"initial:" + path: value for path, value in initial.items()})
        arrays.update({"final:" + path: value for path, value in final.items()})
        np.savez(os.path.join(args.out, f"{model_kind}-{tag}.npz"), **arrays)
        print(f"process {tag}: {model_kind}: {len(losses)} steps, loss {losses[-1]:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
