"""Multi-host data-parallel training on JAX: two processes on 127.0.0.1.

Keras's own distribution API (`keras.distribution.DataParallel`, JAX backend) trains a
DCTpS LeNet-300-100 on scikit-learn's digits. Every process runs this same script with
`--process-id`; they join one JAX cluster (`keras.distribution.initialize`; on CPU, JAX's
gloo collectives) and each feeds its own half of every global batch
(`auto_shard_dataset=False`). The weights are replicated: every process ends with the
same model. On several machines, pass the first one's address as `--coordinator` and
start one process per machine (or per accelerator host).

Run: python examples/jax_data_parallel.py [--epochs 5] [--out runs/jax_data_parallel]

With no `--process-id`, the script picks a free port, starts itself twice (processes 0
and 1, `KERAS_BACKEND=jax`), waits for both, then loads the model process 0 saved
(OUT/model.keras) under this process's Keras backend and reports its test accuracy.
Every process prints the loss of each epoch and a digest of its final weights.

The position seeds are explicit (`seed=`): every process must build the same sparse
positions (with `seed=None` each process would draw its own).
"""

import argparse
import hashlib
import os
import socket
import subprocess
import sys

GLOBAL_BATCH = 64


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_digits():
    """Digits as float32 in [0, 1]: 1400 training and 397 test images (fixed order)."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x, y = (digits.data / 16.0).astype("float32"), digits.target.astype("int32")
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def local_rows(size, process_id, processes, seed):
    """This process's share of every global batch of a shuffled epoch.

    Every process draws the same permutation (same seed), cuts it into global batches
    of `GLOBAL_BATCH` rows and keeps its `1 / processes` of each, so that Keras, which
    concatenates the processes' shards in process order, sees the global batches.
    """
    import numpy as np

    order = np.random.default_rng(seed).permutation(size)
    order = order[: size - size % (GLOBAL_BATCH)]  # whole global batches only
    batches = order.reshape(-1, processes, GLOBAL_BATCH // processes)
    return batches[:, process_id].reshape(-1)


def worker(args):
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras
    import numpy as np

    from keras_dctsparse import DCTSparseDense

    keras.distribution.initialize(
        job_addresses=args.coordinator,
        num_processes=args.processes,
        process_id=args.process_id,
    )
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(
            devices=keras.distribution.list_devices(), auto_shard_dataset=False
        )
    )
    keras.utils.set_random_seed(0)  # the same initial values in every process

    (x, y), _ = load_digits()
    model = keras.Sequential(
        [
            keras.Input((64,)),
            DCTSparseDense(300, density=0.1, activation="relu", seed=0),
            DCTSparseDense(100, density=0.1, activation="relu", seed=1),
            DCTSparseDense(10, density=0.1, seed=2),
        ]
    )
    model.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    local_batch = GLOBAL_BATCH // args.processes
    for epoch in range(args.epochs):
        rows = local_rows(len(x), args.process_id, args.processes, seed=epoch)
        history = model.fit(
            x[rows], y[rows], batch_size=local_batch, epochs=1, shuffle=False, verbose=0
        )
        print(f"process {args.process_id}: epoch {epoch} loss {history.history['loss'][-1]:.6f}")
    digest = hashlib.sha256()
    for weight in model.weights:
        # Replicated: this process's copy is the whole weight.
        digest.update(np.asarray(weight.value.addressable_data(0)).tobytes())
    print(f"process {args.process_id}: weights sha256 {digest.hexdigest()}")
    # Every process saves (reading distributed weights takes all processes); process 0
    # writes OUT/model.keras, process i OUT/process-i/model.keras.
    folder = args.out if args.process_id == 0 else os.path.join(args.out, f"process-{args.process_id}")
    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, "model.keras"))


def launch(args, processes=2, timeout=600):
    """Starts `processes` copies of this script on 127.0.0.1; returns their exit codes."""
    coordinator = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONUNBUFFERED="1")
    children = []
    try:
        for index in range(processes):
            command = [
                sys.executable, __file__, "--epochs", str(args.epochs), "--out", args.out,
                "--coordinator", coordinator, "--processes", str(processes),
                "--process-id", str(index),
            ]
            # Each child's stdout goes to its own pipe and is printed whole after it
            # ends: two processes writing one stream can interleave mid-line.
            children.append(
                subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
            )
        codes = []
        for child in children:
            # The children's stdout is a few lines, far below a pipe's buffer, so
            # reading one child to its end cannot block the other.
            output, _ = child.communicate(timeout=timeout)
            sys.stdout.write(output)
            sys.stdout.flush()
            codes.append(child.returncode)
        return codes
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="runs/jax_data_parallel")
    parser.add_argument("--coordinator", help="host:port of process 0 (set by the launcher)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--process-id", type=int, default=None)
    args = parser.parse_args()
    if args.process_id is not None:
        worker(args)
        return 0
    codes = launch(args)
    print(f"process exit codes: {codes}")
    if any(codes):
        return 1
    import keras

    import keras_dctsparse  # noqa: F401 (registers the layers for loading)

    _, (x_test, y_test) = load_digits()
    model = keras.models.load_model(os.path.join(args.out, "model.keras"))
    logits = keras.ops.convert_to_numpy(model.predict(x_test, verbose=0))
    print(f"test accuracy ({keras.backend.backend()}): {(logits.argmax(-1) == y_test).mean():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
