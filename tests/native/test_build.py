"""Compiling the native library: cache location and key, reuse, and compile errors."""

import os
import subprocess
import sys

import pytest

from keras_dctsparse.native import build


def test_cache_root_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_DCTSPARSE_CACHE", str(tmp_path / "explicit"))
    assert build.cache_root() == str(tmp_path / "explicit")
    monkeypatch.delenv("KERAS_DCTSPARSE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_root() == os.path.join(str(tmp_path / "xdg"), "keras_dctsparse")


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(build.BuildError, match="no C\\+\\+ compiler found.*/nonexistent/c\\+\\+"):
        build.compiler()


def test_library_path_is_a_key_of_everything_that_decides_the_binary(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_DCTSPARSE_CACHE", str(tmp_path))
    path = build.library_path()
    assert path == build.library_path()
    assert path.startswith(str(tmp_path)) and path.endswith("_dctsparse_ops.so")
    monkeypatch.setattr(build, "_cpu_signature", lambda: "another CPU")
    assert build.library_path() != path


def test_a_built_library_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_DCTSPARSE_CACHE", str(tmp_path))
    path = build.library_path()
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as handle:
        handle.write("built")

    def must_not_compile(command):
        raise AssertionError("compiled again")

    monkeypatch.setattr(build, "_run", must_not_compile)
    assert build.build() == path


def test_every_header_is_part_of_the_cache_key(monkeypatch, tmp_path):
    assert set(build.HEADERS) == {name for name in os.listdir(build._SRC) if name.endswith(".h")}
    monkeypatch.setenv("KERAS_DCTSPARSE_CACHE", str(tmp_path))
    source = tmp_path / "src"
    source.mkdir()
    for name in os.listdir(build._SRC):
        with open(os.path.join(build._SRC, name), "rb") as handle:
            (source / name).write_bytes(handle.read())
    monkeypatch.setattr(build, "_SRC", str(source))
    before = build.library_path()
    header = source / build.HEADERS[0]
    header.write_text(header.read_text() + "\n// changed\n")
    assert build.library_path() != before


def test_compile_errors_are_reported_and_leave_no_library(monkeypatch, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in build.SOURCES + build.HEADERS:
        (source / name).write_text("#error this source is broken on purpose\n")
    monkeypatch.setattr(build, "_SRC", str(source))
    monkeypatch.setenv("KERAS_DCTSPARSE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(build.BuildError, match="broken on purpose"):
        build.build()
    assert not os.path.exists(build.library_path())


def test_command_line_prints_the_path(tmp_path):
    env = dict(os.environ, KERAS_DCTSPARSE_CACHE=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "keras_dctsparse.native", "path"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(tmp_path))
    assert result.stdout.strip().endswith("_dctsparse_ops.so")
