"""Tests for the `dctsparse` command line (keras_dctsparse.cli)."""

import csv
import importlib.util
import json
import os
import sys
import types

import keras
import numpy as np
import pytest

from keras_dctsparse import cli
from keras_dctsparse.layers import DCTSparseDense
from keras_dctsparse.ops.tflite_ops import tflite_op_names

MNIST_DIR = os.environ.get("DCTSPARSE_MNIST_DIR", "/work/shared/data/mnist")


def _fallback_build_model(
    name, input_shape, num_classes, density=0.01, distribution="uniform", offset="dct", seed=None
):
    """Test-only LeNet-300-100 used while keras_dctsparse.models does not exist."""
    assert name == "lenet300100", name
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            DCTSparseDense(300, density=density, offset=offset, activation="relu", seed=seed),
            DCTSparseDense(100, density=density, offset=offset, activation="relu", seed=seed),
            DCTSparseDense(num_classes, density=density, offset=offset, activation="softmax", seed=seed),
        ],
        name="lenet300100",
    )


def _use_fallback_models_if_needed(mp):
    """Installs a stand-in keras_dctsparse.models while the real one is unfinished."""
    try:
        import importlib

        real = importlib.import_module("keras_dctsparse.models")
        if callable(getattr(real, "build_model", None)):
            return
    except ImportError:
        pass
    module = types.ModuleType("keras_dctsparse.models")
    module.build_model = _fallback_build_model
    mp.setitem(sys.modules, "keras_dctsparse.models", module)


@pytest.fixture(autouse=True)
def models_module(monkeypatch):
    _use_fallback_models_if_needed(monkeypatch)
    keras.backend.clear_session()
    yield


def _train_argv(out, *extra, epochs=1, density="0.1"):
    return [
        "train", "--model", "lenet300100", "--dataset", "digits",
        "--density", density, "--epochs", str(epochs), "--batch-size", "64",
        "--seed", "0", "--verbose", "0", "--out", str(out), *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    mp = pytest.MonkeyPatch()
    _use_fallback_models_if_needed(mp)
    try:
        assert cli.main(_train_argv(out, "--lr", "0.01")) == 0
    finally:
        mp.undo()
    return out


def test_train_writes_outputs(trained):
    for name in ("results.json", "metrics.csv", "sparsity_report.md", "model.keras"):
        assert (trained / name).is_file(), name
    assert (trained / "saved_model" / "saved_model.pb").is_file()
    if importlib.util.find_spec("tensorboard") is not None:
        assert (trained / "logs").is_dir()
    assert not (trained / "backup").exists()  # removed after a finished run
    results = json.loads((trained / "results.json").read_text())
    assert results["test_accuracy"] > 0.3
    assert results["total_nnz"] > 0 and results["wall_time_s"] > 0
    assert results["args"]["density"] == 0.1
    assert "|" in (trained / "sparsity_report.md").read_text()
    assert not [p for p in os.listdir(trained) if p.endswith(".tmp") or p.startswith(".")]


def test_evaluate(trained, capsys):
    assert cli.main(
        ["evaluate", "--model-path", str(trained / "model.keras"), "--dataset", "digits"]
    ) == 0
    accuracy = float(capsys.readouterr().out.strip().split()[-1])
    results = json.loads((trained / "results.json").read_text())
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-4)


@pytest.mark.parametrize("fmt,name", [("savedmodel", "sm"), ("tflite", "m.tflite")])
def test_export(trained, tmp_path, fmt, name):
    output = tmp_path / name
    argv = ["export", "--model-path", str(trained / "model.keras"), "--format", fmt,
            "--output", str(output)]
    assert cli.main(argv) == 0
    if fmt == "savedmodel":
        assert (output / "saved_model.pb").is_file()
    else:
        from ai_edge_litert.interpreter import Interpreter

        model = keras.saving.load_model(trained / "model.keras")
        x = np.random.default_rng(0).random((3, *model.inputs[0].shape[1:]), np.float32)
        interpreter = Interpreter(model_path=str(output))
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        actual = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        np.testing.assert_allclose(actual, model(x), atol=1e-5)


def test_export_tflite_float16(trained, tmp_path):
    full, half = tmp_path / "full.tflite", tmp_path / "half.tflite"
    base = ["export", "--model-path", str(trained / "model.keras"), "--format", "tflite"]
    assert cli.main(base + ["--output", str(full)]) == 0
    assert cli.main(base + ["--output", str(half), "--quantization", "float16"]) == 0
    assert half.stat().st_size < full.stat().st_size
    computed = tmp_path / "computed.tflite"
    assert cli.main(base + ["--output", str(computed), "--dct-constants", "computed"]) == 0
    assert "COS" in tflite_op_names(computed.read_bytes())


