"""Compiling the native kernels into a TensorFlow op library, once per machine.

The C++ sources in `keras_dctsparse/native/src` are compiled against the installed
TensorFlow (`tf.sysconfig` flags) with the host's C++ compiler (`$CXX`, else
`c++`) and `-march=native`, into a per-user cache:
`$KERAS_DCTSPARSE_CACHE` (default `$XDG_CACHE_HOME/keras_dctsparse`, else
`~/.cache/keras_dctsparse`), in a folder named by a hash of everything that
decides the binary (sources, compiler, flags, TensorFlow version, CPU). The
build takes 20-40 s on 2 cores and runs the first time a native kernel is
needed, or ahead of time with `python -m keras_dctsparse.native build`.
Concurrent builds (several processes) take a file lock; the library appears
under its final name only once it is complete.
"""

import concurrent.futures
import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

__all__ = [
    "SOURCES",
    "HEADERS",
    "BuildError",
    "cache_root",
    "compiler",
    "compile_flags",
    "library_path",
    "build",
]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
#: Translation units of the op library.
SOURCES = ("dense_ops.cc", "conv_ops.cc", "direct_conv.cc")
#: Headers they include (every file of `src` is part of the cache key).
HEADERS = tuple(sorted(name for name in os.listdir(_SRC) if name.endswith(".h")))
_LIBRARY_NAME = "_dctsparse_ops.so"
# Floating-point options: reassociation (so reductions vectorize) and no errno or
# trap semantics. Not -ffast-math: it would assume no NaN/inf and can set the CPU's
# flush-to-zero mode for the whole process.
_OPTIMIZATION = (
    "-O3",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fno-signed-zeros",
    "-fassociative-math",
)


class BuildError(RuntimeError):
    """The native kernels could not be compiled (the message holds the compiler's output)."""


def cache_root():
    """The folder holding built libraries (see the module docstring)."""
    explicit = os.environ.get("KERAS_DCTSPARSE_CACHE")
    if explicit:
        return os.path.abspath(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "keras_dctsparse")


def compiler():
    """The C++ compiler command: `$CXX`, else `c++`, else `g++`, else `clang++`.

    Raises:
        BuildError: If none is found.
    """
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise BuildError(
        "no C++ compiler found (looked for " + ", ".join(candidates) + "); install one "
        "(e.g. `apt install g++`) or set $CXX"
    )


def _tensorflow_flags():
    import tensorflow as tf

    return list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())


def _cpu_signature():
    """What `-march=native` depends on: the CPU model and feature flags."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [
                line for line in info
                if line.startswith(("model name", "flags", "Features", "CPU part"))
            ]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _accepts(command, flag):
    """Whether the compiler accepts `flag` (e.g. -march=native on this target)."""
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "probe.cc")
        with open(source, "w") as handle:
            handle.write("int main() { return 0; }\n")
        result = subprocess.run(
            [command, flag, "-c", source, "-o", os.path.join(folder, "probe.o")],
            capture_output=True,
        )
        return result.returncode == 0


def compile_flags(command=None):
    """The full compile flags (C++17, optimization, target, TensorFlow's), as a list."""
    command = command or compiler()
    tf_compile, _ = _tensorflow_flags()
    target = ["-march=native"] if _accepts(command, "-march=native") else []
    return (
        ["-std=c++17", "-fPIC", "-Wno-deprecated-declarations"]
        + list(_OPTIMIZATION)
        + target
        + tf_compile
    )


def _compiler_version(command):
    result = subprocess.run([command, "--version"], capture_output=True, text=True)
    return result.stdout


def library_path():
    """Where the library for this machine, compiler and TensorFlow is (or will be) built."""
    import tensorflow as tf

    command = compiler()
    digest = hashlib.sha256()
    for name in sorted(os.listdir(_SRC)):
        if not name.endswith((".cc", ".h")):
            continue
        with open(os.path.join(_SRC, name), "rb") as handle:
            digest.update(name.encode() + b"\0" + handle.read())
    for part in (
        command, _compiler_version(command), " ".join(compile_flags(command)),
        " ".join(_tensorflow_flags()[1]), tf.__version__, _cpu_signature(),
    ):
        digest.update(b"\0" + part.encode())
    return os.path.join(cache_root(), "native", digest.hexdigest()[:20], _LIBRARY_NAME)


@contextlib.contextmanager
def _locked(folder):
    import fcntl

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise BuildError(
            f"compiling the native kernels failed ({' '.join(command[:3])} ...):\n"
            + output[-4000:]
        )


def build(force=False):
    """Builds the op library if it is not built yet, and returns its path.

    Args:
        force: Rebuild even if the library exists.

    Returns:
        The path of the shared library.

    Raises:
        BuildError: If no compiler is found or compilation fails.
    """
    path = library_path()
    folder = os.path.dirname(path)
    if os.path.exists(path) and not force:
        return path
    command = compiler()
    flags = compile_flags(command)
    _, link = _tensorflow_flags()
    with _locked(folder):
        if os.path.exists(path) and not force:
            return path  # built by another process while this one waited
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            objects = [os.path.join(scratch, name + ".o") for name in SOURCES]
            jobs = [
                [command, *flags, "-c", os.path.join(_SRC, name), "-o", obj]
                for name, obj in zip(SOURCES, objects)
            ]
            workers = max(1, min(len(jobs), os.cpu_count() or 1))
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                for future in [pool.submit(_run, job) for job in jobs]:
                    future.result()
            partial = os.path.join(scratch, _LIBRARY_NAME)
            _run([command, "-shared", *objects, "-o", partial, *link])
            os.replace(partial, path)
    return path
