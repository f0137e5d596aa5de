"""Machine settings of the training entry points: the allocator, and bfloat16 only where the CPU
has it."""

import pytest
import torch

import policy.run
from policy.run import check_speed_options, cpu_has_native_bf16, keep_freed_memory


def test_freed_activations_stay_in_the_process_on_glibc():
    import platform

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected


def test_bf16_encoder_refused_on_a_cpu_without_bfloat16(monkeypatch):
    monkeypatch.setattr(policy.run, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="^encoder_bf16=true but this CPU has no bfloat16 instructions .*drop encoder_bf16$"):
        check_speed_options(False, False, True, torch.device("cpu"))
    check_speed_options(False, False, False, torch.device("cpu"))  # float32 is fine anywhere
    monkeypatch.setattr(policy.run, "cpu_has_native_bf16", lambda: True)
    check_speed_options(False, False, True, torch.device("cpu"))


def test_native_bf16_read_from_the_cpu_flags(monkeypatch, tmp_path):
    for flags, expected in (("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("fpu amx_bf16", True)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(policy.run, "CPUINFO", cpuinfo)
        assert cpu_has_native_bf16() is expected
