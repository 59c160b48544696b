"""The chat model's dtype: bfloat16 on CUDA and on a CPU with native bfloat16 arithmetic
(the flags read from ``/proc/cpuinfo``), float32 on other CPUs, ``NEOCLOUD_DTYPE``
overriding either; an unknown name is refused naming the variable."""

from __future__ import annotations

import pytest
import torch

from neocloud.serving.settings import ServingSettings
from neocloud.serving.textgen.loading import cpu_has_native_bf16, pick_dtype

ZEN4 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
SAPPHIRE = "flags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert cpu_has_native_bf16(ZEN4) and cpu_has_native_bf16(SAPPHIRE)
    assert not cpu_has_native_bf16(SKYLAKE)
    assert not cpu_has_native_bf16("model name\t: avx512_bf16 in the name only\n")
    assert not cpu_has_native_bf16("")


def test_default_and_named_dtypes() -> None:
    assert pick_dtype("cpu", cpuinfo=ZEN4) is torch.bfloat16
    assert pick_dtype("cpu", cpuinfo=SKYLAKE) is torch.float32
    assert pick_dtype("cuda:1", cpuinfo=SKYLAKE) is torch.bfloat16
    assert pick_dtype("cpu", "bfloat16", cpuinfo=SKYLAKE) is torch.bfloat16
    assert pick_dtype("cpu", "float32", cpuinfo=ZEN4) is torch.float32
    assert pick_dtype("cuda", "float32") is torch.float32
    with pytest.raises(ValueError, match="NEOCLOUD_DTYPE"):
        pick_dtype("cpu", "float16")


def test_settings_read_the_dtype() -> None:
    assert ServingSettings.from_env({"NEOCLOUD_DTYPE": "bfloat16"}).dtype == "bfloat16"
    assert ServingSettings.from_env({}).dtype is None
