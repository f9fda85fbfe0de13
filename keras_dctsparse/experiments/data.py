"""Dataset loading and ``tf.data`` input pipelines.

Five image-classification datasets are supported (see :data:`DATASETS`):

* ``"digits"``: scikit-learn's bundled 8x8 digits (always offline).
* ``"mnist"``, ``"fashion_mnist"``: 28x28 grey images, read either from the
  original IDX files in ``data_dir`` or through TensorFlow Datasets (TFDS).
* ``"cifar10"``, ``"cifar100"``: 32x32 colour images, read either from the
  original CIFAR "binary version" files in ``data_dir`` or through TFDS.

Every loader returns numpy arrays: float32 images of shape ``(N, H, W, C)`` and
int32 labels of shape ``(N,)``, wrapped in a :class:`Dataset`. Images are scaled
to ``[0, 1]`` (digits, MNIST, Fashion-MNIST) or standardised per channel with
the usual CIFAR statistics (CIFAR-10/100).

Offline behaviour: when ``data_dir`` is not given, the dataset must already be
prepared in the TFDS data directory (``tfds_data_dir``, or TFDS's default,
which honours ``$TFDS_DATA_DIR``). This is checked before anything else is
done, and a missing dataset raises :class:`DatasetUnavailableError` at once,
without any network access. Pass ``download=True`` to let TFDS download and
prepare it instead.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from typing import Optional, Tuple, Union

import numpy as np
import tensorflow as tf

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetUnavailableError",
    "augment_image",
    "load_dataset",
    "make_eval_dataset",
    "make_train_dataset",
    "read_cifar_binary",
    "read_idx",
]

PathLike = Union[str, "os.PathLike[str]"]

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")
"""Names accepted by :func:`load_dataset`."""

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
"""Per-channel mean and std of the CIFAR training sets, on pixels in [0, 1]."""

_NUM_CLASSES = {
    "digits": 10,
    "mnist": 10,
    "fashion_mnist": 10,
    "cifar10": 10,
    "cifar100": 100,
}
_INPUT_SHAPES = {
    "digits": (8, 8, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
}
_CIFAR_STATS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}

# IDX type byte -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_LAYOUT = {
    # name: (folder inside the archive, train files, test files, label bytes)
    "cifar10": (
        "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",),
        1,
    ),
    "cifar100": ("cifar-100-binary", ("train.bin",), ("test.bin",), 2),
}
_CIFAR_IMAGE_BYTES = 32 * 32 * 3
_TFDS_CHUNK = 10_000


class DatasetUnavailableError(FileNotFoundError):
    """The requested dataset is neither in ``data_dir`` nor prepared in TFDS."""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """An in-memory image classification dataset.

    Attributes:
        name: One of :data:`DATASETS`.
        x_train: float32 images, shape ``(N_train, H, W, C)``.
        y_train: int32 labels in ``[0, num_classes)``, shape ``(N_train,)``.
        x_test: float32 images, shape ``(N_test, H, W, C)``.
        y_test: int32 labels, shape ``(N_test,)``.
        num_classes: Number of classes.
        input_shape: ``(H, W, C)``.
        x_val: Held-out part of the training set, or ``None`` when
            ``validation_split == 0``.
        y_val: Labels of ``x_val``, or ``None``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: Tuple[int, int, int]
    x_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None

    def __repr__(self) -> str:
        val = "None" if self.x_val is None else str(self.x_val.shape)
        return (
            f"Dataset(name={self.name!r}, x_train={self.x_train.shape}, "
            f"x_test={self.x_test.shape}, x_val={val}, "
            f"num_classes={self.num_classes}, input_shape={self.input_shape})"
        )


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def load_dataset(
    name: str,
    data_dir: Optional[PathLike] = None,
    *,
    validation_split: float = 0.0,
    seed: int = 0,
    download: bool = False,
    tfds_data_dir: Optional[PathLike] = None,
) -> Dataset:
    """Loads one of :data:`DATASETS` into memory as numpy arrays.

    Where the data comes from:

    * ``"digits"``: always scikit-learn's bundled copy; ``data_dir`` is
      ignored. It has no official test split, so a stratified 80/20 split
      is drawn with ``seed``.
    * ``"mnist"`` / ``"fashion_mnist"`` with ``data_dir``: the four original
      IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
      ``.gz``), in ``data_dir`` or in ``data_dir/<name>``.
    * ``"cifar10"`` with ``data_dir``: ``data_batch_1.bin`` ..
      ``data_batch_5.bin`` and ``test_batch.bin``, in ``data_dir`` or in
      ``data_dir/cifar-10-batches-bin``.
    * ``"cifar100"`` with ``data_dir``: ``train.bin`` and ``test.bin`` (fine
      labels are used), in ``data_dir`` or in ``data_dir/cifar-100-binary``.
    * Any of the last four without ``data_dir``: TensorFlow Datasets. With
      ``download=False`` (default) the dataset must already be prepared under
      ``tfds_data_dir``; otherwise :class:`DatasetUnavailableError` is raised
      immediately, without touching the network.

    Args:
        name: Dataset name, one of :data:`DATASETS`.
        data_dir: Folder holding the original dataset files (see above), or
            ``None`` to use TFDS.
        validation_split: Fraction in ``[0, 1)`` of the training set to hold
            out as ``x_val``/``y_val`` (a seeded random subset; the remaining
            training examples keep their original order). ``0`` keeps
            everything for training and sets ``x_val = y_val = None``.
        seed: Seed for the digits train/test split and the validation holdout.
        download: Only for TFDS: allow TFDS to download and prepare a missing
            dataset (needs network access).
        tfds_data_dir: TFDS data directory; ``None`` uses TFDS's default
            (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Returns:
        A :class:`Dataset` with float32 images ``(N, H, W, C)`` and int32
        labels.

    Raises:
        ValueError: If ``name`` is unknown, ``validation_split`` is outside
            ``[0, 1)``, or a data file is corrupt.
        FileNotFoundError: If ``data_dir`` lacks an expected file.
        DatasetUnavailableError: If ``data_dir`` is ``None``, ``download`` is
            ``False`` and the dataset is not prepared in the TFDS data dir.

    Example:
        >>> ds = load_dataset("digits", seed=0)
        >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
        ((1437, 8, 8, 1), (360, 8, 8, 1), 10)
    """
    if name not in DATASETS:
        raise ValueError(
            f"Unknown dataset: name={name!r}. Expected one of {', '.join(DATASETS)}."
        )
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(
            f"validation_split must be in [0, 1), got validation_split={validation_split!r}."
        )

    if name == "digits":
        x_train, y_train, x_test, y_test = _load_digits(seed)
    elif data_dir is not None and name in ("mnist", "fashion_mnist"):
        x_train, y_train, x_test, y_test = _load_mnist_files(name, data_dir)
    elif data_dir is not None:
        x_train, y_train, x_test, y_test = _load_cifar_files(name, data_dir)
    else:
        x_train, y_train, x_test, y_test = _load_tfds(
            name, download=download, tfds_data_dir=tfds_data_dir
        )

    if name in _CIFAR_STATS:
        mean, std = _CIFAR_STATS[name]
        x_train = _standardize(x_train, mean, std)
        x_test = _standardize(x_test, mean, std)

    x_val = y_val = None
    if validation_split > 0:
        (x_train, y_train), (x_val, y_val) = _holdout(
            x_train, y_train, validation_split, seed
        )

    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=_NUM_CLASSES[name],
        input_shape=_INPUT_SHAPES[name],
        x_val=x_val,
        y_val=y_val,
    )


