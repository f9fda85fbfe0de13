"""Loading the native library, and what happens when it cannot be built."""

import logging

import pytest

from keras_dctsparse.native import build
from keras_dctsparse.native import library
from keras_dctsparse.ops import cpu_features
from keras_dctsparse.ops import sparse_matmul


@pytest.fixture
def unbuildable(monkeypatch):
    """A library state in which the build fails (no compiler); restored afterwards."""
    monkeypatch.setattr(library, "_module", None)
    monkeypatch.setattr(library, "_error", None)

    def no_compiler():
        raise build.BuildError("no C++ compiler found (looked for nope)")

    monkeypatch.setattr(build, "compiler", no_compiler)
    monkeypatch.setattr(build, "library_path", lambda: "/nonexistent/_dctsparse_ops.so")
    monkeypatch.setattr(build, "build", lambda force=False: no_compiler())


def test_loads_the_ops():
    if not library.available():
        pytest.skip(f"native kernels unavailable: {library.unavailable_reason()}")
    module = library.load()
    for name in ("dct_sparse_offset", "dct_sparse_offset_transpose", "dct_sparse_matmul",
                 "dct_sparse_matmul_input_grad", "dct_sparse_matmul_value_grad"):
        assert callable(getattr(module, name))
    assert library.unavailable_reason() is None


def test_vector_bytes_follow_the_cpu():
    """The lane vectors are the CPU's widest registers (what -march=native compiled for)."""
    if not library.available():
        pytest.skip(f"native kernels unavailable: {library.unavailable_reason()}")
    flags = cpu_features.cpu_flags()
    if not flags:
        pytest.skip("no CPU feature flags in /proc/cpuinfo here")
    want = 64 if cpu_features.has_avx512(flags) else 32 if "avx" in flags else 16
    assert library.vector_bytes() == want
    assert library.lane_count("float32") == want // 4
    assert library.lane_count("float64") == want // 8


def test_vector_bytes_read_the_loaded_file_after_the_sources_change(monkeypatch):
    """Once loaded, the library answers from the file it was loaded from, even when the
    sources now hash to another build (edited or checked out while a program runs)."""
    if not library.available():
        pytest.skip(f"native kernels unavailable: {library.unavailable_reason()}")
    want = library.vector_bytes()
    monkeypatch.setattr(library, "_vector_bytes", None)
    monkeypatch.setattr(build, "library_path", lambda: "/nonexistent/_dctsparse_ops.so")
    assert library.vector_bytes() == want


def test_unbuildable_library_warns_once_and_stock_kernels_run(unbuildable, caplog):
    with caplog.at_level(logging.WARNING, logger="keras_dctsparse"):
        assert not library.available()
        assert not library.available()
    warnings = [r for r in caplog.records if "native kernels unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert "no C++ compiler found" in warnings[0].getMessage()
    assert "stock TensorFlow kernels" in library.unavailable_reason()
    with pytest.raises(library.NativeKernelsUnavailable, match="no C\\+\\+ compiler"):
        library.load()
    # Eagerly (where native ops may run) "auto" picks among the stock kernels instead.
    assert not sparse_matmul.native_allowed()
    assert sparse_matmul.resolve_kernel("auto", 4096, 4096, 16_777, 256) == "csr"
