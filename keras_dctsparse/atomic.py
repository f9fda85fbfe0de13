"""Writing outputs so that a failure never loses the previous version.

Every output is written next to its destination under a hidden temporary
name and moved into place only once it is complete, so an error in the
middle of a write (a full disk, an interrupt) leaves the previous version as
it was. Existing targets that we did not write are never replaced without
`overwrite=True`.
"""

from __future__ import annotations

import os
import shutil
import tempfile

__all__ = [
    "OutputExistsError",
    "SAVEDMODEL_ENTRIES",
    "check_target",
    "is_savedmodel",
    "is_tflite",
    "make_public",
    "replace_directory",
    "write_file",
    "write_text",
]

# What `model.export` / `tf.saved_model.save` put in a SavedModel folder.
SAVEDMODEL_ENTRIES = frozenset(
    {"saved_model.pb", "saved_model.pbtxt", "variables", "assets", "fingerprint.pb",
     "keras_metadata.pb"}
)


class OutputExistsError(FileExistsError):
    """The destination exists and is not something we would replace."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path):
    """Gives a file written through `tempfile` (mode 0600) the usual 0666 & ~umask."""
    os.chmod(path, 0o666 & ~_umask())


def write_file(path, write, suffix=""):
    """Writes `path` atomically: `write(temporary)`, then a rename onto `path`.

    Args:
        path: Destination file.
        write: A function writing the complete file at the path it is given.
        suffix: Ending of the temporary name (`model.save` wants `.keras`).

    Raises:
        Whatever `write` raises; `path` is then unchanged and the temporary
        file removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=directory
    )
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        make_public(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_text(path, text):
    """Writes `text` to `path` atomically (see `write_file`)."""

    def write(temporary):
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_TRUNC), "w") as file:
            file.write(text)

    write_file(path, write)


def is_savedmodel(path):
    """Whether `path` is a SavedModel folder and holds nothing else."""
    if not os.path.isdir(path):
        return False
    entries = set(os.listdir(path))
    return "saved_model.pb" in entries and entries <= SAVEDMODEL_ENTRIES


def is_tflite(path):
    """Whether `path` is a file in the TFLite flatbuffer format."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as file:
        return file.read(8)[4:8] == b"TFL3"


def check_target(path, ours, kind, overwrite=False):
    """Refuses to replace `path` unless it is empty, a previous output or `overwrite`.

    Args:
        path: Destination.
        ours: A function telling whether `path` is a previous output of ours.
        kind: What we write, for the message (e.g. "a SavedModel").
        overwrite: Replace anything at `path`.

    Raises:
        OutputExistsError: If `path` exists, is not empty, is not ours and
            `overwrite` is false.
    """
    if not os.path.lexists(path) or overwrite or ours(path):
        return
    if os.path.isdir(path) and not os.listdir(path):
        return
    what = "folder" if os.path.isdir(path) else "file"
    raise OutputExistsError(
        f"{path!r} is an existing {what} that is not {kind}; refusing to replace it "
        "(choose another path, or pass --overwrite to replace it)"
    )


def replace_directory(path, write):
    """Writes the folder `path` with `write(temporary)`, then swaps it in.

    The previous `path` (folder or file) is renamed aside, the new folder
    renamed onto `path`, and only then the previous one deleted; on any error
    the previous `path` is put back.

    Args:
        path: Destination folder.
        write: A function creating the complete folder at the (absent) path
            it is given.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(path)
    temporary = tempfile.mkdtemp(prefix=f".{name}.new.", dir=parent)
    previous = None
    try:
        os.rmdir(temporary)
        write(temporary)
        if os.path.lexists(path):
            previous = tempfile.mkdtemp(prefix=f".{name}.old.", dir=parent)
            os.rmdir(previous)
            os.replace(path, previous)
        os.replace(temporary, path)
    except BaseException:
        if previous is not None and os.path.lexists(previous) and not os.path.lexists(path):
            os.replace(previous, path)
            previous = None
        raise
    finally:
        if os.path.lexists(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        if previous is not None and os.path.lexists(previous):
            if os.path.isdir(previous) and not os.path.islink(previous):
                shutil.rmtree(previous, ignore_errors=True)
            else:
                os.remove(previous)
