"""Multi-worker training on one machine: two worker processes on 127.0.0.1.

`keras_dctsparse.training.fit_multi_worker` trains a Keras model (here a DCTpS
LeNet-300-100 on scikit-learn's digits) with a custom loop under
`tf.distribute.MultiWorkerMirroredStrategy`; Keras 3's `model.fit` does not
support that strategy (keras-team/keras#20585). Every worker runs this same
script with its own `TF_CONFIG`; on several machines, list their addresses in
`cluster.worker` and start one worker per machine.

Run: python examples/multi_worker.py [--epochs 5] [--out runs/multi_worker]

With no `TF_CONFIG` set, the script picks two free ports, starts itself
twice as workers 0 and 1 and waits for both. Worker 0 (the chief) writes
OUT/metrics.csv and OUT/model.keras, worker 1 OUT/worker-1/metrics.csv.
Interrupt it (or kill a worker) and rerun: training resumes from the last
epoch checkpoint in OUT/checkpoints.
"""

import argparse
import json
import os
import socket
import subprocess
import sys


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(argv, workers=2, timeout=600):
    """Starts `workers` copies of this script with TF_CONFIG; returns their exit codes."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(workers)]
    processes = []
    try:
        for index in range(workers):
            tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
            processes.append(subprocess.Popen([sys.executable, __file__, *argv], env=env))
        return [process.wait(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def worker(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    # The strategy must exist before any other TensorFlow call.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    import keras
    from sklearn.datasets import load_digits

    from keras_dctsparse import DCTSparseDense
    from keras_dctsparse.experiments.data import make_train_dataset
    from keras_dctsparse.training import fit_multi_worker, worker_directory

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x, y = (digits.data / 16.0).astype("float32"), digits.target.astype("int32")
    n_train = min(1400, args.train_limit or 1400)  # the last 397 digits are the test set
    # The same global batches on every worker (same seed); each is split over the workers.
    train = make_train_dataset(x[:n_train], y[:n_train], batch_size=64, seed=0)

    def build():
        model = keras.Sequential(
            [
                keras.Input((64,)),
                DCTSparseDense(300, density=0.1, activation="relu", seed=0),
                DCTSparseDense(100, density=0.1, activation="relu", seed=1),
                DCTSparseDense(10, density=0.1, seed=2),
            ]
        )
        model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    folder = worker_directory(args.out, strategy)  # OUT on the chief, OUT/worker-<i> elsewhere
    os.makedirs(folder, exist_ok=True)
    result = fit_multi_worker(
        strategy,
        build,
        train,
        epochs=args.epochs,
        checkpoint_dir=os.path.join(folder, "checkpoints"),
        metrics={"accuracy": keras.metrics.sparse_categorical_accuracy},
        csv_path=os.path.join(folder, "metrics.csv"),
    )
    if result.is_chief:
        result.model.save(os.path.join(args.out, "model.keras"))
        # A direct call needs no other worker (model.predict would run collectives).
        logits = keras.ops.convert_to_numpy(result.model(x[1400:], training=False))
        print(f"test accuracy: {(logits.argmax(-1) == y[1400:]).mean():.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-limit", type=int, default=None, help="train on the first N digits (at most 1400)")
    parser.add_argument("--out", default="runs/multi_worker")
    args = parser.parse_args()
    if "TF_CONFIG" in os.environ:
        worker(args)
        return 0
    codes = launch(sys.argv[1:])
    print(f"worker exit codes: {codes}")
    return max(abs(code) for code in codes)


if __name__ == "__main__":
    sys.exit(main())
