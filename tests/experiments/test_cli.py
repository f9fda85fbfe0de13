"""Tests for the `dctsparse` command line (keras_dctsparse.cli)."""

import csv
import errno
import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest

from keras_dctsparse.experiments import cli
from keras_dctsparse.experiments import common
from keras_dctsparse.experiments import recipe
from keras_dctsparse.experiments import train as train_command
from keras_dctsparse.layers import DCTSparseDense
from keras_dctsparse.export.flatbuffer import tflite_op_names

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
    assert (trained / "logs").is_dir()  # tensorboard is a dependency of the command line
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.keras", "results.json", "metrics.csv", "run_config.json"):
        assert stat.S_IMODE((trained / name).stat().st_mode) == 0o666 & ~umask, name
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


def test_export_tflite_form(trained, tmp_path, capsys):
    base = ["export", "--model-path", str(trained / "model.keras"), "--format", "tflite"]
    built = tmp_path / "built.tflite"
    assert cli.main(base + ["--output", str(built), "--form", "built_once"]) == 0
    assert "CALL_ONCE" in tflite_op_names(built.read_bytes())
    auto = tmp_path / "auto.tflite"
    argv = base + ["--output", str(auto), "--form", "auto", "--max-kernel-bytes", "0"]
    assert cli.main(argv) == 0
    assert "CALL_ONCE" not in tflite_op_names(auto.read_bytes())
    at_load = tmp_path / "at_load.tflite"
    assert cli.main(base + ["--output", str(at_load), "--form", "built_at_load"]) == 0
    ops = tflite_op_names(at_load.read_bytes())
    assert "CALL_ONCE" not in ops and "UNSORTED_SEGMENT_SUM" not in ops
    assert "FULLY_CONNECTED" in ops
    gather, csr = tmp_path / "gather.tflite", tmp_path / "csr.tflite"
    assert cli.main(base + ["--output", str(gather)]) == 0
    assert cli.main(base + ["--output", str(csr), "--sparse-product", "csr"]) == 0
    assert "UNSORTED_SEGMENT_SUM" in tflite_op_names(gather.read_bytes())
    assert "UNSORTED_SEGMENT_SUM" not in tflite_op_names(csr.read_bytes())
    for flag in (["--form", "auto"], ["--sparse-product", "csr"]):
        argv = ["export", "--model-path", str(trained / "model.keras"), "--format",
                "savedmodel", "--output", str(tmp_path / "sm"), *flag]
        assert cli.main(argv) == 2
        assert flag[0] in capsys.readouterr().err


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
    monkeypatch.setattr(train_command, "_EXTRA_CALLBACKS", [_Interrupt()])
    assert cli.main(_train_argv(out, epochs=4)) == 130
    assert "resume" in capsys.readouterr().err
    assert (out / "backup").is_dir() and not (out / "results.json").exists()
    monkeypatch.setattr(train_command, "_EXTRA_CALLBACKS", [])
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
            "--sparse-trainings", "static", "--verbose", "0", "--out", str(out)]
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
        (["train", "--model", "lenet300100", "--dataset", "digits", "--sparse-training",
          "prune", "--out", "x"], "--sparse-training"),
        (["train", "--model", "lenet300100", "--dataset", "digits", "--update-every", "0",
          "--out", "x"], "--update-every must be a positive integer, got 0"),
        (["train", "--model", "lenet300100", "--dataset", "digits", "--drop-fraction",
          "1.5", "--out", "x"], "--drop-fraction must be in [0, 1], got 1.5"),
        (["train", "--model", "lenet300100", "--dataset", "digits", "--end-fraction",
          "0", "--out", "x"], "--end-fraction must be in (0, 1], got 0"),
        (["sweep", "--model", "lenet300100", "--dataset", "digits", "--densities", "0.1",
          "--sparse-trainings", "static", "dst", "--out", "x"], "--sparse-trainings"),
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


# ------------------------------------------------ faults a user meets (issue 12)


