import os

import pytest

from keras_dctsparse.ops import cpu_features

X86_INFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 avx avx2 fma
power management:

processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 fma
"""

ARM_INFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32
CPU part\t: 0xd0c
"""


def test_parse_cpu_flags_reads_x86_and_arm_lines():
    assert cpu_features.parse_cpu_flags(X86_INFO) == {"fpu", "vme", "sse", "sse2", "avx",
                                                      "avx2", "fma"}
    assert "asimd" in cpu_features.parse_cpu_flags(ARM_INFO)
    # "model name" or "power management" values are not flags.
    assert "AMD" not in cpu_features.parse_cpu_flags(X86_INFO)
    assert cpu_features.parse_cpu_flags("") == frozenset()


def test_has_avx512_reads_the_avx512f_flag():
    assert not cpu_features.has_avx512(cpu_features.parse_cpu_flags(X86_INFO))
    with_avx512 = X86_INFO.replace("fma", "fma avx512f avx512bw")
    assert cpu_features.has_avx512(cpu_features.parse_cpu_flags(with_avx512))
    assert not cpu_features.has_avx512(cpu_features.parse_cpu_flags(ARM_INFO))
    assert not cpu_features.has_avx512(frozenset())


def test_this_machine_flags_match_proc_cpuinfo():
    if not os.path.exists(cpu_features.CPUINFO_PATH):
        pytest.skip("no /proc/cpuinfo here")
    with open(cpu_features.CPUINFO_PATH) as info:
        text = info.read()
    assert cpu_features.cpu_flags() == cpu_features.parse_cpu_flags(text)
    assert cpu_features.has_avx512() == (" avx512f" in text)


def test_unreadable_cpuinfo_means_no_flags(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_features, "CPUINFO_PATH", str(tmp_path / "missing"))
    cpu_features.cpu_flags.cache_clear()
    try:
        assert cpu_features.cpu_flags() == frozenset()
        assert not cpu_features.has_avx512()
    finally:
        cpu_features.cpu_flags.cache_clear()
