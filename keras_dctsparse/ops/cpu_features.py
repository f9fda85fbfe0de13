"""The CPU features that the kernels' cost rules depend on.

oneDNN, which runs TensorFlow's dense matmuls on x86 CPUs, picks its kernels by
instruction set, and which of several equivalent matmul forms is fastest differs
between AVX-512 and AVX2 CPUs (`kernel_choice.product_form`). The native kernels
read their own vector width from the compiled library
(`keras_dctsparse.native.library.vector_bytes`); this module answers for the
stock TensorFlow ops, without building anything.
"""

import functools

__all__ = [
    "parse_cpu_flags",
    "cpu_flags",
    "has_avx512",
]

CPUINFO_PATH = "/proc/cpuinfo"


def parse_cpu_flags(cpuinfo_text):
    """The feature flags listed in the text of `/proc/cpuinfo`.

    Reads the `flags` lines (x86) and the `Features` lines (ARM).

    Args:
        cpuinfo_text: The contents of `/proc/cpuinfo`.

    Returns:
        A frozenset of flag names (empty when the text lists none).

    Example:

    >>> sorted(parse_cpu_flags("model name : X\\nflags : fpu avx2 avx512f\\n"))
    ['avx2', 'avx512f', 'fpu']
    """
    flags = set()
    for line in cpuinfo_text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


@functools.lru_cache(maxsize=None)
def cpu_flags():
    """This machine's CPU feature flags (empty where `/proc/cpuinfo` cannot be read).

    Example:

    >>> isinstance(cpu_flags(), frozenset)
    True
    """
    try:
        with open(CPUINFO_PATH) as info:
            return parse_cpu_flags(info.read())
    except OSError:
        return frozenset()


def has_avx512(flags=None):
    """Whether the CPU has AVX-512 (the `avx512f` flag).

    Args:
        flags: Feature flags to read, or None for this machine's (`cpu_flags`).

    Returns:
        bool; False where the flags are unknown (not Linux, not x86).

    Example:

    >>> has_avx512({"avx2", "avx512f"}), has_avx512({"avx2"})
    (True, False)
    """
    return "avx512f" in (cpu_flags() if flags is None else flags)
