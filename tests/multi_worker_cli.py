"""Test driver: `dctsparse train` as one worker, with test-only callbacks.

Run as `python tests/multi_worker_cli.py TRAIN-ARGS...` with `TF_CONFIG` set.
Environment:
    DCTSPARSE_TEST_WEIGHTS: a path with `{index}`; each worker saves its final
        weights there (npz) at the end of training.
    DCTSPARSE_TEST_KILL: `WORKER:EPOCH`; that worker SIGKILLs itself at the
        end of that epoch (after its checkpoint is written).
"""

import json
import os
import signal
import sys

import keras
import numpy as np

from keras_dctsparse.experiments import cli
from keras_dctsparse.experiments import train


class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class SaveWeights(keras.callbacks.Callback):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_train_end(self, logs=None):
        np.savez(self.path, *[np.asarray(w) for w in self.model.get_weights()])


def main():
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    callbacks = []
    if os.environ.get("DCTSPARSE_TEST_WEIGHTS"):
        callbacks.append(SaveWeights(os.environ["DCTSPARSE_TEST_WEIGHTS"].format(index=index)))
    if os.environ.get("DCTSPARSE_TEST_KILL"):
        worker, epoch = map(int, os.environ["DCTSPARSE_TEST_KILL"].split(":"))
        if worker == index:
            callbacks.append(KillAfterEpoch(epoch))
    train._EXTRA_CALLBACKS = callbacks
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
