"""Tests for keras_dctsparse.atomic: writes that never lose the previous version."""

import errno
import os

import pytest

from keras_dctsparse import atomic


def _fail_midway(temporary):
    with open(temporary, "w") as file:
        file.write("partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_file_replaces_only_when_complete(tmp_path):
    path = tmp_path / "out.txt"
    atomic.write_text(path, "first")
    with pytest.raises(OSError, match="No space"):
        atomic.write_file(path, _fail_midway)
    assert path.read_text() == "first"
    assert os.listdir(tmp_path) == ["out.txt"]  # the temporary file is gone
    atomic.write_text(path, "second")
    assert path.read_text() == "second"
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_check_target_refuses_what_is_not_ours(tmp_path):
    foreign = tmp_path / "run"
    foreign.mkdir()
    (foreign / "results.json").write_text("{}")
    with pytest.raises(atomic.OutputExistsError, match="--overwrite"):
        atomic.check_target(foreign, atomic.is_savedmodel, "a SavedModel")
    atomic.check_target(foreign, atomic.is_savedmodel, "a SavedModel", overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    atomic.check_target(empty, atomic.is_savedmodel, "a SavedModel")
    atomic.check_target(tmp_path / "absent", atomic.is_savedmodel, "a SavedModel")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    assert atomic.is_savedmodel(saved)
    atomic.check_target(saved, atomic.is_savedmodel, "a SavedModel")


def test_is_tflite_reads_the_flatbuffer_identifier(tmp_path):
    good, bad = tmp_path / "m.tflite", tmp_path / "x.tflite"
    good.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 8)
    bad.write_bytes(b"\x00" * 16)
    assert atomic.is_tflite(good) and not atomic.is_tflite(bad)
    assert not atomic.is_tflite(tmp_path)


def test_replace_directory_keeps_the_previous_folder_on_failure(tmp_path):
    target = tmp_path / "export"

    def write(contents):
        def writer(path):
            os.mkdir(path)
            (open(os.path.join(path, "saved_model.pb"), "w")).close()
            with open(os.path.join(path, "tag"), "w") as file:
                file.write(contents)
        return writer

    atomic.replace_directory(target, write("one"))
    assert (target / "tag").read_text() == "one"

    def broken(path):
        os.mkdir(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic.replace_directory(target, broken)
    assert (target / "tag").read_text() == "one"
    assert sorted(os.listdir(tmp_path)) == ["export"]
    atomic.replace_directory(target, write("two"))
    assert (target / "tag").read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["export"]
