"""Tests for keras_dctsparse.experiments.data (offline: real MNIST files, fakes, TFDS mocks)."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_dctsparse.experiments import data
from keras_dctsparse.experiments.data import (
    DATASETS,
    DatasetUnavailableError,
    load_dataset,
    make_eval_dataset,
    make_train_dataset,
    read_cifar_binary,
    read_idx,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNIST_DIR = os.environ.get(
    "DCTSPARSE_MNIST_DIR", os.path.join(REPO_ROOT, "..", "shared", "data", "mnist")
)
needs_mnist = pytest.mark.skipif(
    not os.path.isdir(MNIST_DIR),
    reason=f"real MNIST IDX files not found in {MNIST_DIR} (set DCTSPARSE_MNIST_DIR)",
)


# ----------------------------------------------------------------- helpers


def write_idx(path, array, type_byte=0x08, compress=False):
    """Writes ``array`` as an IDX file (big-endian), optionally gzipped."""
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_byte]
    header = bytes([0, 0, type_byte, array.ndim])
    header += np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.asarray(array, dtype).tobytes()
    if compress:
        payload = gzip.compress(payload)
    with open(path, "wb") as f:
        f.write(payload)
    return path


def write_fake_mnist(folder, n_train=12, n_test=5, compress=True):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images, compress=compress)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, compress=compress)


def cifar_records(images, labels, coarse=None):
    """Encodes uint8 images (N, 32, 32, 3) as CIFAR binary records."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    columns = [labels[:, None].astype(np.uint8), planes]
    if coarse is not None:
        columns.insert(0, coarse[:, None].astype(np.uint8))
    return np.concatenate(columns, axis=1).tobytes()


def fake_cifar_images(n, offset=0):
    rng = np.random.default_rng(offset)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def write_fake_cifar10(folder, per_batch=2, n_test=3):
    os.makedirs(folder, exist_ok=True)
    train_images = []
    for i in range(1, 6):
        images = fake_cifar_images(per_batch, offset=i)
        train_images.append(images)
        labels = np.arange(per_batch) + i
        with open(os.path.join(folder, f"data_batch_{i}.bin"), "wb") as f:
            f.write(cifar_records(images, labels))
    test_images = fake_cifar_images(n_test, offset=99)
    with open(os.path.join(folder, "test_batch.bin"), "wb") as f:
        f.write(cifar_records(test_images, np.arange(n_test)))
    return np.concatenate(train_images), test_images


def unstandardize(x, mean, std):
    return x * np.asarray(std, np.float32) + np.asarray(mean, np.float32)