def _snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                files[os.path.relpath(path, folder)] = file.read()
    return files


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained run folder that a test may try to damage."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def test_export_refuses_to_replace_a_run_folder(run_copy, capsys):
    before = _snapshot(run_copy)
    argv = ["export", "--model-path", str(run_copy / "model.keras"), "--format", "savedmodel",
            "--output", str(run_copy)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dctsparse export: error: --output") and "--overwrite" in err
    assert _snapshot(run_copy) == before


def test_export_replaces_a_previous_export_and_overwrite_replaces_anything(trained, tmp_path):
    model_path = str(trained / "model.keras")
    target = tmp_path / "sm"
    base = ["export", "--model-path", model_path, "--format", "savedmodel", "--output", str(target)]
    assert cli.main(base) == 0
    first = _snapshot(target)
    assert cli.main(base) == 0  # a previous SavedModel export: replaced without --overwrite
    assert _snapshot(target).keys() == first.keys()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    argv = ["export", "--model-path", model_path, "--format", "savedmodel", "--output", str(other)]
    assert cli.main(argv) == 2 and (other / "notes.txt").read_text() == "mine"
    assert cli.main(argv + ["--overwrite"]) == 0
    assert (other / "saved_model.pb").is_file() and not (other / "notes.txt").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporaries left


def test_export_tflite_onto_a_folder_or_foreign_file(trained, tmp_path, capsys):
    model_path = str(trained / "model.keras")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    argv = ["export", "--model-path", model_path, "--format", "tflite", "--output", str(folder)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dctsparse export: error: --output") and "model.tflite" in err
    assert _snapshot(folder) == {"keep.txt": b"keep"}
    foreign = tmp_path / "notes.tflite"
    foreign.write_text("not a model")
    argv = ["export", "--model-path", model_path, "--format", "tflite", "--output", str(foreign)]
    assert cli.main(argv) == 2 and foreign.read_text() == "not a model"
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change,named",
    [
        (["--density", "0.05"], ["--density 0.1 (stored) vs 0.05 (given)"]),
        (["--seed", "3", "--lr", "0.003"], ["--seed 0 (stored) vs 3 (given)", "--lr 0.01"]),
    ],
)
def test_resume_with_other_arguments_is_refused(tmp_path, monkeypatch, capsys, change, named):
    out = tmp_path / "run"
    monkeypatch.setattr(train_command, "_EXTRA_CALLBACKS", [_Interrupt()])
    assert cli.main(_train_argv(out, epochs=4)) == 130
    monkeypatch.setattr(train_command, "_EXTRA_CALLBACKS", [])
    capsys.readouterr()
    before = _snapshot(out)
    argv = _train_argv(out, epochs=4)
    for flag, value in zip(change[::2], change[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dctsparse train: error: ") and "start afresh" in err
    for text in named:
        assert text in err
    assert _snapshot(out) == before
    # The stored arguments resume, and results.json records the values used.
    assert cli.main(_train_argv(out, epochs=4)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["args"]["density"] == 0.1 and results["args"]["seed"] == 0


def test_out_is_an_existing_file(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("precious")
    assert cli.main(_train_argv(out)) == 2
    assert "is an existing file" in capsys.readouterr().err and out.read_text() == "precious"


def test_out_under_a_read_only_folder(tmp_path, monkeypatch, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: fail the creation as the kernel would
        def makedirs(path, *args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

        monkeypatch.setattr(common.os, "makedirs", makedirs)
    else:
        parent.chmod(0o500)
    try:
        assert cli.main(_train_argv(parent / "run")) == 2
    finally:
        parent.chmod(0o700)
    err = capsys.readouterr().err
    assert err.startswith("dctsparse train: error: cannot create --out") and "Permission denied" in err
    assert os.listdir(parent) == []


def test_corrupt_gzip_in_data_dir(tmp_path, capsys):
    data_dir = tmp_path / "mnist"
    data_dir.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data_dir / f"{name}.gz").write_bytes(gzip.compress(b"\0" * 64)[:20])
    argv = ["train", "--model", "lenet300100", "--dataset", "mnist", "--data-dir", str(data_dir),
            "--epochs", "1", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dctsparse train: error: cannot read the mnist data") and "gzip" in err
    assert "Traceback" not in err


def test_evaluate_on_another_input_shape(tmp_path, capsys):
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              DCTSparseDense(10, density=0.1, activation="softmax")])
    path = tmp_path / "m.keras"
    model.save(path)
    argv = ["evaluate", "--model-path", str(path), "--dataset", "digits"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "(28, 28, 1)" in err and "(8, 8, 1)" in err and err.startswith("dctsparse evaluate: error:")


def test_conv_model_larger_than_input(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dctsparse train: error: --model lenet5 cannot be built") and "(8, 8, 1)" in err
    assert os.listdir(out) == []  # nothing stored: another --model may use this --out


def test_api_accepts_offset_none_like_the_cli():
    layer = DCTSparseDense(4, density=0.5, offset="none")
    assert layer.offset is None
    config = layer.get_config()
    assert config["offset"] is None
    assert DCTSparseDense.from_config(config).offset is None
    with pytest.raises(ValueError, match="offset"):
        DCTSparseDense(4, offset="fft")


def test_help_and_argument_errors_do_not_import_tensorflow():
    for argv in (["--help"], ["train", "--model", "nope"]):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "keras_dctsparse", *argv],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == (0 if argv == ["--help"] else 2)
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        assert "keras_dctsparse.experiments.cli" in imported
        assert "tensorflow" not in imported and "keras" not in imported


def test_command_line_process_loads_saved_models(trained):
    # `python -m keras_dctsparse` imports the layers only after parsing.
    proc = subprocess.run(
        [sys.executable, "-m", "keras_dctsparse", "evaluate", "--model-path",
         str(trained / "model.keras"), "--dataset", "digits"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    accuracy = float(proc.stdout.split()[-1])
    assert accuracy == pytest.approx(
        json.loads((trained / "results.json").read_text())["test_accuracy"], abs=1e-4
    )


def test_redirected_run_prints_only_our_lines(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-m", "keras_dctsparse", "train", "--model", "lenet300100",
         "--dataset", "digits", "--density", "0.1", "--epochs", "2", "--batch-size", "64",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no TensorFlow logging, no Keras shuffle warning
    assert "\x1b" not in proc.stdout and "\r" not in proc.stdout and "\b" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2"  # verbose=2: one line per epoch
    assert f"TensorBoard: tensorboard --logdir {out / 'logs'}" in lines


def test_resumed_wall_time_counts_all_parts(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(train_command, "_EXTRA_CALLBACKS", [_Interrupt()])
    assert cli.main(_train_argv(out, epochs=4)) == 130
    first_part = json.loads((out / "run_config.json").read_text())["elapsed_s"]
    assert first_part > 0
    monkeypatch.setattr(train_command, "_EXTRA_CALLBACKS", [])
    started = time.time()
    assert cli.main(_train_argv(out, epochs=4)) == 0
    second_part = time.time() - started
    wall = json.loads((out / "results.json").read_text())["wall_time_s"]
    assert first_part < wall <= first_part + second_part


# ------------------------------------------------ fault injection: a full disk mid-write


def _enospc(path=None):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _half_writing_fdopen(real_fdopen):
    """os.fdopen whose files write half of the first write, then fail with ENOSPC."""

    class HalfWriter:
        def __init__(self, file):
            self._file = file

        def write(self, data):
            self._file.write(data[: max(1, len(data) // 2)])
            self._file.flush()
            raise _enospc(getattr(self._file, "name", None))

        def __getattr__(self, name):
            return getattr(self._file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._file.close()

    def fdopen(*args, **kwargs):
        return HalfWriter(real_fdopen(*args, **kwargs))

    return fdopen


def _leftovers(folder):
    return [p for p in os.listdir(folder) if p.startswith(".")]


def test_full_disk_while_saving_keras_keeps_previous(run_copy, monkeypatch):
    path = run_copy / "model.keras"
    before = path.read_bytes()

    def save(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as file:
            file.write(before[: len(before) // 2])
        raise _enospc(filepath)

    monkeypatch.setattr(keras.Model, "save", save)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(OSError, match="No space left"):
        common.atomic_save_keras(model, str(path))
    assert path.read_bytes() == before and not _leftovers(run_copy)


def test_full_disk_while_exporting_savedmodel_keeps_previous(run_copy, monkeypatch):
    target = run_copy / "saved_model"
    before = _snapshot(target)

    def export(self, filepath, *args, **kwargs):
        os.makedirs(filepath)
        with open(os.path.join(filepath, "saved_model.pb"), "wb") as file:
            file.write(b"\x08\x01partial")
        raise _enospc(filepath)

    monkeypatch.setattr(keras.Model, "export", export)
    model = keras.saving.load_model(run_copy / "model.keras")
    with pytest.raises(OSError, match="No space left"):
        common.export_savedmodel(model, str(target))
    assert _snapshot(target) == before and not _leftovers(run_copy)


def test_full_disk_while_writing_tflite_keeps_previous(trained, tmp_path, monkeypatch):
    output = tmp_path / "m.tflite"
    argv = ["export", "--model-path", str(trained / "model.keras"), "--format", "tflite",
            "--output", str(output)]
    assert cli.main(argv) == 0
    before = output.read_bytes()
    monkeypatch.setattr(os, "fdopen", _half_writing_fdopen(os.fdopen))
    assert cli.main(argv + ["--quantization", "float16"]) == 1
    assert output.read_bytes() == before and not _leftovers(tmp_path)


def test_full_disk_while_writing_results_keeps_previous(run_copy, monkeypatch):
    path = run_copy / "results.json"
    before = path.read_bytes()
    monkeypatch.setattr(os, "fdopen", _half_writing_fdopen(os.fdopen))
    with pytest.raises(OSError, match="No space left"):
        common.write_text(str(path), json.dumps({"test_accuracy": 0.0}))
    assert path.read_bytes() == before and not _leftovers(run_copy)


def test_full_disk_during_train_outputs_is_one_error_line(run_copy, monkeypatch, capsys):
    before = _snapshot(run_copy)

    def export(self, filepath, *args, **kwargs):
        os.makedirs(filepath)
        raise _enospc(filepath)

    monkeypatch.setattr(keras.Model, "export", export)
    argv = _train_argv(run_copy, "--lr", "0.01")  # the stored arguments of `trained`
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("dctsparse train: error: No space left on device")
    after = _snapshot(run_copy)
    for name in ("results.json", *[k for k in before if k.startswith("saved_model")]):
        assert after[name] == before[name], name
    assert not _leftovers(run_copy)


def test_jit_compile_on_compiles_the_whole_train_step_with_xla(tmp_path, monkeypatch):
    seen = []
    original = keras.Model.compile

    def compile_spy(self, *args, **kwargs):
        seen.append(kwargs.get("jit_compile"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", compile_spy)
    out = tmp_path / "xla"
    assert cli.main(_train_argv(out, "--lr", "0.01", "--jit-compile", "on")) == 0
    assert seen and seen[0] is True
    with open(out / "results.json") as file:
        assert json.load(file)["test_accuracy"] > 0.3  # one epoch, as test_train_writes_outputs


# ------------------------------------------------ dynamic sparse training (RigL, SET)


def _positions(path):
    """`{layer name: (2, nnz) positions}` of the DCTpS layers of a saved model."""
    model = keras.saving.load_model(path)
    return {
        layer.name: keras.ops.convert_to_numpy(layer.sparse_weight.indices)
        for layer in model.layers
        if hasattr(layer, "sparse_weight")
    }


@pytest.fixture(scope="module")
def dynamic_runs(tmp_path_factory):
    """Static, RigL and SET runs of the same seed (2 epochs of 23 steps, updates every 2)."""
    base = tmp_path_factory.mktemp("dynamic")
    mp = pytest.MonkeyPatch()
    _use_fallback_models_if_needed(mp)
    try:
        for method in ("static", "rigl", "set"):
            argv = _train_argv(base / method, "--sparse-training", method,
                               "--update-every", "2", epochs=2)
            assert cli.main(argv) == 0, method
    finally:
        mp.undo()
    return base


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_dynamic_sparse_training_moves_positions(dynamic_runs, method):
    static = _positions(dynamic_runs / "static" / "model.keras")
    moved = _positions(dynamic_runs / method / "model.keras")
    assert static.keys() == moved.keys() and static
    for name, positions in moved.items():
        assert positions.shape == static[name].shape  # per-layer nnz unchanged
        assert len({tuple(p) for p in positions.T}) == positions.shape[1]  # unique
    # The same seed draws the same initial positions; only the dynamic runs move them.
    assert any(not np.array_equal(moved[n], static[n]) for n in static)
    results = json.loads((dynamic_runs / method / "results.json").read_text())
    sparse = results["sparse_training"]
    # digits: 1437 examples / batch 64 = 23 steps per epoch, 46 in all; the end step
    # is int(0.75 * 46) = 34, so positions move at steps 2, 4, ..., 32.
    assert sparse["method"] == method and sparse["update_every"] == 2
    assert sparse["drop_fraction"] == recipe.DEFAULT_DROP_FRACTION
    assert sparse["end_fraction"] == recipe.DEFAULT_END_FRACTION == 0.75
    assert sparse["end_step"] == 34 and sparse["position_updates"] == 16
    assert sparse["positions_moved"] > 0
    assert results["args"]["sparse_training"] == method
    assert results["args"]["update_every"] == 2
    static_results = json.loads((dynamic_runs / "static" / "results.json").read_text())
    assert static_results["sparse_training"] == {"method": "static"}
    assert static_results["args"]["update_every"] is None  # no effect on a static run


@pytest.mark.parametrize(
    "argv, batch_size, update_every",
    [
        (["train", "--model", "lenet5"], 32, 200),
        (["train", "--model", "lenet300100"], 128, 50),
        (["train", "--model", "vgg19"], 128, 50),
        (["sweep", "--model", "lenet5", "--densities", "0.1"], 32, 200),
        (["train", "--model", "lenet5", "--batch-size", "64", "--update-every", "7"], 64, 7),
        (["train", "--model", "lenet300100", "--batch-size", "32"], 32, 50),
    ],
)
def test_recipe_defaults_follow_the_model(argv, batch_size, update_every):
    args = cli.build_parser().parse_args(argv + ["--dataset", "mnist", "--out", "o"])
    assert (args.batch_size, args.update_every) == (batch_size, update_every)
    assert recipe.recipe_defaults(args.model) == {
        "batch_size": recipe.MODEL_RECIPES.get(args.model, {}).get(
            "batch_size", recipe.DEFAULT_BATCH_SIZE),
        "update_every": recipe.MODEL_RECIPES.get(args.model, {}).get(
            "update_every", recipe.DEFAULT_UPDATE_EVERY),
    }


def test_evaluate_batch_size_default():
    args = cli.build_parser().parse_args(
        ["evaluate", "--model-path", "m.keras", "--dataset", "mnist"])
    assert args.batch_size == recipe.DEFAULT_BATCH_SIZE == 128


class _RecordPositions(keras.callbacks.Callback):
    """Records the positions of the DCTpS layers at the start and at every epoch end."""

    def __init__(self):
        super().__init__()
        self.at_begin, self.at_epoch_end = None, {}

    def _positions(self):
        return [keras.ops.convert_to_numpy(layer.sparse_weight.indices)
                for layer in self.model.layers if hasattr(layer, "sparse_weight")]

    def on_train_begin(self, logs=None):
        self.at_begin = self._positions()

    def on_epoch_end(self, epoch, logs=None):
        self.at_epoch_end[epoch] = self._positions()


def test_dynamic_run_resumes_its_positions_and_schedule(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    made = []
    real = train_command._dynamic_sparsity

    def capture(*args):
        made.append(real(*args))
        return made[-1]

    monkeypatch.setattr(train_command, "_dynamic_sparsity", capture)
    argv = _train_argv(out, "--sparse-training", "rigl", "--update-every", "2", epochs=4)
    first = _RecordPositions()
    monkeypatch.setattr(train_command, "_EXTRA_CALLBACKS", [first, _Interrupt()])
    assert cli.main(argv) == 130  # interrupted at the start of epoch 3 (step 46)
    assert [u["step"] for u in made[0].updates][-1] == 46
    # Other sparse-training settings do not resume it.
    monkeypatch.setattr(train_command, "_EXTRA_CALLBACKS", [])
    capsys.readouterr()
    assert cli.main(argv[:-1] + ["3"]) == 2
    assert "--update-every 2 (stored) vs 3 (given)" in capsys.readouterr().err
    set_argv = list(argv)
    set_argv[set_argv.index("rigl")] = "set"
    assert cli.main(set_argv) == 2
    assert "--sparse-training 'rigl' (stored) vs 'set' (given)" in capsys.readouterr().err

    second = _RecordPositions()
    monkeypatch.setattr(train_command, "_EXTRA_CALLBACKS", [second])
    assert cli.main(argv) == 0
    # The resumed run starts from the positions backed up after epoch 2 ...
    for begin, backed_up in zip(second.at_begin, first.at_epoch_end[1]):
        np.testing.assert_array_equal(begin, backed_up)
    # ... and continues the schedule at step 48 (92 steps in all, end step 69; at step
    # 68 the cosine-decayed fraction, 0.3 * (1 + cos(pi * 68 / 69)) / 2 = 1.6e-4, moves
    # no position of the largest layer, 1920 nonzeros).
    steps = sorted({u["step"] for u in made[-1].updates})
    assert steps == list(range(48, 67, 2))
    results = json.loads((out / "results.json").read_text())
    assert results["resumed"] is True
    assert results["sparse_training"]["position_updates"] == len(range(2, 67, 2))
    moved = sum(u["moved"] for c in (made[0], made[-1]) for u in c.updates)
    assert results["sparse_training"]["positions_moved"] == moved


def test_dynamic_sparse_training_is_refused_with_multi_worker(tmp_path, capsys):
    argv = _train_argv(tmp_path / "run", "--sparse-training", "set",
                       "--distribute", "multi-worker")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sparse-training set" in err and "multi-worker" in err
    assert not (tmp_path / "run").exists()


def test_sweep_with_dynamic_sparse_training(tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", "lenet300100", "--dataset", "digits",
            "--densities", "1", "0.1", "--offsets", "dct", "--sparse-trainings", "static",
            "rigl", "--seeds", "0", "--epochs", "1", "--train-limit", "256",
            "--batch-size", "64", "--update-every", "2", "--verbose", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    runs_made = sorted(p for p in os.listdir(out) if p.startswith("d"))
    # Static runs keep their folder names (old sweeps resume); density 1 runs once.
    assert runs_made == ["d0.1_dct_rigl_s0", "d0.1_dct_s0", "d1_none_s0"]
    rigl = json.loads((out / "d0.1_dct_rigl_s0" / "results.json").read_text())
    assert rigl["sparse_training"]["method"] == "rigl"
    assert rigl["sparse_training"]["position_updates"] > 0
    with open(out / "results.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(r["density"], r["offset"], r["sparse_training"], r["label"]) for r in rows] == [
        ("1.0", "none", "static", "dense"),
        ("0.1", "dct", "static", "DCTpS"),
        ("0.1", "dct", "rigl", "DCTpS + RigL"),
    ]
    lines = (out / "results.md").read_text().splitlines()
    assert lines[2] == ("| density | nnz | dense test acc. (%) | DCTpS test acc. (%) | "
                        "DCTpS + RigL test acc. (%) |")
    assert "RigL/SET: update every 2 steps" in lines[0]
    assert lines[4].startswith("| 1 | ") and lines[4].count(" - ") == 2
    assert lines[5].startswith("| 0.1 | ") and lines[5].count(" - ") == 1  # no dense