def test_export_quantization_needs_tflite(trained, tmp_path, capsys):
    argv = ["export", "--model-path", str(trained / "model.keras"), "--format", "savedmodel",
            "--output", str(tmp_path / "sm"), "--quantization", "float16"]
    assert cli.main(argv) == 2
    assert "--quantization" in capsys.readouterr().err


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def test_resume_after_interruption(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(cli, "_EXTRA_CALLBACKS", [_Interrupt()])
    assert cli.main(_train_argv(out, epochs=4)) == 130
    assert "resume" in capsys.readouterr().err
    assert (out / "backup").is_dir() and not (out / "results.json").exists()
    monkeypatch.setattr(cli, "_EXTRA_CALLBACKS", [])
    assert cli.main(_train_argv(out, epochs=4)) == 0
    with open(out / "metrics.csv") as file:
        epochs = [int(row["epoch"]) for row in csv.DictReader(file)]
    assert epochs == [0, 1, 2, 3]
    assert json.loads((out / "results.json").read_text())["resumed"] is True


def test_sweep(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", "lenet300100", "--dataset", "digits",
            "--densities", "1", "0.1", "--offsets", "dct", "none", "--seeds", "0", "1",
            "--epochs", "1", "--batch-size", "64", "--schedule", "cosine",
            "--verbose", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    with open(out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    # Density 1 is the dense baseline only (no DCT offset on a dense S).
    assert [(float(r["density"]), r["offset"], r["label"]) for r in rows] == [
        (1.0, "none", "dense"), (0.1, "dct", "DCTpS"), (0.1, "none", "plain sparse")
    ]
    assert sorted(os.listdir(out)) == sorted(
        ["d1_none_s0", "d1_none_s1", "d0.1_dct_s0", "d0.1_dct_s1", "d0.1_none_s0",
         "d0.1_none_s1", "results.csv", "results.md"]
        + (["accuracy.png"] if (out / "accuracy.png").exists() else [])
    )
    for row in rows:
        accuracies = [
            json.loads((out / f"d{float(row['density']):g}_{row['offset']}_s{seed}"
                        / "results.json").read_text())["test_accuracy"]
            for seed in (0, 1)
        ]
        assert float(row["accuracy_mean"]) == pytest.approx(np.mean(accuracies))
        assert float(row["accuracy_std"]) == pytest.approx(np.std(accuracies, ddof=1))
        assert float(row["accuracy_min"]) == min(accuracies)
    table = (out / "results.md").read_text()
    lines = table.splitlines()
    assert lines[2].startswith("| density | nnz | dense test acc. (%) | DCTpS")
    assert lines[4].startswith("| 1 | ") and lines[4].count(" - ") == 2
    assert lines[5].startswith("| 0.1 | ") and lines[5].count(" - ") == 1
    assert "Command: `dctsparse sweep --model lenet300100" in table
    assert "cosine" in lines[0] and "Wall time" in table
    try:
        import matplotlib  # noqa: F401
        assert (out / "accuracy.png").is_file()
    except ImportError:
        assert "pip install matplotlib" in capsys.readouterr().out
    # A rerun reuses the finished runs and rewrites the same table.
    assert cli.main(argv) == 0
    assert (out / "results.md").read_text() == table


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--model", "lenet300100", "--dataset", "digits", "--density", "0",
          "--out", "x"], "--density"),
        (["train", "--model", "lenet300100", "--dataset", "digits", "--density", "1.5",
          "--out", "x"], "1.5"),
        (["train", "--model", "lenet300100", "--dataset", "svhn", "--out", "x"], "--dataset"),
        (["train", "--model", "nope", "--dataset", "digits", "--out", "x"], "--model"),
        (["train", "--model", "lenet300100", "--dataset", "digits", "--offset", "fft",
          "--out", "x"], "--offset"),
        (["train", "--model", "lenet300100", "--dataset", "digits", "--epochs", "0",
          "--out", "x"], "--epochs"),
        (["sweep", "--model", "lenet300100", "--dataset", "digits", "--densities", "2",
          "--out", "x"], "--densities"),
        (["export", "--model-path", "m.keras", "--format", "onnx", "--output", "o"],
         "--format"),
        ([], "COMMAND"),
    ],
)
def test_bad_arguments(argv, needle, capsys):
    assert cli.main(argv) != 0
    assert needle in capsys.readouterr().err


def test_missing_model_path(tmp_path, capsys):
    argv = ["evaluate", "--model-path", str(tmp_path / "none.keras"), "--dataset", "digits"]
    assert cli.main(argv) == 2
    assert "--model-path" in capsys.readouterr().err


def test_tfds_unavailable_offline_names_data_dir(tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")
    argv = ["train", "--model", "lenet300100", "--dataset", "mnist", "--tfds-data-dir",
            str(tmp_path / "tfds"), "--epochs", "1", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "not available offline" in err


def test_tfds_mocked_mnist(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "run"
    argv = ["train", "--model", "lenet300100", "--dataset", "mnist", "--download",
            "--density", "0.05", "--epochs", "1", "--batch-size", "16", "--verbose", "0",
            "--out", str(out)]
    with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_CODE):
        assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["test_accuracy"] <= 1.0


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="MNIST IDX files not available",
)
def test_mnist_data_dir_train_limit(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--model", "lenet300100", "--dataset", "mnist", "--data-dir", MNIST_DIR,
            "--train-limit", "2000", "--density", "0.1", "--epochs", "1", "--batch-size", "64", "--lr", "0.01",
            "--verbose", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"] > 0.5
    assert results["args"]["train_limit"] == 2000


def test_python_dash_m_help():
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "keras_dctsparse", "sweep", "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())  # argparse re-wraps the description
    assert "pip install matplotlib" in text and "--densities" in text
    assert "density 1 is the dense baseline" in text