# ------------------------------------------------------------------ read_idx


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip_uint8(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(str(tmp_path / "a.idx"), array, compress=compress)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 7  # result is writable


def test_read_idx_big_endian_types(tmp_path):
    ints = np.array([[-5, 70000], [1, 2]], np.int32)
    floats = np.array([0.5, -1.25, 3.0], np.float32)
    out_i = read_idx(write_idx(str(tmp_path / "i.idx"), ints, type_byte=0x0C))
    out_f = read_idx(write_idx(str(tmp_path / "f.idx.gz"), floats, type_byte=0x0D, compress=True))
    assert out_i.dtype == np.int32 and out_i.dtype.isnative
    np.testing.assert_array_equal(out_i, ints)
    assert out_f.dtype == np.float32
    np.testing.assert_array_equal(out_f, floats)


def test_read_idx_corrupt_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00\x00\x00\x02" + b"ab")
    with pytest.raises(ValueError, match="magic number") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated(tmp_path):
    path = write_idx(str(tmp_path / "t.idx"), np.zeros((4, 5), np.uint8))
    with open(path, "r+b") as f:
        f.truncate(4 + 8 + 7)
    with pytest.raises(ValueError, match="truncated") as info:
        read_idx(path)
    assert path in str(info.value)


def test_read_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "c.idx.gz"
    payload = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x10" + bytes(16))
    path.write_bytes(payload[:-12])
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing(tmp_path):
    path = tmp_path / "missing.idx"
    with pytest.raises(FileNotFoundError, match="missing.idx"):
        read_idx(path)


# ------------------------------------------------------- MNIST from files


@pytest.fixture(scope="module")
def real_mnist():
    return load_dataset("mnist", data_dir=MNIST_DIR)


@needs_mnist
def test_real_mnist(real_mnist):
    ds = real_mnist
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.y_train.shape == (60000,)
    assert ds.x_test.shape == (10000, 28, 28, 1) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert 0.0 <= ds.x_test.min() and ds.x_test.max() <= 1.0
    # Well-known MNIST pixel mean on [0, 1]: 0.1307.
    assert abs(float(ds.x_train.mean()) - 0.1307) < 2e-3
    assert ds.x_val is None and ds.y_val is None
    train_counts = np.bincount(ds.y_train, minlength=10)
    test_counts = np.bincount(ds.y_test, minlength=10)
    assert len(train_counts) == 10 and len(test_counts) == 10
    assert train_counts.min() > 5000 and train_counts.max() < 7000
    assert test_counts.min() > 800 and test_counts.max() < 1200


@needs_mnist
def test_real_mnist_validation_split(real_mnist):
    ds = load_dataset("mnist", data_dir=MNIST_DIR, validation_split=0.1, seed=3)
    assert ds.x_train.shape == (54000, 28, 28, 1) and ds.x_val.shape == (6000, 28, 28, 1)
    assert ds.y_val.shape == (6000,)
    assert ds.x_test.shape == (10000, 28, 28, 1)
    # The held-out images and the rest partition the full training set.
    total = ds.x_train.sum(dtype=np.float64) + ds.x_val.sum(dtype=np.float64)
    assert total == pytest.approx(real_mnist.x_train.sum(dtype=np.float64), rel=1e-9)
    np.testing.assert_array_equal(
        np.bincount(ds.y_train, minlength=10) + np.bincount(ds.y_val, minlength=10),
        np.bincount(real_mnist.y_train, minlength=10),
    )


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("compress", [False, True])
def test_mnist_files_in_subfolder(tmp_path, name, compress):
    write_fake_mnist(str(tmp_path / name), compress=compress)
    ds = load_dataset(name, data_dir=tmp_path)  # parent dir: looks in <data_dir>/<name>
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() <= ds.x_train.max() <= 1.0
    np.testing.assert_array_equal(ds.y_train, np.arange(12) % 10)
    raw = read_idx(str(tmp_path / name / ("train-images-idx3-ubyte" + (".gz" if compress else ""))))
    np.testing.assert_allclose(ds.x_train[..., 0], raw / 255.0, rtol=1e-6)


def test_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert "data_dir" in str(info.value)


def test_mnist_bad_labels(tmp_path):
    write_fake_mnist(str(tmp_path), compress=False)
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), np.full(5, 10, np.uint8))
    with pytest.raises(ValueError, match=r"labels outside \[0, 10\)"):
        load_dataset("mnist", data_dir=tmp_path)


# ------------------------------------------------------------------- digits


def test_digits():
    ds = load_dataset("digits", seed=0)
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert set(np.unique(ds.y_test)) == set(range(10))
    # Stratified: every class is ~20% test.
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_seeded():
    a = load_dataset("digits", seed=1)
    b = load_dataset("digits", seed=1)
    c = load_dataset("digits", seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)


def test_digits_validation_split():
    ds = load_dataset("digits", validation_split=0.25, seed=0)
    assert len(ds.x_val) == round(1437 * 0.25) and len(ds.x_train) + len(ds.x_val) == 1437
    assert ds.x_val.shape[1:] == (8, 8, 1) and ds.y_val.shape == (len(ds.x_val),)


# ------------------------------------------------------------- argument errors


def test_unknown_name():
    with pytest.raises(ValueError, match="name='imagenet'") as info:
        load_dataset("imagenet")
    for allowed in DATASETS:
        assert allowed in str(info.value)


@pytest.mark.parametrize("split", [-0.1, 1.0, 1.5])
def test_bad_validation_split(split):
    with pytest.raises(ValueError, match="validation_split"):
        load_dataset("digits", validation_split=split)


# ----------------------------------------------------------- CIFAR from files


def test_read_cifar_binary(tmp_path):
    images = fake_cifar_images(3)
    images[0, 0, 0] = (255, 128, 1)  # pixel (0, 0) of image 0, RGB
    path = tmp_path / "batch.bin"
    path.write_bytes(cifar_records(images, np.array([4, 0, 9])))
    x, y = read_cifar_binary(path)
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, [4, 0, 9])
    # Layout check straight from the file: label, then the red plane first.
    raw = path.read_bytes()
    assert raw[0] == 4 and raw[1] == 255 and raw[1 + 1024] == 128 and raw[1 + 2048] == 1