# --------------------------------------------------------------------------
# File readers
# --------------------------------------------------------------------------


def read_idx(path: PathLike) -> np.ndarray:
    """Reads an IDX file (the MNIST file format), gzipped or not.

    The header is two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B
    int16, 0x0C int32, 0x0D float32, 0x0E float64), a byte giving the number
    of dimensions, then one big-endian uint32 per dimension. The data follows
    in big-endian C order. Gzip compression is detected from the content, not
    the file name.

    Args:
        path: Path of the IDX file.

    Returns:
        A writable numpy array in native byte order with the declared shape
        and type.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not valid gzip, has a bad magic number, or
            its size does not match the header. The message names ``path``.

    Example:
        >>> images = read_idx("mnist/train-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> images.shape, images.dtype  # doctest: +SKIP
        ((60000, 28, 28), dtype('uint8'))
    """
    raw = _read_maybe_gzipped(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{os.fspath(path)!s} is not an IDX file: bad magic number "
            f"{raw[:4].hex() or '<empty>'} (expected 0000 + type byte in "
            f"{{08,09,0b,0c,0d,0e}} + ndim)."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(
            f"{os.fspath(path)!s}: corrupt IDX header (ndim={ndim}, "
            f"{len(raw)} bytes in file)."
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{os.fspath(path)!s}: truncated or corrupt IDX file: header declares "
            f"shape {dims} ({expected} data bytes) but the file holds "
            f"{len(raw) - header} data bytes."
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def read_cifar_binary(
    path: PathLike, label_bytes: int = 1
) -> Tuple[np.ndarray, np.ndarray]:
    """Reads one file of the CIFAR "binary version".

    Each record is ``label_bytes`` label bytes followed by 3072 pixel bytes
    (1024 red, 1024 green, 1024 blue, each 32x32 row-major). CIFAR-10 files
    have one label byte; CIFAR-100 files have two (coarse, then fine), and
    the last one (the fine label) is returned.

    Args:
        path: Path of a ``.bin`` file.
        label_bytes: Label bytes per record: 1 for CIFAR-10, 2 for CIFAR-100.

    Returns:
        ``(images, labels)``: uint8 images ``(N, 32, 32, 3)`` and int32 labels
        ``(N,)``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is empty or its size is not a whole number of
            records.

    Example:
        >>> x, y = read_cifar_binary("cifar-10-batches-bin/test_batch.bin")  # doctest: +SKIP
        >>> x.shape, y.shape  # doctest: +SKIP
        ((10000, 32, 32, 3), (10000,))
    """
    if label_bytes not in (1, 2):
        raise ValueError(f"label_bytes must be 1 or 2, got label_bytes={label_bytes!r}.")
    raw = _read_bytes(path)
    record = label_bytes + _CIFAR_IMAGE_BYTES
    if not raw or len(raw) % record:
        raise ValueError(
            f"{os.fspath(path)!s}: corrupt CIFAR binary file: {len(raw)} bytes is "
            f"not a positive multiple of the {record}-byte record size "
            f"(label_bytes={label_bytes})."
        )
    records = np.frombuffer(raw, np.uint8).reshape(-1, record)
    labels = records[:, label_bytes - 1].astype(np.int32)
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_bytes(path: PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            e.errno, f"Data file not found: {os.fspath(path)}", os.fspath(path)
        ) from None


def _read_maybe_gzipped(path: PathLike) -> bytes:
    raw = _read_bytes(path)
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{os.fspath(path)!s}: corrupt gzip data ({e}).") from e


# --------------------------------------------------------------------------
# Per-source loaders (return uint8/float images and int32 labels)
# --------------------------------------------------------------------------


def _load_digits(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    return x_train, y_train, x_test, y_test


def _find_file(folders, filename: str) -> Optional[str]:
    for folder in folders:
        for candidate in (filename, filename + ".gz"):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


def _load_mnist_files(name: str, data_dir: PathLike):
    data_dir = os.fspath(data_dir)
    folders = (data_dir, os.path.join(data_dir, name))
    arrays = []
    for split in ("train", "test"):
        images_name, labels_name = _MNIST_FILES[split]
        images_path = _find_file(folders, images_name)
        labels_path = _find_file(folders, labels_name)
        if images_path is None or labels_path is None:
            missing = images_name if images_path is None else labels_name
            raise FileNotFoundError(
                f"{name}: {missing}[.gz] not found in data_dir={data_dir!r} "
                f"(also looked in {folders[1]!r}). Expected the original IDX files: "
                + ", ".join(f"{f}[.gz]" for pair in _MNIST_FILES.values() for f in pair)
            )
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        _check_arrays(images, labels, (28, 28), 10, f"{images_path} / {labels_path}")
        arrays += [(images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int32)]
    return tuple(arrays)


def _resolve_cifar_dir(name: str, data_dir: str) -> str:
    folder, train_files, test_files, _ = _CIFAR_LAYOUT[name]
    expected = train_files + test_files
    for candidate in (data_dir, os.path.join(data_dir, folder)):
        if all(os.path.isfile(os.path.join(candidate, f)) for f in expected):
            return candidate
    raise FileNotFoundError(
        f"{name}: CIFAR binary files not found in data_dir={data_dir!r} or in "
        f"{os.path.join(data_dir, folder)!r}. Expected {', '.join(expected)} "
        f"(the extracted '{folder}' folder of the binary version)."
    )


def _load_cifar_files(name: str, data_dir: PathLike):
    folder = _resolve_cifar_dir(name, os.fspath(data_dir))
    _, train_files, test_files, label_bytes = _CIFAR_LAYOUT[name]
    arrays = []
    for files in (train_files, test_files):
        parts = [read_cifar_binary(os.path.join(folder, f), label_bytes) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        _check_arrays(images, labels, (32, 32, 3), _NUM_CLASSES[name], folder)
        arrays += [images, labels]
    return tuple(arrays)


def _tfds_is_prepared(builder) -> bool:
    is_prepared = getattr(builder, "is_prepared", None)
    if callable(is_prepared):
        return bool(is_prepared())
    return tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def _offline_message(name: str, builder_data_dir: str) -> str:
    if name in ("mnist", "fashion_mnist"):
        files = ", ".join(f"{f}[.gz]" for pair in _MNIST_FILES.values() for f in pair)
    else:
        folder, train_files, test_files, _ = _CIFAR_LAYOUT[name]
        files = f"{folder}/" + ", ".join(train_files + test_files)
    return (
        f"Dataset {name!r} is not available offline: it is not prepared in the "
        f"TFDS data dir ({builder_data_dir}) and no data_dir was given. Either "
        f"pass data_dir (CLI: --data-dir) pointing at the original files ({files}), "
        f"point tfds_data_dir at a prepared TFDS copy, or pass download=True "
        f"to let TFDS download it (needs network access)."
    )


def _load_tfds(name: str, *, download: bool, tfds_data_dir: Optional[PathLike]):
    import tensorflow_datasets as tfds

    data_dir = None if tfds_data_dir is None else os.fspath(tfds_data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    elif not _tfds_is_prepared(builder):
        raise DatasetUnavailableError(_offline_message(name, builder.data_dir))

    shape = _INPUT_SHAPES[name]
    arrays = []
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        # Chunked batching instead of batch_size=-1: with unknown split sizes
        # (e.g. under tfds.testing.mock_data) TFDS would batch by sys.maxsize.
        chunks = list(tfds.as_numpy(ds.batch(_TFDS_CHUNK)))
        images = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros((0, *shape), np.uint8)
        labels = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0,), np.int64)
        _check_arrays(images, labels, shape, _NUM_CLASSES[name], f"TFDS {name}[{split}]")
        if name in ("mnist", "fashion_mnist"):
            images = images.astype(np.float32) / 255.0
        arrays += [images, labels.astype(np.int32)]
    return tuple(arrays)


# --------------------------------------------------------------------------
# Array helpers
# --------------------------------------------------------------------------


def _check_arrays(images, labels, image_shape, num_classes, source) -> None:
    if images.shape[1:] != tuple(image_shape) or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{source}: unexpected shapes images={images.shape}, labels={labels.shape} "
            f"(expected (N, {', '.join(map(str, image_shape))}) and (N,))."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{source}: labels outside [0, {num_classes}): "
            f"min={labels.min()}, max={labels.max()}."
        )


def _standardize(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 images -> float32 ``(x / 255 - mean) / std`` per channel."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def _holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    n = len(x)
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise ValueError(
            f"validation_split={fraction} leaves no training examples out of {n}."
        )
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = np.sort(perm[:n_val])
    train_idx = np.sort(perm[n_val:])
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


# --------------------------------------------------------------------------
# tf.data pipelines
# --------------------------------------------------------------------------


def _check_xy(x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: len(x)={len(x)}, len(y)={len(y)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got batch_size={batch_size!r}.")


def augment_image(image: tf.Tensor, seed: tf.Tensor, padding: int = 4) -> tf.Tensor:
    """Standard CIFAR augmentation: pad, random crop back, random flip.

    The image is zero-padded by ``padding`` pixels on each side (zero is the
    channel mean for standardised CIFAR images), a random window of the
    original size is cropped, and the result is flipped left-right with
    probability 1/2. Stateless ops: the same ``seed`` gives the same output.

    Args:
        image: One image ``(H, W, C)`` with a static shape.
        seed: int32/int64 tensor of shape ``(2,)``.
        padding: Pixels of zero padding on each side.

    Returns:
        The augmented image, same shape and dtype as ``image``.

    Example:
        >>> img = tf.zeros((32, 32, 3))
        >>> augment_image(img, tf.constant([1, 2])).shape
        TensorShape([32, 32, 3])
    """
    height, width, _ = image.shape
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    padded = tf.image.resize_with_crop_or_pad(image, height + 2 * padding, width + 2 * padding)
    cropped = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


def make_train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    augment: bool = False,
    shuffle: bool = True,
    seed: Optional[int] = None,
) -> tf.data.Dataset:
    """Builds a batched training pipeline (one epoch per iteration).

    Shuffling permutes indices (no copy of the images in a shuffle buffer)
    and reshuffles on every iteration. With ``augment=True`` each image gets
    :func:`augment_image` with its own seed drawn from a seeded random
    stream, which is also redrawn each iteration, so epochs differ but a
    fresh pipeline built with the same ``seed`` repeats exactly.

    Args:
        x: Images ``(N, H, W, C)`` (float32 recommended).
        y: Labels ``(N,)``.
        batch_size: Examples per batch; the last batch may be smaller.
        augment: Apply pad-4 random crop and random horizontal flip.
        shuffle: Shuffle the examples each epoch.
        seed: Seed for shuffling and augmentation; ``None`` is nondeterministic.

    Returns:
        A ``tf.data.Dataset`` of ``(images, labels)`` batches.

    Raises:
        ValueError: If ``x`` and ``y`` differ in length, ``batch_size`` is not
            a positive integer, or ``augment`` is set and ``x`` is not 4-D.

    Example:
        >>> data = load_dataset("digits")
        >>> train = make_train_dataset(data.x_train, data.y_train, 64, seed=0)
        >>> images, labels = next(iter(train))
        >>> tuple(images.shape), tuple(labels.shape)
        ((64, 8, 8, 1), (64,))
    """
    x = np.asarray(x)
    y = np.asarray(y)
    _check_xy(x, y, batch_size)
    if augment and x.ndim != 4:
        raise ValueError(f"augment=True needs images of shape (N, H, W, C), got x.shape={x.shape}.")
    images = tf.convert_to_tensor(x)
    labels = tf.convert_to_tensor(y)

    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, seeds.batch(2, drop_remainder=True)))
        ds = ds.map(
            lambda i, s: (augment_image(tf.gather(images, i), s), tf.gather(labels, i)),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).batch(batch_size)
    else:
        ds = ds.batch(batch_size).map(
            lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Builds a batched evaluation pipeline: original order, no augmentation.

    Args:
        x: Images ``(N, ...)``.
        y: Labels ``(N,)``.
        batch_size: Examples per batch; the last batch may be smaller.

    Returns:
        A ``tf.data.Dataset`` of ``(images, labels)`` batches.

    Raises:
        ValueError: If ``x`` and ``y`` differ in length or ``batch_size`` is
            not a positive integer.

    Example:
        >>> data = load_dataset("digits")
        >>> test = make_eval_dataset(data.x_test, data.y_test, 256)
        >>> [int(labels.shape[0]) for _, labels in test]
        [256, 104]
    """
    x = np.asarray(x)
    y = np.asarray(y)
    _check_xy(x, y, batch_size)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)