def test_read_cifar_binary_fine_labels(tmp_path):
    images = fake_cifar_images(2)
    path = tmp_path / "train.bin"
    path.write_bytes(cifar_records(images, np.array([57, 99]), coarse=np.array([3, 19])))
    x, y = read_cifar_binary(path, label_bytes=2)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, [57, 99])


def test_read_cifar_binary_corrupt(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(3073 + 10))
    with pytest.raises(ValueError, match="3073-byte record") as info:
        read_cifar_binary(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("point_at_parent", [True, False])
def test_load_cifar10_files(tmp_path, point_at_parent):
    folder = tmp_path / "cifar-10-batches-bin"
    train_images, test_images = write_fake_cifar10(str(folder))
    ds = load_dataset("cifar10", data_dir=tmp_path if point_at_parent else folder)
    assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10 and ds.input_shape == (32, 32, 3)
    np.testing.assert_array_equal(ds.y_train, [1, 2, 2, 3, 3, 4, 4, 5, 5, 6])
    np.testing.assert_array_equal(ds.y_test, [0, 1, 2])
    restored = unstandardize(ds.x_train, data.CIFAR10_MEAN, data.CIFAR10_STD)
    np.testing.assert_allclose(restored, train_images / 255.0, atol=1e-5)


def test_load_cifar100_files(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    train_images, test_images = fake_cifar_images(4), fake_cifar_images(2, offset=5)
    (folder / "train.bin").write_bytes(
        cifar_records(train_images, np.array([0, 42, 99, 7]), coarse=np.array([0, 1, 19, 2]))
    )
    (folder / "test.bin").write_bytes(
        cifar_records(test_images, np.array([98, 3]), coarse=np.array([5, 6]))
    )
    ds = load_dataset("cifar100", data_dir=tmp_path)
    assert ds.num_classes == 100
    np.testing.assert_array_equal(ds.y_train, [0, 42, 99, 7])
    np.testing.assert_array_equal(ds.y_test, [98, 3])
    restored = unstandardize(ds.x_test, data.CIFAR100_MEAN, data.CIFAR100_STD)
    np.testing.assert_allclose(restored, test_images / 255.0, atol=1e-5)


def test_cifar_missing_files(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(bytes(3073))
    with pytest.raises(FileNotFoundError, match="test_batch.bin") as info:
        load_dataset("cifar10", data_dir=tmp_path)
    assert "data_dir" in str(info.value)


# ------------------------------------------------------------------ TFDS


@pytest.mark.parametrize(
    "name, shape, num_classes",
    [
        ("mnist", (28, 28, 1), 10),
        ("fashion_mnist", (28, 28, 1), 10),
        ("cifar10", (32, 32, 3), 10),
        ("cifar100", (32, 32, 3), 100),
    ],
)
def test_tfds_mocked(name, shape, num_classes):
    tfds = pytest.importorskip("tensorflow_datasets")
    # USE_CODE: no metadata files needed. Under the mock, download_and_prepare
    # is a no-op but the builder never reports "prepared", hence download=True.
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset(name, download=True, validation_split=0.5, seed=0)
    assert ds.num_classes == num_classes and ds.input_shape == shape
    assert ds.x_train.shape == (3, *shape) and ds.x_val.shape == (3, *shape)
    assert ds.x_test.shape == (6, *shape)
    for x in (ds.x_train, ds.x_val, ds.x_test):
        assert x.dtype == np.float32
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert y.dtype == np.int32 and y.min() >= 0 and y.max() < num_classes
    if name.startswith("cifar"):
        mean = data.CIFAR10_MEAN if name == "cifar10" else data.CIFAR100_MEAN
        std = data.CIFAR10_STD if name == "cifar10" else data.CIFAR100_STD
        restored = unstandardize(ds.x_test, mean, std) * 255.0
        assert restored.min() > -1e-3 and restored.max() < 255.0 + 1e-3
        np.testing.assert_allclose(restored, np.round(restored), atol=1e-3)  # integer pixels
        assert ds.x_test.min() < 0.0  # really standardised, not just scaled
    else:
        assert ds.x_test.min() >= 0.0 and ds.x_test.max() <= 1.0


def test_tfds_offline_fails_fast(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core import dataset_builder

    def no_download(*args, **kwargs):
        raise AssertionError("download_and_prepare must not be called")

    monkeypatch.setattr(dataset_builder.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(DatasetUnavailableError, match="not available offline") as info:
        load_dataset("cifar10", tfds_data_dir=tmp_path)
    message = str(info.value)
    assert "data_dir" in message and "--data-dir" in message
    assert "data_batch_1.bin" in message and "download=True" in message
    assert isinstance(info.value, FileNotFoundError)


# ------------------------------------------------------------- pipelines


def _marked_images(n, size=8, channels=3):
    """Distinct, asymmetric images; image i has all pixels > 0."""
    rng = np.random.default_rng(0)
    return (rng.random((n, size, size, channels)) + 0.1).astype(np.float32)


def _match_augmentation(original, augmented, padding=4):
    """Returns (dy, dx, flipped) such that augmented is that crop/flip of original."""
    h, w, _ = original.shape
    padded = np.pad(original, ((padding, padding), (padding, padding), (0, 0)))
    for flipped in (False, True):
        for dy in range(2 * padding + 1):
            for dx in range(2 * padding + 1):
                crop = padded[dy:dy + h, dx:dx + w]
                if flipped:
                    crop = crop[:, ::-1]
                if np.array_equal(crop, augmented):
                    return dy - padding, dx - padding, flipped
    return None


def _collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_train_dataset_augment():
    n = 48
    x = _marked_images(n)
    y = np.arange(n, dtype=np.int32)
    ds = make_train_dataset(x, y, batch_size=16, augment=True, shuffle=True, seed=7)
    shapes = [tuple(xb.shape) for xb, _ in ds]
    assert shapes == [(16, 8, 8, 3)] * 3
    out_x, out_y = _collect(ds)
    assert sorted(out_y.tolist()) == list(range(n))  # a permutation, labels kept
    assert not np.array_equal(out_y, y)  # shuffled
    matches = [_match_augmentation(x[label], img) for img, label in zip(out_x, out_y)]
    assert all(m is not None for m in matches), "output is not a crop/flip of its source"
    assert any(m[2] for m in matches) and not all(m[2] for m in matches)
    assert any(m[:2] != (0, 0) for m in matches)
    assert sum(not np.array_equal(img, x[label]) for img, label in zip(out_x, out_y)) > n // 2


def test_train_dataset_deterministic():
    x = _marked_images(20)
    y = np.arange(20, dtype=np.int32)
    first = _collect(make_train_dataset(x, y, 6, augment=True, seed=3))
    again = _collect(make_train_dataset(x, y, 6, augment=True, seed=3))
    other = _collect(make_train_dataset(x, y, 6, augment=True, seed=4))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_train_dataset_epochs_differ():
    x = _marked_images(20)
    y = np.arange(20, dtype=np.int32)
    ds = make_train_dataset(x, y, 20, augment=True, seed=3)
    epoch1, epoch2 = _collect(ds), _collect(ds)
    assert not np.array_equal(epoch1[1], epoch2[1]) or not np.array_equal(epoch1[0], epoch2[0])


def test_train_dataset_plain():
    x = _marked_images(10)
    y = np.arange(10, dtype=np.int32)
    out_x, out_y = _collect(make_train_dataset(x, y, 4, shuffle=False))
    np.testing.assert_array_equal(out_x, x)
    np.testing.assert_array_equal(out_y, y)
    out_x, out_y = _collect(make_train_dataset(x, y, 4, shuffle=True, seed=1))
    np.testing.assert_array_equal(out_x, x[out_y])
    assert not np.array_equal(out_y, y)


def test_eval_dataset():
    x = _marked_images(10)
    y = np.arange(10, dtype=np.int32)
    ds = make_eval_dataset(x, y, 4)
    assert [int(xb.shape[0]) for xb, _ in ds] == [4, 4, 2]
    out_x, out_y = _collect(ds)
    np.testing.assert_array_equal(out_x, x)
    np.testing.assert_array_equal(out_y, y)


def test_pipeline_argument_errors():
    x = _marked_images(4)
    with pytest.raises(ValueError, match="len"):
        make_train_dataset(x, np.arange(3), 2)
    with pytest.raises(ValueError, match="batch_size"):
        make_eval_dataset(x, np.arange(4), 0)
    with pytest.raises(ValueError, match="augment"):
        make_train_dataset(np.zeros((4, 8)), np.arange(4), 2, augment=True)


@needs_mnist
def test_real_mnist_through_pipeline(real_mnist):
    ds = make_train_dataset(real_mnist.x_test, real_mnist.y_test, 128, augment=True, seed=0)
    xb, yb = next(iter(ds))
    assert xb.shape == (128, 28, 28, 1) and xb.dtype == tf.float32 and yb.dtype == tf.int32
